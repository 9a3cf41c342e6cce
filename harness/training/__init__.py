"""LoRA training pieces: the options (``config``), the image/caption dataset, the LoRA file format, resumable
checkpoints.

The training loop and the ``train-lora`` command live in ``harness.train_lora``.
"""


class TrainingInputError(ValueError):
    """Bad input to the trainer (folder, image, caption, setting); the message names the thing and the fix."""

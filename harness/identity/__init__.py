"""The identity-LoRA workflow around ``train-lora``: ``dataset prepare`` (photos -> cropped, captioned training
images, ``prepare``) and ``strength`` (a LoRA's checkpoints x strengths x prompts, scored, with a recommended
strength, ``strength``)."""

"""The LoRA trainer's options: one frozen dataclass, each option once with its default, help and role.

``LoraTrainingConfig`` is the only list of ``harness.train_lora``'s options. Everything else is derived from
its fields: the ``train-lora`` command-line options (``add_arguments`` / ``from_args``), the training record
stored in the LoRA file (``record``) and the settings part of the resume fingerprint (``fingerprint_settings``).
A field's metadata says

- ``help``: what the option does (the command line's help text);
- ``weights``: whether it changes the trained weights. Those options are recorded in the file and guard
  resuming; the others (device, progress, checkpoints) only say how a run is carried out;
- ``flag``: its command-line flag when not ``--<name>`` (``--no-<name>`` for an option that defaults to on,
  whose help then names what the flag turns off);
- ``fingerprint`` / ``fingerprint_key``: whether and under which key it enters the resume fingerprint.

The data (base model, images, captions, output file) are not options: ``train_lora`` takes them as arguments.
"""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from harness.training import TrainingInputError

DEFAULT_UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
DEFAULT_TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
# diffusers.optimization.get_scheduler's names; "constant" keeps the trainer's own linear warm-up (--warmup-steps)
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
OPTIMIZERS = ("adamw", "adamw8bit")
MIXED_PRECISIONS = ("no", "fp16", "bf16")
SAVE_FORMATS = ("diffusers", "kohya")

# How an option enters the resume fingerprint: "always"; "unless_default" for options added after the first
# checkpoints were written (left out at their default, those checkpoints still resume); "never".
FingerprintRule = Literal["always", "unless_default", "never"]


def option(default: Any, help: str, *, weights: bool, flag: str | None = None,
           metavar: tuple[str, ...] | None = None, fingerprint: FingerprintRule = "always",
           fingerprint_key: str | None = None, recorded_at_default: bool = True) -> Any:
    """A ``LoraTrainingConfig`` field: its default and metadata (see the module docstring).

    ``recorded_at_default=False``: the file's training record names the option only when it is set, so the
    records of files trained before the option existed still equal their recipe's."""
    return field(default=default, metadata={
        "help": help, "weights": weights, "flag": flag, "metavar": metavar,
        "fingerprint": fingerprint if weights else "never", "fingerprint_key": fingerprint_key,
        "recorded_at_default": recorded_at_default,
    })


@dataclass(frozen=True)
class LoraTrainingConfig:
    """How a LoRA is trained: every option of ``harness.train_lora``, validated when the config is made.

    ``alpha`` and the target modules may be left unset (None): ``lora_alpha``, ``unet_targets`` and
    ``text_targets`` give the values training uses. ``dataclasses.replace`` makes a changed copy (validated
    again).
    """

    # ---- options that change the trained weights
    rank: int = option(8, "LoRA rank", weights=True)
    alpha: float | None = option(None, "LoRA alpha (default: the rank)", weights=True)
    # steps is recorded but not in the fingerprint: a finished run can be extended by asking for more
    steps: int = option(500, "training steps (optimizer updates)", weights=True, fingerprint="never")
    learning_rate: float = option(1e-4, "learning rate (AdamW)", weights=True, flag="--lr", fingerprint_key="lr")
    batch_size: int = option(4, "images per step", weights=True)
    resolution: int = option(512, "training resolution: images are resized and centre-cropped to this square",
                             weights=True)
    # in the fingerprint through text_encoder_target_modules, which are empty without a text encoder
    train_text_encoder: bool = option(False, "also train a LoRA on the text encoder", weights=True,
                                      flag="--text-encoder", fingerprint="never")
    unet_target_modules: tuple[str, ...] | None = option(
        None, f"UNet module-name suffixes (default {' '.join(DEFAULT_UNET_TARGETS)}; e.g. add proj_in proj_out "
              "ff.net.0.proj ff.net.2)", weights=True, flag="--unet-targets", fingerprint_key="unet_targets")
    text_encoder_target_modules: tuple[str, ...] | None = option(
        None, f"text-encoder modules (default {' '.join(DEFAULT_TEXT_ENCODER_TARGETS)})", weights=True,
        flag="--text-encoder-targets", fingerprint_key="text_targets")
    seed: int = option(0, "seed of the LoRA initialisation and of every random draw of a step", weights=True)
    # off by default: identity LoRAs care about asymmetry (a parting, a logo)
    flip: bool = option(False, "random horizontal flips (off: keeps asymmetry)", weights=True)
    # Min-SNR weighting and offset noise as in diffusers' training scripts: use the base model's own settings
    snr_gamma: float | None = option(None, "Min-SNR loss weighting (e.g. 5)", weights=True,
                                     fingerprint="unless_default")
    noise_offset: float = option(0.0, "per-channel offset noise (e.g. 0.1)", weights=True,
                                 fingerprint="unless_default")
    # as kohya's and diffusers' scripts allow
    text_encoder_learning_rate: float | None = option(
        None, "learning rate of the text-encoder LoRA (default: --lr)", weights=True, flag="--text-encoder-lr",
        fingerprint="unless_default", fingerprint_key="text_encoder_lr")
    # diffusers' "timestep bias" idea: spend the steps where a concept's layout and colours are decided
    timestep_range: tuple[int, int] | None = option(
        None, "train on timesteps in [LOW, HIGH) only (e.g. 300 1000)", weights=True, metavar=("LOW", "HIGH"),
        fingerprint="unless_default")
    warmup_steps: int = option(0, "linear learning-rate warm-up (steps)", weights=True,
                               fingerprint="unless_default")
    # kohya's masked loss: a LoRA can learn a small region (a face, an accessory) without spending itself on the
    # rest. An image without alpha counts everywhere.
    alpha_mask: bool = option(False, "weight the loss by each image's alpha channel (masked loss; RGBA PNGs)",
                              weights=True, fingerprint="unless_default")
    # Classifier-free guidance amplifies only what the prompt changes (uncond + g * (cond - uncond)), so a LoRA
    # that also draws its concept for the empty prompt (every training image shows it) has that part cancelled
    # at sampling, more the higher the guidance; anchored, the concept must come from the prompt (docs/toy-world.md
    # "Measured quality"). The reported losses stay the denoising loss alone.
    uncond_anchor: float = option(
        0.0, "weight of a term holding the empty prompt's prediction to the base model's, so the concept comes "
             "from the prompt and CFG amplifies it (e.g. 1; 0 = off)", weights=True, fingerprint="unless_default")
    # LoRA+ (Hayou et al. 2024, peft's create_loraplus_optimizer)
    loraplus_lr_ratio: float | None = option(
        None, "LoRA+: learning rate of the B matrices / that of the A matrices (e.g. 16)", weights=True,
        fingerprint="unless_default")
    # what users of kohya_ss and diffusers' DreamBooth-LoRA script expect
    lr_scheduler: str = option(
        "constant", f"learning-rate schedule, through diffusers.optimization.get_scheduler ({', '.join(LR_SCHEDULERS)}"
                    "); --warmup-steps is its warm-up", weights=True, fingerprint="unless_default",
        recorded_at_default=False)
    optimizer: str = option("adamw", "adamw, or adamw8bit (bitsandbytes' 8-bit AdamW; CUDA, needs bitsandbytes)",
                            weights=True, fingerprint="unless_default", recorded_at_default=False)
    mixed_precision: str = option("no", "fp16 or bf16: autocast the forward passes on CUDA (the LoRA weights stay "
                                        "fp32; refused on CPU); no: fp32", weights=True, fingerprint="unless_default",
                                recorded_at_default=False)

    # ---- operational options: how the run is carried out, not what it learns
    gradient_checkpointing: bool = option(False, "gradient checkpointing: recompute activations in the backward "
                                                 "pass (less memory, ~30 %% slower; same weights)", weights=False)
    save_every: int = option(0, "also save the LoRA every this many steps, as <out>-step<N>.safetensors (kept; 0: "
                                "only the final file)", weights=False)
    validation_prompts: tuple[str, ...] | None = option(
        None, "prompts of the validation images made at every save (--save-every) and at the end; the grid is "
              "<out>-validation.png", weights=False, metavar="PROMPT")
    validation_seed: int = option(0, "seed of the validation images (the same noise at every save)", weights=False)
    validation_sampling_steps: int = option(20, "denoising steps of each validation image", weights=False)
    validation_guidance: float = option(7.5, "guidance scale of the validation images", weights=False)
    save_format: str = option("diffusers", "diffusers (peft keys, read by load_lora_weights) or kohya "
                                           "(lora_unet_*/lora_te_* keys with alpha, for A1111 / ComfyUI)",
                              weights=False)
    single_file_config: str | Path | None = option(
        None, "diffusers config folder for a single-file --base checkpoint (needed offline)", weights=False)
    checkpoint_dir: str | Path | None = option(None, "folder of the resumable checkpoint", weights=False)
    checkpoint_every: int = option(0, "write a checkpoint every this many steps (0: never)", weights=False)
    resume: bool = option(True, "resuming from the checkpoint in the checkpoint folder, if there is one (on by "
                                "default)", weights=False)
    device: str = option("auto", "torch device (auto: CUDA when available, else CPU)", weights=False)
    progress: bool = option(True, "the progress bar (on by default)", weights=False)

    def __post_init__(self) -> None:
        # sequences as tuples: a frozen config must not share a caller's list
        for name in ("unet_target_modules", "text_encoder_target_modules", "timestep_range", "validation_prompts"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(getattr(self, name)))
        problems = self._problems()
        if problems:
            raise TrainingInputError("Cannot train the LoRA: " + "; ".join(problems) + ". Fix: correct those "
                                     "settings.")

    def _problems(self) -> list[str]:
        problems = []
        if self.rank < 1:
            problems.append(f"rank must be >= 1 (got {self.rank})")
        if self.steps < 0:
            problems.append(f"steps must be >= 0 (got {self.steps})")
        if self.batch_size < 1:
            problems.append(f"batch size must be >= 1 (got {self.batch_size})")
        if self.resolution < 8 or self.resolution % 8:
            problems.append(f"resolution must be a positive multiple of 8 (got {self.resolution})")
        if self.checkpoint_every < 0 or (self.checkpoint_every and not self.checkpoint_dir):
            problems.append("checkpoint_every needs a checkpoint_dir and must be >= 0")
        if self.snr_gamma is not None and not self.snr_gamma > 0:
            problems.append(f"snr_gamma must be > 0 (got {self.snr_gamma}; 5 is usual, leave it unset to turn "
                            "Min-SNR off)")
        if not self.noise_offset >= 0:
            problems.append(f"noise_offset must be >= 0 (got {self.noise_offset}; 0.1 is usual)")
        if self.loraplus_lr_ratio is not None and not self.loraplus_lr_ratio >= 1:
            problems.append(f"loraplus_lr_ratio must be >= 1 (got {self.loraplus_lr_ratio}; 16 is usual, leave it "
                            "unset for plain LoRA)")
        low_high = self.timestep_range
        if low_high is not None and not (len(low_high) == 2 and 0 <= low_high[0] < low_high[1]):
            problems.append(f"timestep_range must be LOW HIGH with 0 <= LOW < HIGH (got {list(low_high)})")
        if self.warmup_steps < 0:
            problems.append(f"warmup_steps must be >= 0 (got {self.warmup_steps})")
        if not self.uncond_anchor >= 0:
            problems.append(f"uncond_anchor must be >= 0 (got {self.uncond_anchor}; 0 turns it off)")
        if self.text_encoder_learning_rate is not None and not self.text_encoder_learning_rate > 0:
            problems.append(f"the text-encoder learning rate (text_encoder_lr) must be > 0 "
                            f"(got {self.text_encoder_learning_rate})")
        for name, value, allowed in (("lr_scheduler", self.lr_scheduler, LR_SCHEDULERS),
                                     ("optimizer", self.optimizer, OPTIMIZERS),
                                     ("mixed_precision", self.mixed_precision, MIXED_PRECISIONS),
                                     ("save_format", self.save_format, SAVE_FORMATS)):
            if value not in allowed:
                problems.append(f"{name} must be one of {', '.join(allowed)} (got {value!r})")
        if self.save_every < 0:
            problems.append(f"save_every must be >= 0 (got {self.save_every})")
        if self.validation_sampling_steps < 1:
            problems.append(f"validation_sampling_steps must be >= 1 (got {self.validation_sampling_steps})")
        return problems

    # ---- the values training uses
    @property
    def lora_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)

    @property
    def unet_targets(self) -> tuple[str, ...]:
        return self.unet_target_modules or DEFAULT_UNET_TARGETS

    @property
    def text_targets(self) -> tuple[str, ...]:
        """The text encoder's target modules; none when it is not trained."""
        if not self.train_text_encoder:
            return ()
        return self.text_encoder_target_modules or DEFAULT_TEXT_ENCODER_TARGETS

    # ---- what is derived from the fields
    def _weight_settings(self) -> dict[str, Any]:
        """The options that change the weights, by field name, as training uses them (JSON-ready)."""
        settings = {f.name: getattr(self, f.name) for f in fields(self) if f.metadata["weights"]}
        settings.update(alpha=self.lora_alpha, unet_target_modules=list(self.unet_targets),
                        text_encoder_target_modules=list(self.text_targets),
                        timestep_range=list(self.timestep_range) if self.timestep_range else None)
        return settings

    def record(self) -> dict[str, Any]:
        """The options that change the weights, as the LoRA file's metadata records them."""
        record = self._weight_settings()
        for f in fields(self):
            if not f.metadata["recorded_at_default"] and getattr(self, f.name) == f.default:
                del record[f.name]
        if not self.train_text_encoder:  # the rate of a text encoder that is not trained is not used
            record["text_encoder_learning_rate"] = None
        return record

    def fingerprint_settings(self) -> dict[str, Any]:
        """The options part of the resume fingerprint: what must match for a checkpoint to continue this run.

        Its keys and values are those checkpoints have always carried (short keys, later options only when
        set), so older checkpoints still resume.
        """
        settings = self._weight_settings()
        fingerprint = {}
        for f in fields(self):
            rule = f.metadata["fingerprint"]
            if rule == "always" or (rule == "unless_default" and getattr(self, f.name) != f.default):
                fingerprint[f.metadata["fingerprint_key"] or f.name] = settings[f.name]
        return fingerprint

    # ---- command line
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add one command-line option per field: its flag, default, type (from the annotation) and help."""
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            flag, settings = _argument(f, hints[f.name])
            parser.add_argument(flag, **settings)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> LoraTrainingConfig:
        """The config of parsed command-line options (``add_arguments``)."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


def weight_options() -> list[str]:
    """Names of the options that change the trained weights."""
    return [f.name for f in fields(LoraTrainingConfig) if f.metadata["weights"]]


def _argument(f: Field, hint: Any) -> tuple[str, dict[str, Any]]:
    """``parser.add_argument``'s flag and settings for the field ``f`` with the type ``hint``."""
    if f.default is MISSING:
        raise TypeError(f"LoraTrainingConfig.{f.name} has no default: every option needs one")
    settings = {"dest": f.name, "default": f.default, "help": f.metadata["help"]}
    if hint is bool:  # a switch that turns the default around
        flag = f.metadata["flag"] or ("--no-" if f.default else "--") + f.name.replace("_", "-")
        return flag, {**settings, "action": "store_false" if f.default else "store_true"}
    flag = f.metadata["flag"] or "--" + f.name.replace("_", "-")
    settings["metavar"] = f.metadata["metavar"] or flag.lstrip("-").replace("-", "_").upper()
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = typing.get_args(hint)[0]  # X | None, str | Path | None: the command line gives the first type
    if typing.get_origin(hint) is tuple:
        items = typing.get_args(hint)
        settings.update(type=items[0], nargs="+" if items[-1] is Ellipsis else len(items))
    else:
        settings["type"] = hint
    return flag, settings

"""A run's settings as one typed, validated object: what ``conf/config.yaml`` holds, minus the choice of
testbed, method and metrics (those become a ``Testbed``, a method instance and ``{name: settings}``).

The Hydra config stops at the command line (``harness.config``): it is turned once into these objects, and
the runner, sampler and scorers receive them. A wrong value is a ``ConfigError`` naming the key and the fix,
raised before any work is done.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harness.devices import DTYPE_NAMES

SEED_MODES = ("per_set", "direct")
BATCHING_MODES = ("auto", "batched", "sequential")


class ConfigError(ValueError):
    """A setting is wrong; the message names the key, the value and the fix."""


@dataclass(frozen=True)
class Shard:
    """``i/n``: this job takes every n-th set starting at i (several machines split one sweep)."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str | Shard) -> Shard:
        if isinstance(text, Shard):
            return text
        try:
            index, count = (int(part) for part in str(text).split("/"))
        except ValueError:
            raise ConfigError(f"shard must look like i/n (e.g. shard=0/4), got {text!r}") from None
        if not 0 <= index < count:
            raise ConfigError(f"shard={text}: need 0 <= i < n (the shards of n machines are 0/n .. {count - 1}/n)")
        return cls(index, count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def _positive(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"{name}={value!r}: must be a whole number >= 1 (or null for no limit)")


@dataclass(frozen=True)
class RunSettings:
    """Everything about one ``run`` that is not the testbed, the method or the metrics."""

    output_dir: Path
    seeds: tuple[int, ...] | None = None  # None: the testbed's seeds
    seed_mode: str = "per_set"
    n: tuple[int, ...] | None = None
    sets: tuple[str, ...] | None = None
    limit: int | None = None
    limit_per_n: int | None = None
    shard: Shard = field(default_factory=Shard)
    device: str = "auto"
    dtype: str | None = None  # None: the testbed's model.dtype
    batching: str = "auto"
    batch_size: int = 1  # images (any sets, one method) sharing one denoising loop; not part of an image's key
    adapter_cache: int = 32
    score: bool = True
    tables: bool = True
    progress: bool = True
    overwrite: bool = False  # regenerate a label's images although they were made with other settings
    lora_min_applied: float = 0.9  # a LoRA part of which fewer of the file's layers match the model is an error

    def __post_init__(self) -> None:
        if self.seed_mode not in SEED_MODES:
            raise ConfigError(f"seed_mode={self.seed_mode!r}: use one of {', '.join(SEED_MODES)}")
        if self.batching not in BATCHING_MODES:
            raise ConfigError(f"batching={self.batching!r}: use one of {', '.join(BATCHING_MODES)}")
        if self.seeds is not None and not self.seeds:
            raise ConfigError("seeds=[] selects no image: give at least one seed, e.g. seeds=[0,1], or seeds=null "
                              "for the testbed's own")
        if self.dtype is not None and self.dtype not in DTYPE_NAMES:
            raise ConfigError(f"dtype={self.dtype!r}: use one of {', '.join(DTYPE_NAMES)} (or null for the testbed's)")
        _positive("limit", self.limit)
        _positive("limit_per_n", self.limit_per_n)
        _positive("adapter_cache", self.adapter_cache)
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size!r}: images per denoising loop, a whole number >= 1 "
                              "(1 = one image at a time; 8-16 on the toy testbed)")
        if not 0 <= self.lora_min_applied <= 1:
            raise ConfigError(f"lora_min_applied={self.lora_min_applied}: a share, between 0 and 1")
        check_device(self.device)


def check_device(device: str) -> None:
    """Refuse a device this machine does not have, before any image is attempted."""
    import torch

    kind = str(device).split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device}: CUDA is not available here (torch {torch.__version__}, "
                          f"{'a CPU build' if torch.version.cuda is None else 'no visible GPU'}). Fix: device=auto "
                          "or device=cpu, or install a CUDA build of torch on a machine with a GPU.")
    if kind not in ("auto", "cpu", "cuda", "mps", "xpu"):
        raise ConfigError(f"device={device}: use auto, cpu, cuda, cuda:<index>, mps or xpu")

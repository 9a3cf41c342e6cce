"""Loading a base model: a local diffusers folder, a single-file checkpoint, or a hub id.

Every loader takes a local path first; hub ids are passed to diffusers unchanged (they work where a hub is
reachable). The same code loads SD1.5 and the toy testbed's tiny pipeline. A local folder's models are loaded
in the requested dtype one tensor at a time (``load_model``), so float16/bfloat16 need less memory than float32.
"""

from __future__ import annotations

import importlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from harness.devices import resolve_device, resolve_dtype
from harness.io import atomic_write_json, sha256_file, stable_hash

SCHEDULERS = {
    # name -> (diffusers class name, extra config); built from the model's own scheduler config
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "default": (None, {}),
}
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
# the models of a Stable Diffusion folder, loaded by load_model (the other parts: tokenizer, scheduler)
FOLDER_MODELS = ("unet", "vae", "text_encoder")
# the weight files diffusers and transformers load from a model folder when no variant is asked for
WEIGHT_FILE_STEMS = ("diffusion_pytorch_model", "model")
SAFETENSORS_FLOAT_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


class ModelLoadError(RuntimeError):
    """A base model or VAE could not be loaded; the message names the path and the fix."""


def _looks_like_hub_id(text: str) -> bool:
    return text.count("/") == 1 and not text.startswith((".", "/", "~")) and not Path(text).exists()


def quiet_libraries() -> None:
    """diffusers/transformers print load reports and hub hints for every adapter; keep errors only."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    # Two warnings that tell a user nothing: diffusers renaming `torch_dtype` (kept here so that older
    # diffusers releases still work), and peft noticing a second adapter, which is how LoRAs are composed.
    warnings.filterwarnings("ignore", message=r"`torch_dtype` is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"Already found a `peft_config` attribute", category=UserWarning)
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()


def load_pipeline(
    base: str | Path,
    vae: str | Path | None = None,
    scheduler: str = "dpmsolver++",
    dtype: str | torch.dtype = "float32",
    device: str = "auto",
    single_file_config: str | Path | None = None,
) -> Any:
    """Load a Stable Diffusion pipeline (no safety checker) with the chosen scheduler, on ``device``."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline

    quiet_libraries()
    torch_dtype = resolve_dtype(dtype)
    base_text = str(base)
    path = Path(base_text).expanduser()
    try:
        if path.is_dir():
            index = json.loads((path / "model_index.json").read_text())
            models = {name: load_model(_model_class(index[name]), path / name, torch_dtype)
                      for name in FOLDER_MODELS if (path / name).is_dir()}
            pipe = StableDiffusionPipeline.from_pretrained(
                path, torch_dtype=torch_dtype, safety_checker=None, requires_safety_checker=False, **models
            )
        elif path.is_file() and path.suffix in SINGLE_FILE_SUFFIXES:
            kwargs = {"config": str(single_file_config)} if single_file_config else {}
            pipe = StableDiffusionPipeline.from_single_file(
                path, torch_dtype=torch_dtype, safety_checker=None, requires_safety_checker=False, **kwargs
            )
        elif _looks_like_hub_id(base_text):
            pipe = StableDiffusionPipeline.from_pretrained(
                base_text, torch_dtype=torch_dtype, safety_checker=None, requires_safety_checker=False
            )
        else:
            raise FileNotFoundError(f"no such folder or file: {path}")
    except Exception as error:  # one paragraph naming the thing and the fix, the cause chained below
        raise ModelLoadError(
            f"Could not load the base model {base_text!r}: {type(error).__name__}: {error}. "
            "Fix: point `model.base` at a local diffusers folder (with model_index.json), a single-file "
            "SD1.5 checkpoint (.safetensors/.ckpt; offline, also set `model.single_file_config` to a local "
            "diffusers config folder), or a hub id on a machine that can reach the hub."
        ) from error
    if vae:
        pipe.vae = load_vae(vae, torch_dtype)
    pipe.scheduler = build_scheduler(pipe.scheduler, scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(resolve_device(device))


def load_vae(vae: str | Path, torch_dtype: torch.dtype) -> Any:
    from diffusers import AutoencoderKL

    path = Path(str(vae)).expanduser()
    try:
        if path.is_dir():
            return load_model(AutoencoderKL, path, torch_dtype)
        if path.is_file():
            return AutoencoderKL.from_single_file(path, torch_dtype=torch_dtype)
        if _looks_like_hub_id(str(vae)):
            return AutoencoderKL.from_pretrained(str(vae), torch_dtype=torch_dtype)
        raise FileNotFoundError(f"no such folder or file: {path}")
    except Exception as error:
        raise ModelLoadError(
            f"Could not load the VAE {str(vae)!r}: {type(error).__name__}: {error}. Fix: point `model.vae` "
            "at a local AutoencoderKL folder or file, or set it to null to keep the base model's VAE."
        ) from error


def load_model(model_class: Any, folder: Path, torch_dtype: torch.dtype) -> Any:
    """``model_class.from_pretrained(folder)`` (a diffusers or transformers model) with its floating-point
    weights in ``torch_dtype``, holding at most one tensor of the stored precision at a time.

    The libraries cast weights stored in another precision (SD1.5 folders are float32) from one memory map of
    the whole file, and every page read through a map stays resident until the map is closed: a bfloat16 SD1.5
    load held the float32 UNet file (3.3 GiB) and its bfloat16 copy at once, more than a float32 load. Here the
    library loads the model in the stored precision, which maps the file and reads nothing, and then each
    tensor is cast through a map of its own, closed before the next, replacing the mapped one.
    """
    files = _weight_files(folder)
    stored = _stored_float_dtype(files)
    if stored is None or stored == torch_dtype or getattr(model_class, "_keep_in_fp32_modules", None):
        return model_class.from_pretrained(folder, torch_dtype=torch_dtype)  # no cast, or one the library must do
    from safetensors import safe_open

    model = model_class.from_pretrained(folder, torch_dtype=stored)
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    with torch.no_grad():
        for file in files:
            with safe_open(file, framework="pt") as reader:
                names = [name for name in reader.keys() if name in tensors and tensors[name].is_floating_point()]
            for name in names:  # a map per tensor, closed (and its pages let go) before the next
                with safe_open(file, framework="pt") as reader:
                    tensors[name].data = reader.get_tensor(name).to(torch_dtype)
    # tensors the files name otherwise (old key names the library renamed on load) are cast from its map
    return model.to(torch_dtype)


def _model_class(entry: list[str]) -> Any:
    """The class a ``model_index.json`` entry ``[library, class name]`` names."""
    library, class_name = entry
    return getattr(importlib.import_module(library), class_name)


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors files the library loads from a model folder (the shards of an index), or [] if none."""
    for stem in WEIGHT_FILE_STEMS:
        index = folder / f"{stem}.safetensors.index.json"
        if index.is_file():
            return [folder / shard for shard in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
        if (folder / f"{stem}.safetensors").is_file():
            return [folder / f"{stem}.safetensors"]
    return []


def _stored_float_dtype(files: list[Path]) -> torch.dtype | None:
    """The one floating-point dtype the files store (read from their headers), or None (none, mixed, other)."""
    from safetensors import safe_open

    stored = set()
    for file in files:
        with safe_open(file, framework="pt") as reader:
            stored |= {reader.get_slice(name).get_dtype() for name in reader.keys()}
    floats = {name for name in stored if name != "BOOL" and not name.startswith(("I", "U"))}
    return SAFETENSORS_FLOAT_DTYPES.get(floats.pop()) if len(floats) == 1 else None


def build_scheduler(current: Any, name: str) -> Any:
    """A scheduler of the named kind built from the model's own scheduler config."""
    import diffusers

    if name not in SCHEDULERS:
        raise ValueError(f"Unknown scheduler {name!r}; use one of {sorted(SCHEDULERS)}")
    class_name, extra = SCHEDULERS[name]
    if class_name is None:
        return current
    return getattr(diffusers, class_name).from_config(current.config, **extra)


# ---- identities for content-addressed keys -------------------------------------------------------------

_HASH_CACHE = Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "harness")) / "file_hashes.json"


def cached_sha256(path: str | Path) -> str:
    """sha256 of a file, memoised on (path, size, mtime) so multi-GB checkpoints are hashed once."""
    path = Path(path).resolve()
    stat = path.stat()
    memo_key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    try:
        memo = json.loads(_HASH_CACHE.read_text())
    except (OSError, ValueError):
        memo = {}
    if memo_key not in memo:
        memo[memo_key] = sha256_file(path)
        try:
            atomic_write_json(_HASH_CACHE, memo)
        except OSError:
            pass  # a read-only home only costs re-hashing next time
    return memo[memo_key]


def model_identity(base: str | Path, vae: str | Path | None = None,
                   single_file_config: str | Path | None = None) -> dict[str, str]:
    """What identifies the weights: file hashes for local models, the id for hub models; a single-file
    checkpoint's config folder is part of it (the same file under another config is another model)."""

    def identify(source: str | Path) -> str:
        path = Path(str(source)).expanduser()
        if path.is_file():
            return cached_sha256(path)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
            return stable_hash([(str(p.relative_to(path)), cached_sha256(p)) for p in files], 64)
        return f"hub:{source}"

    identity = {"base": str(base), "base_hash": identify(base)}
    if vae:
        identity.update(vae=str(vae), vae_hash=identify(vae))
    if single_file_config:
        identity.update(single_file_config=str(single_file_config),
                        single_file_config_hash=identify(single_file_config))
    return identity

"""Loading LoRA files as named adapters, with errors that name the LoRA, the path and the fix.

Formats: diffusers (``unet.<module>.lora_A.weight``), kohya / Civitai (``lora_unet_<module>.lora_down.weight``
+ ``alpha``) - both read by diffusers' own ``load_lora_weights`` - and PEFT ``save_pretrained`` files
(``base_model.model.<module>.lora_A.weight``), which diffusers silently ignores, so they are converted here.

Also here, because they act on loaded adapters: adapters merged from loaded ones with peft's
``add_weighted_adapter`` (``MergedAdapter``), each layer's weight delta (``adapter_deltas``) and per-layer
adapter choice (``route_layers``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from harness.io import stable_hash
from harness.pipelines import cached_sha256

log = logging.getLogger("harness.lora")

PEFT_PREFIX = "base_model.model."
# LyCORIS files (LoHa, LoKr, ...) carry these keys; diffusers loads only plain LoRA.
LYCORIS_MARKERS = {"hada_w1_a": "LoHa", "lokr_w1": "LoKr", "lokr_w1_a": "LoKr", ".oft_blocks": "OFT",
                   "diff_b": "a full-weight difference (LyCORIS 'full')"}
DOWN_WEIGHT_SUFFIXES = ("lora_A.weight", "lora_down.weight")
ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # diffusers' rank/alpha entry in a safetensors header
UNET_MODULE_PREFIXES = ("down_blocks.", "mid_block.", "up_blocks.", "conv_in", "conv_out", "conv_norm_out",
                        "time_embedding.", "add_embedding.", "class_embedding.")


class LoraError(RuntimeError):
    """A LoRA could not be used; the message is one paragraph naming the LoRA id, the path and the fix."""


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA of a testbed: what it is called, where its file is, what activates it."""

    id: str
    name: str
    category: str
    trigger: tuple[str, ...]
    path: Path
    references: Path | None = None

    def describe(self, scale: float, sha256: str | None = None) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "category": self.category, "trigger": list(self.trigger),
                "path": str(self.path), "sha256": sha256, "scale": scale,
                "references": str(self.references) if self.references else None}


def read_lora_state_dict(spec: LoraSpec) -> dict[str, torch.Tensor]:
    """The file's tensors, in a format diffusers reads (PEFT keys converted)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not spec.path.exists():
        raise LoraError(
            f"LoRA {spec.id!r} ({spec.name}): file not found at {spec.path}. Fix: put the LoRA file there "
            f"(ComposLoRA's files come as one archive from the benchmark authors), or point the testbed's "
            f"`lora_dir` at the folder that holds `{spec.path.name}`."
        )
    try:
        if spec.path.suffix == ".safetensors":
            state = load_file(str(spec.path))
        else:
            state = torch.load(spec.path, map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, RuntimeError, ValueError, EOFError) as error:
        raise LoraError(
            f"LoRA {spec.id!r} ({spec.name}): cannot read {spec.path} ({type(error).__name__}: {error}). "
            "The file is corrupt or not a LoRA checkpoint. Fix: download it again and check its sha256."
        ) from error
    for marker, kind in LYCORIS_MARKERS.items():
        if any(marker in key for key in state):
            raise LoraError(
                f"LoRA {spec.id!r} ({spec.name}) at {spec.path} is a {kind} file (LyCORIS), not a plain LoRA: "
                "not supported. Fix: use a plain LoRA of the concept, or convert it to a LoRA (e.g. extract one "
                "with kohya's `extract_lora_from_models.py` from a model with the LyCORIS weights merged).")
    if any(key.startswith(PEFT_PREFIX) for key in state):
        state = convert_peft_state_dict(state, spec.path)
    return state


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The string metadata in a safetensors file's header (empty for a file without any)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def lora_identity(spec: LoraSpec) -> str:
    """What defines a LoRA's effect: its weights file, plus a PEFT ``adapter_config.json`` beside it (its
    ``lora_alpha`` scales the weights), so editing either regenerates the images made with it."""
    config_file = spec.path.with_name("adapter_config.json")
    if config_file.exists():
        return f"{cached_sha256(spec.path)}+{cached_sha256(config_file)}"
    return cached_sha256(spec.path)


def layers_in_file(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """How many layers the file has a LoRA for, per part (one down/A matrix per layer)."""
    counts = {"unet": 0, "text_encoder": 0}
    for key in state:
        if key.endswith(DOWN_WEIGHT_SUFFIXES):
            part = "unet" if key.startswith(("unet.", "lora_unet_")) else "text_encoder"
            counts[part] += 1
    return counts


def layers_applied(pipe: Any, adapter: str) -> dict[str, int]:
    """How many layers of each part of the pipeline carry ``adapter``."""
    counts = {}
    for part in ("unet", "text_encoder"):
        model = getattr(pipe, part)
        counts[part] = sum(1 for module in model.modules()
                           if hasattr(module, "lora_A") and adapter in getattr(module, "lora_A", {}))
    return counts


def convert_peft_state_dict(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """PEFT ``save_pretrained`` keys -> diffusers keys; lora_alpha/r from adapter_config.json folded into B."""
    config_file = path.with_name("adapter_config.json")
    scaling = 1.0
    if config_file.exists():
        config = json.loads(config_file.read_text())
        scaling = float(config.get("lora_alpha", config.get("r", 1))) / float(config.get("r", 1))
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        module_key = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        part = "unet" if module_key.startswith(UNET_MODULE_PREFIXES) else "text_encoder"
        if ".lora_B." in module_key:
            tensor = tensor * scaling
        converted[f"{part}.{module_key}"] = tensor
    return converted


def adapters_loaded(pipe: Any) -> set[str]:
    return {name for names in pipe.get_list_adapters().values() for name in names}


@contextlib.contextmanager
def diffusers_silenced() -> Iterator[None]:
    """diffusers' own log lines off for the duration (errors included); its exceptions still propagate."""
    from diffusers.utils import logging as diffusers_logging

    previous = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity(diffusers_logging.CRITICAL)
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(previous)


def load_adapter(pipe: Any, spec: LoraSpec, min_applied: float = 0.9) -> dict[str, Any]:
    """Load ``spec`` as adapter ``spec.id`` into the pipeline's UNet (and text encoder); returns its load
    report: layers in the file and layers applied, per part. A part of which less than ``min_applied`` of the
    file's layers found a layer of the base model is an error (a LoRA for another model would half-work)."""
    state = read_lora_state_dict(spec)
    # A diffusers-format file may keep its rank and alpha in its header, which diffusers reads only from the file
    # itself (a state dict loses it, and alpha != rank would load at the wrong scale): hand such a file over by
    # path. PEFT files are converted here (alpha folded in) and kohya files carry alpha as tensors.
    from_file = spec.path.suffix == ".safetensors" and ADAPTER_METADATA_KEY in safetensors_metadata(spec.path)
    try:
        with diffusers_silenced():  # diffusers logs every mismatched tensor before raising: we say it in one line
            if from_file:
                pipe.load_lora_weights(str(spec.path.parent), weight_name=spec.path.name, adapter_name=spec.id)
            else:
                pipe.load_lora_weights(state, adapter_name=spec.id)
    except Exception as error:
        if spec.id in adapters_loaded(pipe):
            pipe.delete_adapters(spec.id)
        text = str(error)
        if "size mismatch" in text or "shape" in text.lower():
            mismatches = [line.strip() for line in text.splitlines() if "size mismatch" in line]
            example = mismatches[0].removeprefix("size mismatch for ") if mismatches else text.splitlines()[0]
            raise LoraError(
                f"LoRA {spec.id!r} ({spec.name}) at {spec.path} does not fit the base model: {len(mismatches) or 'its'}"
                f" layer shapes differ (e.g. {example[:160]}). It was made for another base model (e.g. SDXL or SD2 "
                "instead of SD1.5). Fix: use a LoRA trained for this base model, or change `model.base`."
            ) from error
        raise LoraError(
            f"LoRA {spec.id!r} ({spec.name}) at {spec.path} could not be loaded: {type(error).__name__}: "
            f"{text.splitlines()[0][:300] if text else ''}. Fix: check that it is an SD1.5 LoRA in diffusers, "
            "kohya or PEFT format."
        ) from error
    if spec.id not in adapters_loaded(pipe):
        raise LoraError(
            f"LoRA {spec.id!r} ({spec.name}) at {spec.path}: none of its {len(state)} tensors matched a layer of "
            "the base model, so it would do nothing. Fix: check that it is an SD1.5 LoRA (keys such as "
            "'unet.<module>.lora_A.weight' or 'lora_unet_<module>.lora_down.weight')."
        )
    in_file, applied = layers_in_file(state), layers_applied(pipe, spec.id)
    report = {"sha256": cached_sha256(spec.path), "layers_in_file": in_file, "layers_applied": applied}
    short = {part: in_file[part] - applied[part] for part in in_file if applied[part] < in_file[part]}
    if short:
        described = "; ".join(f"{part}: {applied[part]} of {in_file[part]} layers applied" for part in short)
        if any(applied[part] < min_applied * in_file[part] for part in short):
            pipe.delete_adapters(spec.id)
            raise LoraError(
                f"LoRA {spec.id!r} ({spec.name}) at {spec.path} matches the base model only in part ({described}; "
                f"the rest name layers it does not have). It was probably made for another base model. Fix: use "
                f"a LoRA for this base model, or lower lora_min_applied (now {min_applied}) to accept it.")
        log.warning("LoRA %s: %s; the rest of its layers match no layer of the base model and are ignored "
                    "(recorded in each image's metadata under 'lora_load').", spec.id, described)
    return report


class AdapterCache:
    """Keeps up to ``capacity`` adapters loaded across sets, so a sweep does not reload files per set."""

    def __init__(self, pipe: Any, capacity: int = 32, min_applied: float = 0.9) -> None:
        self.pipe = pipe
        self.capacity = capacity
        self.min_applied = min_applied
        self.reports: dict[str, dict[str, Any]] = {}  # adapter id -> load report, in load order (oldest first)

    def ensure(self, specs: list[LoraSpec], keep: set[str] = frozenset()) -> dict[str, dict[str, Any]]:
        """Make sure every spec is loaded, never evicting ``keep`` (the other sets of a batch); returns id -> load
        report for them. Raises LoraError on bad input."""
        wanted = {spec.id for spec in specs} | set(keep)
        for spec in specs:
            if spec.id in self.reports:
                self.reports[spec.id] = self.reports.pop(spec.id)  # mark as recently used
                continue
            while len(self.reports) >= self.capacity:
                oldest = next(adapter for adapter in self.reports if adapter not in wanted)
                self.pipe.delete_adapters(oldest)
                del self.reports[oldest]
            self.reports[spec.id] = load_adapter(self.pipe, spec, self.min_applied)
        return {spec.id: self.reports[spec.id] for spec in specs}


# -- adapters built from loaded ones (peft merges) ---------------------------------------------------------

COMBINATION_TYPES = ("cat", "svd", "ties_svd", "dare_linear_svd", "dare_ties_svd", "magnitude_prune_svd")


@dataclass(frozen=True)
class MergedAdapter:
    """One adapter made from loaded adapters by peft's ``add_weighted_adapter``, in the UNet and the text encoder.

    ``cat`` stacks the A's and B's (exactly sum_k w_k dW_k at rank sum r_k); the ``*_svd`` types combine the full
    dW's (TIES / DARE pruning with ``density`` first) and truncate to ``svd_rank`` by SVD (None: the largest rank
    of the sources). ``seed`` fixes DARE's random drop. Types that mix A's and B's separately (``linear``,
    ``ties``, ``dare_*`` without ``_svd``) are left out: they add cross terms B_i A_j."""

    sources: tuple[str, ...]
    weights: tuple[float, ...]
    combination_type: str
    svd_rank: int | None = None
    density: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.combination_type not in COMBINATION_TYPES:
            raise ValueError(f"combination_type must be one of {COMBINATION_TYPES}, got {self.combination_type!r}")
        if len(self.sources) != len(self.weights):
            raise ValueError("a merged adapter needs one weight per source adapter")

    @property
    def name(self) -> str:
        """The adapter name in the pipeline: the recipe's hash, so the same recipe is built once."""
        return f"merged_{self.combination_type}_{stable_hash(self.describe(), 10)}"

    def describe(self) -> dict[str, Any]:
        return {"sources": list(self.sources), "weights": list(self.weights), "combination_type": self.combination_type,
                "svd_rank": self.svd_rank, "density": self.density, "seed": self.seed}


def _weighted_adapter_builder(model: torch.nn.Module) -> Any:
    """peft's ``LoraModel.add_weighted_adapter`` bound to a model whose adapters diffusers injected.

    diffusers does not wrap its models in a peft ``LoraModel`` (which owns ``add_weighted_adapter``), so this
    view supplies the two things the method reads from one: the model and its ``peft_config``; injecting the new
    adapter goes through peft's public ``inject_adapter_in_model``, as diffusers' own loading does."""
    from peft import inject_adapter_in_model
    from peft.tuners.lora import LoraModel

    class AdaptedModel(LoraModel):
        def __init__(self, wrapped: torch.nn.Module) -> None:  # the adapters are in place: no injection here
            torch.nn.Module.__init__(self)
            self.model = wrapped
            self.peft_config = wrapped.peft_config

        def inject_adapter(self, model: torch.nn.Module, adapter_name: str, **_: Any) -> None:
            inject_adapter_in_model(self.peft_config[adapter_name], model, adapter_name)

    return AdaptedModel(model)


def build_merged_adapter(pipe: Any, recipe: MergedAdapter) -> None:
    """Add ``recipe.name`` to the UNet and (where the sources have one) the text encoder."""
    from diffusers.loaders.lora_base import set_adapters_for_text_encoder

    parts = [pipe.unet]
    if pipe.text_encoder is not None and set(recipe.sources) & set(getattr(pipe.text_encoder, "peft_config", {})):
        parts.append(pipe.text_encoder)
    # add_weighted_adapter applies each source's current scaling: reset it to the file's alpha / r first
    pipe.unet.set_adapters(list(recipe.sources), [1.0] * len(recipe.sources))
    devices = [pipe.unet.device] if pipe.unet.device.type == "cuda" else []
    for part in parts:
        sources = [source for source in recipe.sources if source in part.peft_config]
        weights = [weight for source, weight in zip(recipe.sources, recipe.weights) if source in part.peft_config]
        if part is pipe.text_encoder:
            set_adapters_for_text_encoder(sources, part, [1.0] * len(sources))
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(recipe.seed)  # DARE's random drop
            _weighted_adapter_builder(part).add_weighted_adapter(
                sources, weights, recipe.name, combination_type=recipe.combination_type,
                svd_rank=recipe.svd_rank, density=recipe.density)


class MergedAdapters:
    """Builds the merged adapters asked for, keeping at most ``capacity`` beyond those a batch uses (least recently
    used go first): one set's seeds reuse what was built."""

    def __init__(self, pipe: Any, capacity: int = 2) -> None:
        self.pipe, self.capacity = pipe, capacity
        self.built: list[str] = []  # oldest first

    def ensure(self, recipes: tuple[MergedAdapter, ...] | list[MergedAdapter], keep: set[str] = frozenset()) -> bool:
        """Build what is missing, never evicting ``keep`` or ``recipes``; returns True when something was built
        (adapter state then changed)."""
        changed = False
        in_use = set(keep) | {recipe.name for recipe in recipes}
        for recipe in recipes:
            if recipe.name in self.built:
                self.built.append(self.built.pop(self.built.index(recipe.name)))  # recently used
                continue
            evictable = [name for name in self.built if name not in in_use]
            while evictable and len(self.built) >= self.capacity:
                name = evictable.pop(0)
                self.pipe.delete_adapters(name)
                self.built.remove(name)
            build_merged_adapter(self.pipe, recipe)
            self.built.append(recipe.name)
            changed = True
        return changed


# -- the weights themselves (K-LoRA) ------------------------------------------------------------------------


def adapter_deltas(model: torch.nn.Module, adapter: str) -> dict[str, torch.Tensor]:
    """{layer name: dW = B A * alpha / r} of one loaded adapter, whatever scale it is set to; conv layers as
    [out, in * kh * kw]."""
    from peft.tuners.lora import LoraLayer

    deltas = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and adapter in module.lora_A:
            down, up = module.lora_A[adapter].weight, module.lora_B[adapter].weight
            rank = module.r[adapter]
            scaling = module.lora_alpha[adapter] / (math.sqrt(rank) if module.use_rslora.get(adapter) else rank)
            deltas[name] = (up.flatten(1).float() @ down.flatten(1).float()) * scaling
    return deltas


def route_layers(model: torch.nn.Module, routing: dict[str, str], previous: dict[str, str] | None = None) -> None:
    """Leave each LoRA layer of ``model`` with only the adapter ``routing`` names for it (none if unlisted).
    Scales stay as they are set; ``set_adapters`` on the model undoes this. With ``previous`` (the routing in
    force), only the layers whose choice differs are touched."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer):
            chosen = routing.get(name)
            if previous is not None and previous.get(name) == chosen:
                continue
            module.set_adapter([chosen] if chosen is not None else [])

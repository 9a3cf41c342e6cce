"""The one denoising loop every composition method runs through, read top to bottom.

    per image: the method's plan, its prompts encoded (text-encoder LoRAs as the plan says), initial noise
    from the image's own generator
    -> for each step: every image's passes through the UNet, each image's method combining its own
       predictions, one scheduler step for the whole batch
    -> VAE decode

A batch is any images of one method (any sets and seeds, same sampling settings); one image is a batch of
one. Every image keeps its own generator, so the batch an image was made in does not change it (beyond float
rounding). Which adapters each UNet forward runs is explicit, decided per *entry* (one pass of one image,
two rows: uncond and cond):

- every entry of a forward asks for the same adapters: they are set on the UNet and the forward is plain
  (Merge, Switch, K-LoRA's routing, at batch 1);
- otherwise every row gets its own adapters in every LoRA layer (``per_row_adapters``): a pass with one adapter
  (or none: LoRAtorio's base pass) names it to PEFT as a per-sample ``adapter_names`` entry, a routed pass
  (K-LoRA) names each layer's own, and a pass with several (Merge in a batch of several sets) has them added
  after the layer as one stacked LoRA (the A's stacked, the B's side by side times each scaling: exactly
  sum_k scale_k dW_k x, what PEFT computes for active adapters);
- ``batching="sequential"`` runs every entry as its own forward (and ``auto`` falls back to that, once and
  said in the plan's notes, if a per-sample forward fails).

Full passes run before shallow ones (CMLoRA's cache: ``harness.deepcache``); each image counts both in its
``ImageOutcome.evaluations``. A failure in one image (its plan, its NaN latents) fails that image only; a batch
that fails as a whole is made again in halves, and after running out of device memory the sampler keeps its
batches below that size (``batch_limit``).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from PIL import Image

from harness.deepcache import recording_deep_feature, skipping_deep_blocks
from harness.lora import MergedAdapters, adapter_deltas, route_layers
from harness.methods.base import REUSE, STORE, CompositionMethod, ImageContext, ImagePlan, LayerRouting, Pass, StepPlan

BATCHING = ("auto", "batched", "sequential")
log = logging.getLogger("harness.sampler")
NO_ADAPTER = "__base__"  # PEFT's per-sample name for "no LoRA" (LoRAtorio's base pass in a batch)
SEVERAL = "__several__"  # a row whose pass runs several adapters (Merge in a batch): summed by ``per_row_adapters``


@dataclass
class SamplingSettings:
    steps: int
    guidance_scale: float
    height: int
    width: int


class AdapterSwitch:
    """Applies adapter states to the UNet and text encoder, skipping calls that would change nothing."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self._unet_state: tuple | None = None
        self._routed: dict[str, str] | None = None  # the routing in force, if the last state had one

    def set_unet(self, adapters: dict[str, float], routing: LayerRouting | None = None) -> None:
        state = tuple(adapters.items()) if routing is None else (tuple(adapters.items()), routing.key)
        if state == self._unet_state:
            return
        unet = self.pipe.unet
        same_scales = self._routed is not None and self._unet_state[0] == tuple(adapters.items())
        if not getattr(unet, "peft_config", None):
            if adapters:
                raise RuntimeError(f"adapters {list(adapters)} requested but none is loaded in the UNet")
        elif adapters and routing is not None and same_scales:
            route_layers(unet, routing.as_dict(), previous=self._routed)  # K-LoRA's next step: what changed
        elif adapters:
            unet.set_adapters(list(adapters), list(adapters.values()))
            unet.enable_lora()
            if routing is not None:
                route_layers(unet, routing.as_dict())
        else:
            unet.disable_lora()
        self._unet_state = state
        self._routed = routing.as_dict() if routing is not None and adapters else None

    def set_text_encoder(self, adapters: dict[str, float]) -> None:
        """Only adapters that have text-encoder weights apply; a LoRA without them leaves the encoder alone."""
        from diffusers.loaders.lora_base import (disable_lora_for_text_encoder, enable_lora_for_text_encoder,
                                                 set_adapters_for_text_encoder)

        encoder = self.pipe.text_encoder
        loaded = set(self.pipe.get_list_adapters().get("text_encoder", []))
        present = {name: weight for name, weight in adapters.items() if name in loaded}
        if not loaded:
            return
        if present:
            set_adapters_for_text_encoder(list(present), encoder, list(present.values()))
            enable_lora_for_text_encoder(encoder)
        else:
            disable_lora_for_text_encoder(encoder)

    def forget(self) -> None:
        """Call after loading or deleting adapters: diffusers activates the newest one on load."""
        self._unet_state = None
        self._routed = None


def lora_layers(unet: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The UNet's PEFT LoRA layers, by name (they change only when adapters are loaded into new layers)."""
    from peft.tuners.lora import LoraLayer

    return [(name, module) for name, module in unet.named_modules() if isinstance(module, LoraLayer)]


def stacked_lora(module: Any, adapters: tuple[tuple[str, float], ...]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """One layer's adapters of a several-adapter pass as one LoRA (peft's ``cat``): the A's stacked, the B's side by
    side, each times its scaling, so B_cat A_cat x = sum_k scaling_k B_k A_k x. None if the layer has none of them."""
    present = [name for name, _ in adapters if name in module.lora_A]
    if not present:
        return None
    if any(name in module.lora_variant for name in present):
        raise ValueError("several adapters in one row of a batch work with plain LoRA only (not DoRA or variants)")
    down = torch.cat([module.lora_A[name].weight for name in present])
    up = torch.cat([module.lora_B[name].weight * module.scaling[name] for name in present], dim=1)
    return down, up


def _apply(layer: torch.nn.Module, inputs: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``layer`` (a LoRA A or B: linear or convolution) with another weight of the same kind."""
    if isinstance(layer, torch.nn.modules.conv._ConvNd):
        return layer._conv_forward(inputs, weight, None)
    return torch.nn.functional.linear(inputs, weight)


@contextlib.contextmanager
def per_row_adapters(layers: list[tuple[str, torch.nn.Module]], names: list[str],
                     per_layer: dict[str, list[str]] | None = None,
                     several: dict[tuple[tuple[str, float], ...], list[int]] | None = None,
                     stacked: dict[tuple, Any] | None = None) -> Iterator[None]:
    """For the duration of one forward, each batch row uses its own adapters in every LoRA layer:

    - ``names`` (one per row), or the layer's own list in ``per_layer`` (routed passes), go to PEFT as its
      per-sample ``adapter_names`` (``__base__``: no adapter; a name the layer lacks: none either);
    - ``several`` maps a pass that runs several adapters at once (its (adapter, scale) pairs) to its rows (named
      ``SEVERAL`` for PEFT, which skips them): after the layer's forward those rows get the adapters' sum, as one
      stacked LoRA (``stacked_lora``, kept in ``stacked`` for the next forwards of the batch)."""
    per_layer, several = per_layer or {}, several or {}
    stacked = {} if stacked is None else stacked

    def injecting(adapter_names: list[str]) -> Any:
        def inject(_module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            kwargs["adapter_names"] = adapter_names
            return args, kwargs

        return inject

    def add_several(module: Any, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor:
        inputs = args[0] if args else kwargs["x"]
        for adapters, rows in several.items():
            key = (id(module), adapters)
            if key not in stacked:
                stacked[key] = stacked_lora(module, adapters)
            if stacked[key] is None:
                continue
            down, up = stacked[key]
            first = next(name for name, _ in adapters if name in module.lora_A)  # the layer's A/B kind and geometry
            hidden = _apply(module.lora_A[first], inputs[rows].to(down.dtype), down)
            output[rows] += _apply(module.lora_B[first], hidden, up).to(output.dtype)
        return output

    handles = []
    for name, module in layers:
        handles.append(module.register_forward_pre_hook(injecting(per_layer.get(name, names)), with_kwargs=True))
        if several:
            handles.append(module.register_forward_hook(add_several, with_kwargs=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def one_scale_each(plans: list[ImagePlan]) -> dict[str, float]:
    """Every adapter the plans' passes use with its scale, or {} if some adapter is used at two scales."""
    scales: dict[str, float] = {}
    for plan in plans:
        for step in plan.steps:
            for unet_pass in step.passes:
                for name, scale in unet_pass.adapters:
                    if scales.setdefault(name, scale) != scale:
                        return {}
    return scales


class NonFiniteError(RuntimeError):
    """Sampling produced NaN or inf: the image is recorded as failed, never saved as a result."""


@dataclass
class ImageJob:
    """One image to make. ``method`` is this image's own instance: a method may keep state between its
    ``prepare`` and its ``combine`` calls (LoRAtorio's weight maps), so images of one batch must not share one."""

    method: CompositionMethod
    context: ImageContext
    seed: int


@dataclass
class ImageOutcome:
    """What became of one image: its plan and latents (and image, once decoded), or the error that failed it."""

    plan: ImagePlan | None = None
    latents: torch.Tensor | None = None
    image: Image.Image | None = None
    evaluations: Counter = field(default_factory=Counter)  # UNet evaluations: "full", "shallow"
    error: Exception | None = None


@dataclass(frozen=True)
class Entry:
    """One pass of one image in a UNet forward: two rows of the batch (its uncond and its cond)."""

    image: int  # index in the batch
    index: int  # index of the pass in the image's step
    unet_pass: Pass

    @property
    def state(self) -> tuple:
        return (self.unet_pass.adapters, self.unet_pass.routing)


class Sampler:
    """Generates images with a loaded pipeline. One instance per pipeline; not thread-safe."""

    def __init__(self, pipe: Any, batching: str = "auto", merged_capacity: int = 2) -> None:
        if batching not in BATCHING:
            raise ValueError(f"batching must be one of {BATCHING}, got {batching!r}")
        self.pipe = pipe
        self.batching = batching
        self.adapters = AdapterSwitch(pipe)
        # adapters the plans merge from loaded ones (peft merges): beyond what the batch in hand needs, at most
        # ``merged_capacity`` are kept (least recently used go first)
        self.merged = MergedAdapters(pipe, capacity=merged_capacity)
        self.layers: list[tuple[str, torch.nn.Module]] = []  # the UNet's LoRA layers, found once per batch
        self.batch_scales: dict[str, float] = {}  # every adapter the batch's passes use, at its one scale (if one)
        self.stacked: dict[tuple, Any] = {}  # this batch's several-adapter passes as one LoRA per layer
        self.batched_failed: str | None = None  # why per-sample forwards were abandoned under "auto"
        self.batch_limit: int | None = None  # images per loop after running out of device memory with more
        self.evaluations: Counter[str] = Counter()  # UNet evaluations of the last image of ``denoise``/``predict``
        self.features: dict[tuple, torch.Tensor] = {}  # deep features stored by this batch's passes

    # -- text ------------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, text: str) -> torch.Tensor:
        """last_hidden_state for ``text`` padded/truncated to the tokenizer's length, shape [1, L, D]."""
        tokenizer = self.pipe.tokenizer
        ids = tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(self.pipe.text_encoder.device)
        return self.pipe.text_encoder(ids)[0]

    @torch.no_grad()
    def embed_without_loras(self, text: str) -> torch.Tensor:
        """v(p) for the prompt-aware weights: mean over all positions, every text-encoder LoRA disabled."""
        self.adapters.set_text_encoder({})
        return self.encode(text).mean(dim=1)[0].float()

    @torch.no_grad()
    def embed_as_left(self, text: str) -> torch.Tensor:
        """v(p) with the text encoder as the previous image left it (the released code's behaviour)."""
        return self.encode(text).mean(dim=1)[0].float()

    def importance_embedder(self, method: CompositionMethod) -> Any:
        if getattr(method, "importance_text_encoder", "disabled") == "as_left":
            return self.embed_as_left
        return self.embed_without_loras

    def lora_deltas(self, adapter: str) -> dict[str, torch.Tensor]:
        """{UNet layer: dW} of one loaded adapter (K-LoRA's per-layer choice reads them)."""
        return adapter_deltas(self.pipe.unet, adapter)

    def _encode_prompts(self, plan: ImagePlan, prompt: str, negative_prompt: str) -> torch.Tensor:
        """[negative, prompt] encoded with the text-encoder adapters the plan asks for, shape [2, L, D].

        The plan records only those that have text-encoder weights: the others leave the encoder unchanged."""
        pipe = self.pipe
        with_weights = set(pipe.get_list_adapters().get("text_encoder", []))
        without = sorted(set(plan.text_encoder_adapters) - with_weights)
        if without:
            plan.notes["no_text_encoder_weights"] = without
            plan.text_encoder_adapters = {name: weight for name, weight in plan.text_encoder_adapters.items()
                                          if name in with_weights}
        self.adapters.set_text_encoder(plan.text_encoder_adapters)
        return torch.cat([self.encode(negative_prompt), self.encode(prompt)]).to(pipe.unet.dtype)

    # -- adapters merged from loaded ones --------------------------------------------------------------

    def _merge_for_plan(self, plan: ImagePlan, keep: set[str]) -> None:
        """Build the adapters the plan merges from the set's (peft merges); the time goes into its notes."""
        started = time.perf_counter()
        if self.merged.ensure(plan.merged_adapters, keep=keep):
            self.adapters.forget()
            plan.notes["merge_seconds"] = round(time.perf_counter() - started, 4)

    # -- UNet ------------------------------------------------------------------------------------------

    def _unet(self, latents: torch.Tensor, timestep: Any, text: torch.Tensor) -> torch.Tensor:
        return self.pipe.unet(latents, timestep, encoder_hidden_states=text).sample

    @contextlib.contextmanager
    def _deep_features(self, entries: list[Entry]) -> Iterator[None]:
        """Around one UNet forward of these entries (rows [uncond of each entry, cond of each entry]): keep the
        deep features of the passes that store them, or feed the stored ones to passes that reuse them. Features
        are kept per image and per the pass's adapters."""
        unet = self.pipe.unet
        keys = [(entry.image, entry.unet_pass.feature_key) for entry in entries]
        if any(entry.unet_pass.features == REUSE for entry in entries):
            stored = [self.features.get(key) for key in keys]
            if any(feature is None for feature in stored):
                raise ValueError("a pass reuses deep features that no earlier pass of its adapters stored")
            joined = torch.cat([feature[:1] for feature in stored] + [feature[1:] for feature in stored])
            with skipping_deep_blocks(unet, joined):
                yield
        elif any(entry.unet_pass.features == STORE for entry in entries):
            with recording_deep_feature(unet) as recorded:
                yield
            uncond, cond = recorded.feature.chunk(2)
            for k, (entry, key) in enumerate(zip(entries, keys)):
                if entry.unet_pass.features == STORE:
                    self.features[key] = torch.cat([uncond[k : k + 1], cond[k : k + 1]])
        else:
            yield

    def _forward(self, entries: list[Entry], latents: torch.Tensor, timestep: Any, texts: list[torch.Tensor],
                 rows: tuple | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One UNet forward over the rows [uncond of each entry, cond of each entry]; with ``rows`` (from
        ``_adapters_per_row``), each row uses its own adapters, else the adapters as set. Returns each entry's
        (uncond, cond) prediction."""
        images = [entry.image for entry in entries]
        batch_latents = torch.cat([latents[images], latents[images]])
        batch_text = torch.cat([torch.cat([texts[i][:1] for i in images]), torch.cat([texts[i][1:] for i in images])])
        if rows is None:
            routing = contextlib.nullcontext()
        else:
            names, per_layer, several = rows
            self.layers = self.layers or lora_layers(self.pipe.unet)
            count = len(entries)  # the cond rows repeat the uncond rows' adapters
            routing = per_row_adapters(self.layers, names + names,
                                       {layer: row + row for layer, row in per_layer.items()},
                                       {adapters: indices + [i + count for i in indices]
                                        for adapters, indices in several.items()}, self.stacked)
        with routing, self._deep_features(entries):
            noise = self._unet(batch_latents, timestep, batch_text)
        uncond, cond = noise.chunk(2)
        return [(uncond[k : k + 1], cond[k : k + 1]) for k in range(len(entries))]

    def _adapters_per_row(self, entries: list[Entry]) -> tuple[dict[str, float], tuple] | None:
        """How the entries share one forward, each with its own adapters: (the scales to set, (one PEFT name per
        entry, {layer: names} for the layers routed passes choose, {adapters: entries} for passes of several
        adapters)), or None when they cannot (one adapter wanted at two scales)."""
        scales: dict[str, float] = {}
        names: list[str] = []
        routings: dict[int, dict[str, str]] = {}
        several: dict[tuple[tuple[str, float], ...], list[int]] = {}
        for k, entry in enumerate(entries):
            adapters = entry.unet_pass.as_dict()
            if entry.unet_pass.routing is not None:
                routings[k] = entry.unet_pass.routing.as_dict()
                names.append(NO_ADAPTER)  # a layer the routing does not list uses no adapter
            elif len(adapters) > 1:
                several.setdefault(entry.unet_pass.adapters, []).append(k)
                names.append(SEVERAL)
            else:
                names.append(next(iter(adapters), NO_ADAPTER))
            for name, scale in adapters.items():
                if scales.setdefault(name, scale) != scale:
                    return None
        layers = {layer for routing in routings.values() for layer in routing}
        per_layer = {layer: [routings[k].get(layer, NO_ADAPTER) if k in routings else names[k]
                             for k in range(len(entries))] for layer in layers}
        return scales, (names, per_layer, several)

    def _run(self, entries: list[Entry], latents: torch.Tensor, timestep: Any,
             texts: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if len({entry.state for entry in entries}) == 1:  # every entry the same adapters: set them, plain forward
            self.adapters.set_unet(entries[0].unet_pass.as_dict(), entries[0].unet_pass.routing)
            return self._forward(entries, latents, timestep, texts)
        shared = self._adapters_per_row(entries) if self.batching != "sequential" and not self.batched_failed else None
        if shared is not None:
            scales, rows = shared
            if all(self.batch_scales.get(name) == scale for name, scale in scales.items()):
                scales = self.batch_scales  # the same call all batch long: PEFT's set_adapters is not free
            self.adapters.set_unet(scales)  # sets each adapter's scale; the rows' names do the rest
            try:
                return self._forward(entries, latents, timestep, texts, rows)
            except torch.OutOfMemoryError:
                raise  # not a per-sample problem: ``denoise_batch`` makes the batch in halves
            except (TypeError, ValueError, RuntimeError) as error:
                if self.batching == "batched":
                    raise
                self.batched_failed = f"{type(error).__name__}: {error}"  # fall back once, and say so
        predictions = []
        for entry in entries:
            self.adapters.set_unet(entry.unet_pass.as_dict(), entry.unet_pass.routing)
            predictions += self._forward([entry], latents, timestep, texts)
        return predictions

    def predict_batch(self, steps: list[StepPlan], latents: torch.Tensor, timestep: Any, texts: list[torch.Tensor],
                      counters: list[Counter] | None = None) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        """Per image (``steps[i]``, ``latents[i]``, ``texts[i]`` = [negative, prompt] encoding), every pass's
        (uncond, cond) prediction in plan order. Full passes of every image run first (they may store deep
        features), then shallow ones (they reuse them); ``counters[i]`` counts image i's evaluations."""
        predictions: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        for kind in ("full", "shallow"):
            entries = [Entry(image, index, unet_pass) for image, step in enumerate(steps)
                       for index, unet_pass in enumerate(step.passes)
                       if (unet_pass.features == REUSE) == (kind == "shallow")]
            if entries:
                outputs = self._run(entries, latents, timestep, texts)
                predictions.update(zip([(entry.image, entry.index) for entry in entries], outputs))
                for entry in entries:
                    if counters is not None:
                        counters[entry.image][kind] += 1
        return [[predictions[(image, index)] for index in range(len(step.passes))] for image, step in enumerate(steps)]

    def predict(self, step: StepPlan, latents: torch.Tensor, timestep: Any,
                text: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One image's ``predict_batch``; its evaluations add up in ``self.evaluations``."""
        self.layers, self.stacked = [], {}  # adapters may have been loaded since the last call
        return self.predict_batch([step], latents, timestep, [text], [self.evaluations])[0]

    # -- the loop --------------------------------------------------------------------------------------

    @torch.no_grad()
    def denoise_batch(self, jobs: list[ImageJob], negative_prompt: str,
                      settings: SamplingSettings) -> list[ImageOutcome]:
        """The denoising loop for a batch of images; every outcome has its plan and final latents, or its error."""
        if self.batch_limit and len(jobs) > self.batch_limit:  # the device ran out of memory at this size before
            size = self.batch_limit
            return [outcome for start in range(0, len(jobs), size)
                    for outcome in self.denoise_batch(jobs[start : start + size], negative_prompt, settings)]
        pipe = self.pipe
        device, dtype = pipe.unet.device, pipe.unet.dtype
        outcomes = [ImageOutcome() for _ in jobs]
        texts: dict[int, torch.Tensor] = {}
        self.features, self.layers, self.stacked = {}, [], {}  # this batch's: the LoRA layers are found when needed

        # 1. per image, in order: the method's plan, the adapters it merges from the set's (peft), its prompts with
        #    the text-encoder LoRAs it asked for. (In this order, as at batch 1: a method may embed text with the
        #    encoder as the previous image left it.)
        wanted: set[str] = set()  # merged adapters this batch's plans use: not evicted while it runs
        for image, (job, outcome) in enumerate(zip(jobs, outcomes)):
            try:
                plan = outcome.plan = job.method.prepare(job.context)
                if len(plan.steps) != settings.steps:
                    raise ValueError(f"method {job.method.name} planned {len(plan.steps)} steps, expected "
                                     f"{settings.steps}")
                self._merge_for_plan(plan, keep=wanted)
                wanted |= {recipe.name for recipe in plan.merged_adapters}
                texts[image] = self._encode_prompts(plan, job.context.prompt, negative_prompt)
            except Exception as error:  # this image fails; the others go on
                outcome.error = error
        live = [image for image, outcome in enumerate(outcomes) if outcome.error is None]
        if not live:
            return outcomes
        self.batch_scales = one_scale_each([outcomes[image].plan for image in live])

        # 2. initial noise from each image's own generator (on CPU: identical across devices, orders and batches)
        scheduler = pipe.scheduler
        scheduler.set_timesteps(settings.steps, device=device)
        factor = pipe.vae_scale_factor
        shape = (1, pipe.unet.config.in_channels, settings.height // factor, settings.width // factor)
        generators = [torch.Generator("cpu").manual_seed(jobs[image].seed) for image in live]
        latents = torch.cat([torch.randn(shape, generator=generator, dtype=torch.float32) for generator in generators])
        latents = latents.to(device, dtype) * scheduler.init_noise_sigma
        # a scheduler that adds noise per step (ancestral) draws each image's from that image's generator
        step_options = {"generator": generators} if "generator" in inspect.signature(scheduler.step).parameters else {}

        # 3. denoising: every image's passes, each image's combination, one scheduler step for the batch
        live_jobs, plans = [jobs[image] for image in live], [outcomes[image].plan for image in live]
        live_texts, counters = [texts[image] for image in live], [outcomes[image].evaluations for image in live]
        first_bad = torch.full((len(live),), -1, device=latents.device)
        try:
            for index, timestep in enumerate(scheduler.timesteps):
                steps = [plan.steps[index] for plan in plans]
                model_input = scheduler.scale_model_input(latents, timestep)
                predictions = self.predict_batch(steps, model_input, timestep, live_texts, counters)
                noise = torch.cat([job.method.combine(step, predicted, settings.guidance_scale)
                                   for job, step, predicted in zip(live_jobs, steps, predictions)])
                latents = scheduler.step(noise, timestep, latents, **step_options).prev_sample
                # NaN/inf would decode to a black image scored as a result. Each image's first such step stays on
                # the device and is read once after the loop, so a GPU never waits for the check.
                finite = torch.isfinite(latents).flatten(1).all(dim=1)
                first_bad = torch.where((first_bad < 0) & ~finite, index + 1, first_bad)
        except Exception as error:
            if len(live) == 1:
                outcomes[live[0]].error = error
                return outcomes
            # one image's failure must not fail the others, and a batch too big for the device must not fail at
            # all: each half again (down to single images), and after running out of memory no batch this big
            if isinstance(error, torch.OutOfMemoryError):
                self.batch_limit = min(self.batch_limit or len(live), max(1, len(live) // 2))
            log.warning("a batch of %d images failed (%s: %s); generating it in halves", len(live),
                        type(error).__name__, str(error).splitlines()[0] if str(error) else "")
            half = (len(live) + 1) // 2
            for part in (live[:half], live[half:]):
                for image, outcome in zip(part, self.denoise_batch([jobs[i] for i in part], negative_prompt,
                                                                   settings)):
                    outcomes[image] = outcome
            return outcomes
        for position, image in enumerate(live):
            outcome, bad_step = outcomes[image], int(first_bad[position])
            if bad_step > 0:
                outcome.error = NonFiniteError(
                    f"the latents became non-finite (NaN or inf) at step {bad_step} of {settings.steps}: the image is "
                    "not saved. Usual causes: a LoRA scale or guidance scale far too large, or float16 overflow "
                    "(try dtype=float32).")
                continue
            outcome.latents = latents[position : position + 1]
            if self.batched_failed:
                outcome.plan.notes["batched_fallback"] = self.batched_failed
        return outcomes

    def denoise(self, method: CompositionMethod, context: ImageContext, negative_prompt: str,
                settings: SamplingSettings, seed: int) -> tuple[torch.Tensor, ImagePlan]:
        """One image: its final latents and what the method planned (its evaluations in ``self.evaluations``)."""
        outcome = self._alone(self.denoise_batch([ImageJob(method, context, seed)], negative_prompt, settings)[0])
        return outcome.latents, outcome.plan

    def _alone(self, outcome: ImageOutcome) -> ImageOutcome:
        """A batch of one's outcome: its evaluations in ``self.evaluations``, its error raised."""
        self.evaluations = outcome.evaluations
        if outcome.error is not None:
            raise outcome.error
        return outcome

    @torch.no_grad()
    def decode_batch(self, outcomes: list[ImageOutcome]) -> None:
        """Decode every outcome that has latents into its ``image`` (one VAE call); non-finite pixels fail it."""
        done = [outcome for outcome in outcomes if outcome.latents is not None and outcome.error is None]
        if not done:
            return
        vae = self.pipe.vae
        decoded = vae.decode(torch.cat([outcome.latents for outcome in done]) / vae.config.scaling_factor).sample
        finite = torch.isfinite(decoded).flatten(1).all(dim=1).tolist()
        pixels = ((decoded.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        for outcome, ok, array in zip(done, finite, pixels):
            if ok:
                outcome.image = Image.fromarray(array)
            else:
                outcome.error = NonFiniteError(
                    "the VAE decoded non-finite pixels (NaN or inf): the image is not saved. Usual cause: float16 "
                    "overflow in the VAE (try dtype=float32 or an fp16-safe VAE).")

    def generate_batch(self, jobs: list[ImageJob], negative_prompt: str,
                       settings: SamplingSettings) -> list[ImageOutcome]:
        outcomes = self.denoise_batch(jobs, negative_prompt, settings)
        self.decode_batch(outcomes)
        return outcomes

    def generate(self, method: CompositionMethod, context: ImageContext, negative_prompt: str,
                 settings: SamplingSettings, seed: int) -> tuple[Image.Image, ImagePlan]:
        """One image and its plan (its evaluations in ``self.evaluations``)."""
        outcome = self._alone(self.generate_batch([ImageJob(method, context, seed)], negative_prompt, settings)[0])
        return outcome.image, outcome.plan

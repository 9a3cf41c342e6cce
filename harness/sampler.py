"""The one denoising loop every composition method runs through, read top to bottom.

    encode prompts (text-encoder LoRAs as the method says) -> initial noise from the image's own generator
    -> for each step: the method's passes through the UNet, combined by the method, one scheduler step
    -> VAE decode

Adapter switching is explicit: each pass sets exactly the UNet adapters it names (and, with a routing, which
one each LoRA layer uses). Passes that each use at most one adapter (Composite family, LoRAtorio's base pass
included) run as one batched UNet forward in which every batch element uses its own adapter (PEFT's
per-sample ``adapter_names``), unless ``batching="sequential"``. Full passes run before shallow ones (CMLoRA's
cache: ``harness.deepcache``), and the sampler counts both: ``evaluations`` after ``denoise``.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from PIL import Image

from harness.deepcache import recording_deep_feature, skipping_deep_blocks
from harness.lora import MergedAdapters, adapter_deltas, route_layers
from harness.methods.base import REUSE, STORE, CompositionMethod, ImageContext, ImagePlan, LayerRouting, Pass, StepPlan

BATCHING = ("auto", "batched", "sequential")
NO_ADAPTER = "__base__"  # PEFT's per-sample name for "no LoRA" (LoRAtorio's base pass in a batch)


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


@contextlib.contextmanager
def per_sample_adapters(unet: torch.nn.Module, adapter_names: list[str]) -> Iterator[None]:
    """Pass ``adapter_names`` to every PEFT LoRA layer of the UNet for the duration of one forward."""
    from peft.tuners.lora import LoraLayer

    def inject(_module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        kwargs["adapter_names"] = adapter_names
        return args, kwargs

    handles = [module.register_forward_pre_hook(inject, with_kwargs=True)
               for module in unet.modules() if isinstance(module, LoraLayer)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class NonFiniteError(RuntimeError):
    """Sampling produced NaN or inf: the image is recorded as failed, never saved as a result."""


class Sampler:
    """Generates images with a loaded pipeline. One instance per pipeline; not thread-safe."""

    def __init__(self, pipe: Any, batching: str = "auto") -> None:
        if batching not in BATCHING:
            raise ValueError(f"batching must be one of {BATCHING}, got {batching!r}")
        self.pipe = pipe
        self.batching = batching
        self.adapters = AdapterSwitch(pipe)
        self.merged = MergedAdapters(pipe)
        self.batched_failed: str | None = None  # why batched passes were abandoned under "auto"
        self.evaluations: Counter[str] = Counter()  # UNet evaluations of the last image: "full", "shallow"
        self.features: dict[tuple, torch.Tensor] = {}  # deep features stored by the last image's passes

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

    # -- UNet ------------------------------------------------------------------------------------------

    def _unet(self, latents: torch.Tensor, timestep: Any, text: torch.Tensor) -> torch.Tensor:
        return self.pipe.unet(latents, timestep, encoder_hidden_states=text).sample

    @contextlib.contextmanager
    def _deep_features(self, passes: list[Pass]) -> Iterator[None]:
        """Around one UNet forward of these passes (rows [uncond_1..uncond_K, cond_1..cond_K]): keep the deep
        features of the passes that store them, or feed the stored ones to passes that reuse them."""
        unet = self.pipe.unet
        if any(unet_pass.features == REUSE for unet_pass in passes):
            stored = [self.features.get(unet_pass.feature_key) for unet_pass in passes]
            if any(feature is None for feature in stored):
                raise ValueError("a pass reuses deep features that no earlier pass of its adapters stored")
            joined = torch.cat([feature[:1] for feature in stored] + [feature[1:] for feature in stored])
            with skipping_deep_blocks(unet, joined):
                yield
        elif any(unet_pass.features == STORE for unet_pass in passes):
            with recording_deep_feature(unet) as recorded:
                yield
            uncond, cond = recorded.feature.chunk(2)
            for k, unet_pass in enumerate(passes):
                if unet_pass.features == STORE:
                    self.features[unet_pass.feature_key] = torch.cat([uncond[k : k + 1], cond[k : k + 1]])
        else:
            yield

    def _sequential(self, passes: list[Pass], latents: torch.Tensor, timestep: Any,
                    text: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        predictions = []
        for unet_pass in passes:
            self.adapters.set_unet(unet_pass.as_dict(), unet_pass.routing)
            with self._deep_features([unet_pass]):
                noise = self._unet(torch.cat([latents, latents]), timestep, text)
            predictions.append(tuple(noise.chunk(2)))
        return predictions

    def _batched(self, passes: list[Pass], latents: torch.Tensor, timestep: Any,
                 text: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """All passes in one forward: batch = [uncond_1..uncond_K, cond_1..cond_K], one adapter (or none) each."""
        adapters = {name: weight for unet_pass in passes for name, weight in unet_pass.adapters}
        names = [unet_pass.adapters[0][0] if unet_pass.adapters else NO_ADAPTER for unet_pass in passes]
        count = len(passes)
        self.adapters.set_unet(adapters)  # sets each adapter's scale; per-sample routing does the rest
        uncond_text, cond_text = text.chunk(2)
        batch_text = torch.cat([uncond_text.expand(count, -1, -1), cond_text.expand(count, -1, -1)])
        batch_latents = latents.expand(2 * count, -1, -1, -1)
        with per_sample_adapters(self.pipe.unet, names + names), self._deep_features(passes):
            noise = self._unet(batch_latents, timestep, batch_text)
        uncond, cond = noise.chunk(2)
        return [(uncond[k : k + 1], cond[k : k + 1]) for k in range(count)]

    def _can_batch(self, passes: list[Pass]) -> bool:
        one_adapter_each = all(len(unet_pass.adapters) <= 1 and unet_pass.routing is None for unet_pass in passes)
        some_adapter = any(unet_pass.adapters for unet_pass in passes)
        return (self.batching != "sequential" and self.batched_failed is None and len(passes) > 1
                and one_adapter_each and some_adapter)

    def _run(self, passes: list[Pass], latents: torch.Tensor, timestep: Any,
             text: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self._can_batch(passes):
            try:
                return self._batched(passes, latents, timestep, text)
            except (TypeError, ValueError, RuntimeError) as error:
                if self.batching == "batched":
                    raise
                self.batched_failed = f"{type(error).__name__}: {error}"  # fall back once, and say so
        return self._sequential(passes, latents, timestep, text)

    def predict(self, step: StepPlan, latents: torch.Tensor, timestep: Any,
                text: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every pass's (uncond, cond) prediction, in plan order: full passes first (they may store deep
        features), then shallow ones (they reuse them)."""
        predictions: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for kind in ("full", "shallow"):
            group = [index for index, unet_pass in enumerate(step.passes)
                     if (unet_pass.features == REUSE) == (kind == "shallow")]
            if group:
                outputs = self._run([step.passes[index] for index in group], latents, timestep, text)
                predictions.update(zip(group, outputs))
                self.evaluations[kind] += len(group)
        return [predictions[index] for index in range(len(step.passes))]

    # -- the loop --------------------------------------------------------------------------------------

    @torch.no_grad()
    def denoise(self, method: CompositionMethod, context: ImageContext, negative_prompt: str,
                settings: SamplingSettings, seed: int) -> tuple[torch.Tensor, ImagePlan]:
        """The denoising loop; returns the final latents and what the method planned."""
        pipe = self.pipe
        device, dtype = pipe.unet.device, pipe.unet.dtype
        plan = method.prepare(context)
        if len(plan.steps) != settings.steps:
            raise ValueError(f"method {method.name} planned {len(plan.steps)} steps, expected {settings.steps}")
        self.evaluations, self.features = Counter(), {}

        # 1. adapters the plan merges from the set's (peft), then prompts with the text-encoder LoRAs it asked for
        if plan.merged_adapters:
            started = time.perf_counter()
            if self.merged.ensure(plan.merged_adapters):
                self.adapters.forget()
                plan.notes["merge_seconds"] = round(time.perf_counter() - started, 4)
        # (the plan records only the text-encoder adapters that have text-encoder weights: the others leave
        # the encoder unchanged)
        with_weights = set(pipe.get_list_adapters().get("text_encoder", []))
        without = sorted(set(plan.text_encoder_adapters) - with_weights)
        if without:
            plan.notes["no_text_encoder_weights"] = without
            plan.text_encoder_adapters = {name: weight for name, weight in plan.text_encoder_adapters.items()
                                          if name in with_weights}
        self.adapters.set_text_encoder(plan.text_encoder_adapters)
        text = torch.cat([self.encode(negative_prompt), self.encode(context.prompt)]).to(dtype)

        # 2. initial noise from the image's own generator (on CPU: identical across devices and orders)
        scheduler = pipe.scheduler
        scheduler.set_timesteps(settings.steps, device=device)
        factor = pipe.vae_scale_factor
        shape = (1, pipe.unet.config.in_channels, settings.height // factor, settings.width // factor)
        generator = torch.Generator("cpu").manual_seed(seed)
        latents = torch.randn(shape, generator=generator, dtype=torch.float32).to(device, dtype)
        latents = latents * scheduler.init_noise_sigma

        # 3. denoising: the method's passes, its combination, one scheduler step
        first_bad = torch.tensor(-1, device=latents.device)
        for index, timestep in enumerate(scheduler.timesteps):
            step = plan.steps[index]
            model_input = scheduler.scale_model_input(latents, timestep)
            predictions = self.predict(step, model_input, timestep, text)
            noise = method.combine(step, predictions, settings.guidance_scale)
            latents = scheduler.step(noise, timestep, latents).prev_sample
            # NaN/inf would decode to a black image scored as a result. The first such step is kept on the
            # device and read once after the loop, so a GPU never waits for the check.
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(latents).all(), index + 1, first_bad)
        if first_bad.item() > 0:
            raise NonFiniteError(f"the latents became non-finite (NaN or inf) at step {first_bad.item()} of "
                                 f"{settings.steps}: the image is not saved. Usual causes: a LoRA scale or "
                                 "guidance scale far too large, or float16 overflow (try dtype=float32).")
        if self.batched_failed:
            plan.notes["batched_fallback"] = self.batched_failed
        return latents, plan

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> Image.Image:
        vae = self.pipe.vae
        decoded = vae.decode(latents / vae.config.scaling_factor).sample
        if not torch.isfinite(decoded).all():
            raise NonFiniteError("the VAE decoded non-finite pixels (NaN or inf): the image is not saved. Usual "
                                 "cause: float16 overflow in the VAE (try dtype=float32 or an fp16-safe VAE).")
        pixels = ((decoded[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy())

    def generate(self, method: CompositionMethod, context: ImageContext, negative_prompt: str,
                 settings: SamplingSettings, seed: int) -> tuple[Image.Image, ImagePlan]:
        latents, plan = self.denoise(method, context, negative_prompt, settings, seed)
        return self.decode(latents), plan

"""Generation: every selected set x seed of a testbed with one method, resumably.

Idempotency lives here, not in the launcher (Hydra has no sweep resume): each image has a content-addressed
key, and an image whose key is already recorded next to an existing file is skipped. The set's
``metadata.json`` is updated (locked read, merge, atomic write: ``harness.store``) after every image, so a
killed run loses at most the images in flight (one batch). Scoring and tables are not this module's job
(``harness.workflow``).
"""

from __future__ import annotations

import copy
import errno
import hashlib
import json
import logging
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from harness.devices import resolve_device
from harness.io import atomic_write, sha256_file, stable_hash
from harness.lora import AdapterCache, LoraError, lora_identity, read_lora_state_dict
from harness.methods import CompositionMethod, ImageContext
from harness.paths import local_or_hub
from harness.pipelines import load_pipeline, model_identity
from harness.prompts import phrase_survives, truncation_report
from harness.sampler import ImageJob, ImageOutcome, NonFiniteError, Sampler, SamplingSettings
from harness.settings import ConfigError, RunSettings, Shard
from harness.store import (
    image_filename, iter_set_metadata, method_folder, new_set_metadata, set_folder, update_set_metadata,
    write_testbed_info,
)
from harness.testbeds import CompositionSet, Testbed

log = logging.getLogger("harness.run")


@dataclass
class PendingImage:
    """One image a run still has to make."""

    composition: CompositionSet
    seed: int
    key: str
    hashes: dict[str, str]
    prompt: str


@dataclass
class RunSummary:
    generated: int = 0
    skipped: int = 0
    failed: Counter = field(default_factory=Counter)  # reason -> count

    @property
    def failed_count(self) -> int:
        return sum(self.failed.values())

    def line(self, seconds: float, output_dir: Path) -> str:
        reasons = ", ".join(f"{reason}: {count}" for reason, count in self.failed.most_common())
        failed = sum(self.failed.values())
        return (f"generated {self.generated}, skipped {self.skipped} (already done), failed {failed}"
                + (f" ({reasons})" if reasons else "") + f" in {seconds:.1f} s -> {output_dir}")


def image_seed(seed: int, set_id: str, mode: str = "per_set") -> int:
    """The seed of one image's generator: any subset, order or shard reproduces the same image."""
    if mode == "direct":
        return seed
    if mode != "per_set":
        raise ValueError(f"seed_mode must be per_set or direct, got {mode!r}")
    return int(hashlib.sha256(f"{seed}/{set_id}".encode()).hexdigest()[:15], 16)


def select_sets(sets: list[CompositionSet], n: list[int] | None = None, ids: list[str] | None = None,
                limit: int | None = None, shard: str | Shard = "0/1", limit_per_n: int | None = None
                ) -> list[CompositionSet]:
    """Filters, then the limits, then this shard's share (every n-th set, so shards stay balanced by N).

    ``limit_per_n`` keeps an evenly spaced subset of each N (a stratified sample that still spans every
    character and category), the same subset on every machine."""
    if n:
        unknown_n = set(n) - {s.n for s in sets}
        if unknown_n:
            raise ConfigError(f"n={sorted(n)}: the testbed has no sets of size {sorted(unknown_n)}; its sizes are "
                              f"{sorted({s.n for s in sets})}")
        sets = [s for s in sets if s.n in set(n)]
    if ids:
        unknown = set(ids) - {s.id for s in sets}
        if unknown:
            raise ConfigError(f"unknown set ids {sorted(unknown)}; list them with `python -m harness sets`")
        sets = [s for s in sets if s.id in set(ids)]
    if limit_per_n is not None:
        kept = []
        for size in sorted({s.n for s in sets}):
            of_size = [s for s in sets if s.n == size]
            step = max(1, len(of_size) / int(limit_per_n))
            kept += [of_size[int(i * step)] for i in range(min(int(limit_per_n), len(of_size)))]
        sets = kept
    if limit is not None:
        sets = sets[: int(limit)]
    shard = Shard.parse(shard)
    return sets[shard.index::shard.count]


def library_versions() -> dict[str, str]:
    import diffusers
    import peft
    import torch
    import transformers

    import harness

    return {"harness": harness.__version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__}


def lora_hashes(composition: CompositionSet) -> dict[str, str]:
    """What defines each LoRA of the set (its file's sha256, plus its adapter_config.json's where there is one);
    a missing file is a LoraError naming it."""
    hashes = {}
    for lora in composition.loras:
        if not lora.path.exists():
            read_lora_state_dict(lora)  # raises the one-paragraph "file not found" error
        hashes[lora.id] = lora_identity(lora)
    return hashes


class Runner:
    """Generates one method's images for a testbed. The pipeline is loaded only when there is work."""

    def __init__(self, testbed: Testbed, method: CompositionMethod, method_label: str, output_dir: Path,
                 device: str = "auto", dtype: str | None = None, batching: str = "auto", seed_mode: str = "per_set",
                 adapter_cache: int = 32, lora_min_applied: float = 0.9, batch_size: int = 1) -> None:
        self.testbed, self.method, self.method_label = testbed, method, method_label
        self.output_dir = Path(output_dir)
        self.device = resolve_device(device)
        self.dtype = dtype or testbed.model.get("dtype", "float32")
        self.batching, self.seed_mode, self.adapter_cache_size = batching, seed_mode, adapter_cache
        self.lora_min_applied, self.batch_size = lora_min_applied, batch_size
        self._failed_sets: dict[str, str] = {}  # set id -> why its LoRAs cannot be used (this run)
        sampling = testbed.sampling
        self.settings = SamplingSettings(int(sampling["steps"]), float(sampling["guidance_scale"]),
                                         int(sampling["height"]), int(sampling["width"]))
        self.lora_scale = float(sampling.get("lora_scale", 0.8))
        self.method_key = stable_hash({"name": method.name, "settings": method.settings}, 12)
        self._model_identity: dict[str, str] | None = None
        self._sampler: Sampler | None = None
        self._adapters: AdapterCache | None = None
        self._warned_truncation = False

    # -- lazily loaded state ---------------------------------------------------------------------------

    @property
    def model_identity(self) -> dict[str, str]:
        if self._model_identity is None:
            model = self.testbed.model
            self._model_identity = model_identity(local_or_hub(model["base"]), local_or_hub(model.get("vae")),
                                                  local_or_hub(model.get("single_file_config")))
        return self._model_identity

    def sampler(self) -> Sampler:
        if self._sampler is None:
            model = self.testbed.model
            pipe = load_pipeline(self.model_identity["base"], vae=self.model_identity.get("vae"),
                                 scheduler=model.get("scheduler", "dpmsolver++"), dtype=self.dtype, device=self.device,
                                 single_file_config=model.get("single_file_config"))
            self._sampler = Sampler(pipe, batching=self.batching)
            self._adapters = AdapterCache(pipe, capacity=self.adapter_cache_size, min_applied=self.lora_min_applied)
        return self._sampler

    # -- keys and records ------------------------------------------------------------------------------

    def image_key(self, composition: CompositionSet, hashes: dict[str, str], prompt: str, seed: int) -> str:
        return stable_hash({
            "model": self.model_identity, "loras": [(lora.id, hashes[lora.id]) for lora in composition.loras],
            "lora_scale": self.lora_scale, "method": self.method.name, "method_settings": self.method.settings,
            "prompt": prompt, "negative_prompt": self.testbed.negative_prompt,
            "image_seed": image_seed(seed, composition.id, self.seed_mode), "sampling": vars(self.settings),
            "scheduler": self.testbed.model.get("scheduler", "dpmsolver++"), "dtype": self.dtype,
            "device": self.device.split(":")[0], "batching": self.batching, "versions": library_versions(),
        }, 32)

    def settings_signature(self) -> dict[str, Any]:
        """What this run's images share whatever their set and seed: two runs into one label must agree on it."""
        return {"method_key": self.method_key, "lora_scale": self.lora_scale, "sampling": vars(self.settings),
                "scheduler": self.testbed.model.get("scheduler", "dpmsolver++"), "dtype": self.dtype,
                "batching": self.batching, "seed_mode": self.seed_mode, "model": self.model_identity,
                "negative_prompt": self.testbed.negative_prompt}

    def conflicting_settings(self) -> dict[str, tuple[Any, Any]]:
        """Settings in which images already in this label's folder differ from this run: {name: (stored, now)}."""
        now = self.settings_signature()
        for metadata in iter_set_metadata(self.output_dir, self.method_label):
            for record in metadata.get("images", {}).values():
                stored = {"method_key": metadata["method"]["key"], **{name: record.get(name) for name in now
                                                                      if name != "method_key"}}
                stored = json.loads(json.dumps(stored))  # as stored: tuples became lists
                differing = {name: (stored[name], value) for name, value in json.loads(json.dumps(now)).items()
                             if stored[name] is not None and stored[name] != value}
                if differing:
                    return differing
        return {}

    def folder(self, composition: CompositionSet) -> Path:
        return set_folder(self.output_dir, self.method_label, composition.id)

    def folder_of_label(self) -> Path:
        return method_folder(self.output_dir, self.method_label)

    def _method_info(self) -> dict[str, Any]:
        return {"name": self.method.name, "label": self.method_label, "key": self.method_key,
                "settings": self.method.settings}

    def _set_info(self, composition: CompositionSet, hashes: dict[str, str]) -> dict[str, Any]:
        return {"id": composition.id, "n": composition.n,
                "loras": [lora.describe(self.lora_scale, hashes.get(lora.id)) for lora in composition.loras]}

    def _record(self, composition: CompositionSet, hashes: dict[str, str],
                images: dict[int, dict[str, Any]] | None = None, failures: dict[int, str] | None = None
                ) -> dict[str, Any]:
        """Merge new image records and failures into the set's metadata.json (under its lock); returns it."""
        images, failures = images or {}, failures or {}

        def merge(metadata: dict[str, Any]) -> None:
            metadata["method"] = self._method_info()
            if hashes or "set" not in metadata:
                metadata["set"] = self._set_info(composition, hashes)
            for seed, record in images.items():
                metadata["images"][str(seed)] = record
                metadata["failed"].pop(str(seed), None)
            for seed, reason in failures.items():
                metadata["failed"][str(seed)] = {"reason": reason, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}

        return update_set_metadata(self.folder(composition), merge, lambda: new_set_metadata(
            self.testbed.name, self._method_info(), self._set_info(composition, hashes)))

    # -- generation ------------------------------------------------------------------------------------

    def run_sets(self, sets: list[CompositionSet], seeds: list[int], summary: RunSummary, progress: Any) -> None:
        """Every set x seed not already done, ``batch_size`` images at a time (a batch may span sets)."""
        batch: list[PendingImage] = []
        for composition in sets:
            for item in self.pending(composition, seeds, summary, progress):
                if batch and not self._fits(batch, item):
                    self.generate_batch(batch, summary, progress)
                    batch = []
                batch.append(item)
                if len(batch) >= self.batch_size:
                    self.generate_batch(batch, summary, progress)
                    batch = []
        if batch:
            self.generate_batch(batch, summary, progress)

    def run_set(self, composition: CompositionSet, seeds: list[int], summary: RunSummary, progress: Any) -> None:
        self.run_sets([composition], seeds, summary, progress)

    def pending(self, composition: CompositionSet, seeds: list[int], summary: RunSummary,
                progress: Any) -> list[PendingImage]:
        """The set's images still to make; done ones are counted as skipped, an unusable set fails every seed."""
        folder = self.folder(composition)
        prompt = self.testbed.prompt_for(composition)
        try:
            missing = self.testbed.missing_triggers(composition, prompt)
            if missing:
                raise LoraError(f"set {composition.id}: no trigger phrase of {missing} appears in the prompt "
                                f"{prompt!r}, so those LoRAs would never be activated. Fix: include the trigger "
                                "phrases in the testbed's prompt_template ({triggers}).")
            hashes = lora_hashes(composition)
        except LoraError as error:
            self._fail_all(composition, seeds, str(error), summary, progress)
            return []
        metadata = self._record(composition, hashes)
        items = []
        for seed in seeds:
            key = self.image_key(composition, hashes, prompt, seed)
            record = metadata["images"].get(str(seed))
            if record and record.get("key") == key and self._intact(folder, record):
                summary.skipped += 1
                progress.update(1)
            else:
                items.append(PendingImage(composition, seed, key, hashes, prompt))
        return items

    def _fits(self, batch: list[PendingImage], item: PendingImage) -> bool:
        """A batch's LoRAs must all stay loaded while it runs."""
        loras = {lora.id for pending in batch + [item] for lora in pending.composition.loras}
        return len(loras) <= self.adapter_cache_size

    def generate_batch(self, batch: list[PendingImage], summary: RunSummary, progress: Any) -> None:
        """Make a batch's images in one denoising loop and record each image (or its failure) in its set's
        metadata. A LoRA problem fails its set's images only; any other failure, the image it happened to."""
        sampler = self.sampler()
        in_batch = {lora.id for item in batch for lora in item.composition.loras}
        ready, load_reports = [], {}
        for item in batch:
            try:
                if item.composition.id in self._failed_sets:
                    raise LoraError(self._failed_sets[item.composition.id])
                self._check_triggers_survive(sampler, item.composition, item.prompt)
                load_reports[item.composition.id] = self._adapters.ensure(list(item.composition.loras), keep=in_batch)
                ready.append(item)
            except LoraError as error:
                self._fail_set(item, error, summary, progress)
        sampler.adapters.forget()
        jobs = [ImageJob(copy.deepcopy(self.method),  # an instance per image: a method may keep per-image state
                         ImageContext(list(item.composition.loras), self.lora_scale, item.prompt, self.settings.steps,
                                      sampler.importance_embedder(self.method), sampler.lora_deltas),
                         image_seed(item.seed, item.composition.id, self.seed_mode)) for item in ready]
        started = time.perf_counter()
        outcomes = sampler.generate_batch(jobs, self.testbed.negative_prompt, self.settings) if jobs else []
        seconds = time.perf_counter() - started
        for item, job, outcome in zip(ready, jobs, outcomes):
            if outcome.error is None:
                try:
                    record = self._save(item, job, outcome, sampler, load_reports[item.composition.id],
                                        {"size": len(jobs), "seconds": round(seconds, 4)})
                except Exception as error:
                    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
                        raise  # a full disk fails every image alike: stop (what was written stays valid)
                    self._fail_image(item, error, summary, progress)
                    continue
                self._record(item.composition, item.hashes, images={item.seed: record})
                summary.generated += 1
                progress.update(1)
            elif isinstance(outcome.error, LoraError):
                self._fail_set(item, outcome.error, summary, progress)
            else:
                self._fail_image(item, outcome.error, summary, progress)

    def _save(self, item: PendingImage, job: ImageJob, outcome: ImageOutcome, sampler: Sampler,
              load_reports: dict[str, Any], batch: dict[str, Any]) -> dict[str, Any]:
        """Write the image (atomically) and return its record."""
        folder = self.folder(item.composition)
        filename = image_filename(item.seed)
        atomic_write(folder / filename, lambda tmp: outcome.image.save(tmp, format="PNG"))
        return {
            "file": filename, "sha256": sha256_file(folder / filename), "key": item.key, "seed": item.seed,
            "image_seed": job.seed, "seed_mode": self.seed_mode,
            "prompt": item.prompt, "negative_prompt": self.testbed.negative_prompt,
            "truncation": self._truncation(sampler, item.prompt), "sampling": vars(self.settings),
            "lora_scale": self.lora_scale, "scheduler": self.testbed.model.get("scheduler", "dpmsolver++"),
            "dtype": self.dtype, "device": self.device, "batching": self.batching, "model": self.model_identity,
            "plan": outcome.plan.describe(), "lora_load": load_reports,
            # the image's share of its batch's time; ``batch`` says how many images shared it (not in the key:
            # the batch changes an image only by float rounding)
            "seconds": round(batch["seconds"] / batch["size"], 4), "batch": batch,
            "unet_evaluations": {"full": int(outcome.evaluations["full"]),
                                 "shallow": int(outcome.evaluations["shallow"])},
            "versions": library_versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }

    def _fail_set(self, item: PendingImage, error: LoraError, summary: RunSummary, progress: Any) -> None:
        """The set is unusable (a LoRA file, a trigger): this image fails, and so do its set's later ones."""
        if item.composition.id not in self._failed_sets:
            self._failed_sets[item.composition.id] = str(error)
            log.error(str(error))
        self._record(item.composition, item.hashes, failures={item.seed: str(error)})
        summary.failed[_short_reason(str(error))] += 1
        progress.update(1)

    def _fail_image(self, item: PendingImage, error: Exception, summary: RunSummary, progress: Any) -> None:
        if isinstance(error, NonFiniteError):  # a known failure: one line, no traceback
            log.error("%s seed %s failed: %s", item.composition.id, item.seed, error)
            summary.failed["non-finite latents"] += 1
        else:
            log.error("%s seed %s failed:\n%s", item.composition.id, item.seed,
                      "".join(traceback.format_exception(error)))
            summary.failed[type(error).__name__] += 1
        self._record(item.composition, item.hashes, failures={item.seed: f"{type(error).__name__}: {error}"})
        progress.update(1)

    @staticmethod
    def _intact(folder: Path, record: dict[str, Any]) -> bool:
        """The recorded image is on disk with the bytes it was written with (records before hashes: on disk)."""
        path = folder / record["file"]
        if not path.exists():
            return False
        if record.get("sha256"):
            if sha256_file(path) == record["sha256"]:
                return True
            log.warning("%s does not match the sha256 recorded when it was generated (changed or corrupt): "
                        "generating it again", path)
            return False
        try:  # a record from before hashes were kept: at least the file must be a readable image
            with Image.open(path) as image:
                image.verify()
            return True
        except (OSError, ValueError, SyntaxError):
            log.warning("%s is not a readable image: generating it again", path)
            return False

    def _check_triggers_survive(self, sampler: Sampler, composition: CompositionSet, prompt: str) -> None:
        """A prompt cut by the encoder's token limit before every trigger phrase of a LoRA never activates it:
        that is a failed image, not a normal one."""
        tokenizer = sampler.pipe.tokenizer
        if truncation_report(tokenizer, prompt) is None:
            return
        lost = [lora.id for lora in composition.loras
                if lora.trigger and not any(phrase_survives(tokenizer, prompt, p) for p in lora.trigger)]
        if lost:
            raise LoraError(f"set {composition.id}: the prompt has more tokens than the text encoder reads "
                            f"({tokenizer.model_max_length}), and it cuts off every trigger phrase of {lost}, so "
                            "those LoRAs would never be activated. Fix: shorten the testbed's prompt or "
                            "prompt_template, or put {triggers} earlier in it.")

    def _truncation(self, sampler: Sampler, prompt: str) -> dict[str, Any]:
        """Prompts over the encoder's length are cut silently by diffusers: record it, warn once."""
        report = {"prompt": truncation_report(sampler.pipe.tokenizer, prompt),
                  "negative_prompt": truncation_report(sampler.pipe.tokenizer, self.testbed.negative_prompt)}
        if any(report.values()) and not self._warned_truncation:
            self._warned_truncation = True
            cut = [f"{part} has {value['tokens']} tokens (limit {value['limit']})" for part, value in report.items() if value]
            log.warning("testbed %s: %s; the rest is dropped by the text encoder. Recorded in each image's "
                        "metadata under 'truncation'.", self.testbed.name, "; ".join(cut))
        return report

    def _fail_all(self, composition: CompositionSet, seeds: list[int], reason: str, summary: RunSummary,
                  progress: Any) -> None:
        folder = self.folder(composition)
        pending: list[int] = []

        def fail_pending(metadata: dict[str, Any]) -> None:
            metadata.setdefault("set", self._set_info(composition, {}))
            metadata["method"] = self._method_info()
            for seed in seeds:
                record = metadata["images"].get(str(seed))
                if record is None or not (folder / record["file"]).exists():
                    pending.append(seed)
                    metadata["failed"][str(seed)] = {"reason": reason, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}

        update_set_metadata(folder, fail_pending, lambda: new_set_metadata(
            self.testbed.name, self._method_info(), self._set_info(composition, {})))
        summary.failed[_short_reason(reason)] += len(pending)
        summary.skipped += len(seeds) - len(pending)
        progress.update(len(seeds))
        log.error(reason)


def _short_reason(reason: str) -> str:
    """A summary label: the error's first sentence, at most ~80 characters, cut between words."""
    text = reason.split(". ")[0]
    for marker in ("file not found", "cannot read", "does not fit", "none of its", "no trigger phrase",
                   "cuts off every trigger phrase", "not supported"):
        if marker in text:
            return marker
    return text if len(text) <= 80 else text[:80].rsplit(" ", 1)[0] + " ..."


def run(testbed: Testbed, method: CompositionMethod, method_label: str, settings: RunSettings) -> RunSummary:
    """Generate every set x seed the settings select; failures are recorded per image and counted."""
    sets = select_sets(testbed.sets(), list(settings.n or []), list(settings.sets or []) or None, settings.limit,
                       settings.shard, settings.limit_per_n)
    seeds = list(settings.seeds) if settings.seeds is not None else testbed.seeds
    largest = max((composition.n for composition in sets), default=0)
    if largest > settings.adapter_cache:
        raise ConfigError(f"adapter_cache={settings.adapter_cache} holds fewer LoRAs than a set of this run has "
                          f"({largest}); every LoRA of a set must stay loaded while its images are made. Fix: "
                          f"adapter_cache={max(largest, 32)} (the default 32 also lets batches span sets).")
    write_testbed_info(settings.output_dir, testbed.analysis_info())
    runner = Runner(testbed, method, method_label, settings.output_dir, settings.device, settings.dtype,
                    settings.batching, settings.seed_mode, settings.adapter_cache, settings.lora_min_applied,
                    settings.batch_size)
    conflicts = runner.conflicting_settings()
    if conflicts and not settings.overwrite:
        described = "; ".join(f"{name}: {stored!r} there, {now!r} now" for name, (stored, now) in conflicts.items())
        raise ConfigError(
            f"{runner.folder_of_label()} already holds images made with other settings ({described}), and this run "
            f"would replace them. Fix: give this run its own label (method.label={method_label}_<setting>; a Hydra "
            f"sweep (-m) labels its points itself), or another output_dir, or pass overwrite=true to regenerate.")
    summary = RunSummary()
    started = time.perf_counter()
    with tqdm(total=len(sets) * len(seeds), desc=f"{method_label} on {testbed.name}", unit="img",
              disable=not settings.progress) as progress:
        runner.run_sets(sets, seeds, summary, progress)
    print(f"run {method_label}: " + summary.line(time.perf_counter() - started, settings.output_dir), flush=True)
    return summary

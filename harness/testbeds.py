"""Testbeds: which LoRAs exist, which sets are composed from them, and the prompt and settings of each.

One shape for all of them (``conf/testbed/<name>.yaml``): ComposLoRA anime/reality (manifests copied from the
published benchmark), custom testbeds from one YAML file (inline ``loras`` and optional explicit ``sets``),
the toy world, and ``tiny`` (random weights, built on the fly).
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.lora import LoraSpec
from harness.paths import resolve_path
from harness.prompts import contains_phrase, join_phrases, tidy_prompt


class TestbedError(ValueError):
    """A testbed definition is wrong; the message names the field and the fix."""


@dataclass(frozen=True)
class CompositionSet:
    id: str
    loras: tuple[LoraSpec, ...]

    @property
    def n(self) -> int:
        return len(self.loras)


@dataclass
class Testbed:
    name: str
    loras: dict[str, LoraSpec]
    categories: list[str]
    always: list[str]
    n: list[int]
    prompt: str
    prompt_template: str = "{prompt}, {triggers}"
    fill: dict[str, str] = field(default_factory=dict)
    negative_prompt: str = ""
    explicit_sets: list[list[str]] | None = None
    model: dict[str, Any] = field(default_factory=dict)
    sampling: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    metrics: list[str] = field(default_factory=list)
    ground_truth: str | None = None  # "<metric>/<sub_metric>" that is the truth here (the toy oracle), if any
    primary_columns: list[str] = field(default_factory=list)  # leaderboard columns a reader looks at first

    def analysis_info(self) -> dict[str, Any]:
        """What the tables and report need to know about this testbed (stored in the results folder)."""
        return {"name": self.name, "ground_truth": self.ground_truth, "primary_columns": list(self.primary_columns)}

    # -- sets ------------------------------------------------------------------------------------------

    def sets(self) -> list[CompositionSet]:
        """Every composition set, in a stable order (by N, then category order, then instance order)."""
        if self.explicit_sets is not None:
            return [self._make_set(ids) for ids in self.explicit_sets]
        found: list[CompositionSet] = []
        for size in sorted(self.n):
            found += self._sets_of_size(size)
        return found

    def _by_category(self, category: str) -> list[LoraSpec]:
        return [lora for lora in self.loras.values() if lora.category == category]

    def _sets_of_size(self, size: int) -> list[CompositionSet]:
        if size == 1:  # each LoRA alone, for `single` and per-concept references
            return [self._make_set([lora.id]) for lora in self.loras.values()]
        required = Counter(self.always)
        optional = [c for c in self.categories if c not in required]
        extra = size - len(self.always)
        if extra < 0 or extra > len(optional):
            return []
        found = []
        for chosen in itertools.combinations(optional, extra):
            slots = [list(itertools.combinations(self._by_category(c), k)) for c, k in required.items()]
            slots += [[(lora,) for lora in self._by_category(c)] for c in chosen]
            for picks in itertools.product(*slots):
                loras = [lora for pick in picks for lora in pick]
                loras.sort(key=lambda lora: self.categories.index(lora.category))
                found.append(self._make_set([lora.id for lora in loras]))
        return found

    def _make_set(self, ids: list[str]) -> CompositionSet:
        unknown = [lora_id for lora_id in ids if lora_id not in self.loras]
        if unknown:
            raise TestbedError(f"testbed {self.name!r}: set {ids} names unknown LoRA ids {unknown}; "
                               f"known: {sorted(self.loras)}")
        return CompositionSet(f"n{len(ids)}_" + "+".join(ids), tuple(self.loras[lora_id] for lora_id in ids))

    # -- prompts ---------------------------------------------------------------------------------------

    def prompt_for(self, composition: CompositionSet) -> str:
        """Base prompt + all trigger phrases of the set (+ generic phrases for absent categories)."""
        present = {lora.category for lora in composition.loras}
        triggers = join_phrases(phrase for lora in composition.loras for phrase in lora.trigger)
        fill = join_phrases(phrase for category, phrase in self.fill.items() if category not in present)
        return tidy_prompt(self.prompt_template.format(prompt=self.prompt, triggers=triggers, fill=fill))

    def missing_triggers(self, composition: CompositionSet, prompt: str) -> list[str]:
        """LoRAs none of whose trigger phrases appear in the prompt (they would never be activated)."""
        return [lora.id for lora in composition.loras
                if lora.trigger and not any(contains_phrase(prompt, phrase) for phrase in lora.trigger)]


def _loras_from_manifest(manifest: dict[str, list[dict[str, Any]]], lora_dir: Path | None,
                         reference_dir: Path | None) -> dict[str, LoraSpec]:
    loras = {}
    for category, entries in manifest.items():
        for entry in entries:
            path = entry.get("path")
            path = resolve_path(path) if path else (lora_dir or Path(".")) / f"{entry['id']}.safetensors"
            references = entry.get("references")
            references = resolve_path(references) if references else (
                reference_dir / entry["id"] if reference_dir else None)
            if entry["id"] in loras:
                raise TestbedError(f"LoRA id {entry['id']!r} appears twice; ids must be unique in a testbed")
            loras[entry["id"]] = LoraSpec(entry["id"], entry.get("name", entry["id"]), entry.get("category", category),
                                          tuple(entry.get("trigger", [])), path, references)
    return loras


def load_testbed(config: dict[str, Any]) -> Testbed:
    """Build a Testbed from its config (a plain dict, e.g. ``OmegaConf.to_container(cfg.testbed)``)."""
    config = dict(config)
    lora_dir, reference_dir = resolve_path(config.get("lora_dir")), resolve_path(config.get("reference_dir"))
    if config.get("manifest"):
        manifest_path = resolve_path(config["manifest"])
        if not manifest_path.exists():
            hint = (" It is built on first use by `python -m harness run testbed=tiny`." if config.get("build") == "tiny"
                    else "")
            raise TestbedError(f"testbed {config.get('name')!r}: manifest {manifest_path} not found.{hint} Fix: set "
                               "`manifest` to a ComposLoRA-format *_lora_info.json, or list `loras` inline.")
        manifest = json.loads(manifest_path.read_text())
    elif config.get("loras"):
        manifest = {}
        for entry in config["loras"]:
            if "category" not in entry or "id" not in entry:
                raise TestbedError(f"testbed {config.get('name')!r}: every entry of `loras` needs `id` and "
                                   f"`category` (got {entry})")
            manifest.setdefault(entry["category"], []).append(entry)
    else:
        raise TestbedError(f"testbed {config.get('name')!r} defines no LoRAs: give `manifest` or `loras`.")
    loras = _loras_from_manifest(manifest, lora_dir, reference_dir)
    categories = list(config.get("categories") or manifest.keys())
    return Testbed(
        name=config["name"], loras=loras, categories=categories, always=list(config.get("always") or []),
        n=list(config.get("n") or [2, 3, 4, 5]), prompt=config.get("prompt", ""),
        prompt_template=config.get("prompt_template") or "{prompt}, {triggers}", fill=dict(config.get("fill") or {}),
        negative_prompt=config.get("negative_prompt") or "", explicit_sets=config.get("sets"),
        model=dict(config.get("model") or {}), sampling=dict(config.get("sampling") or {}),
        seeds=list(config.get("seeds") or [0]), metrics=list(config.get("metrics") or []),
        ground_truth=config.get("ground_truth"), primary_columns=list(config.get("primary_columns") or []),
    )

"""A small fake results folder (images + metadata.json + score JSONL) for table, compare and report tests.

Layout and formats come from harness/store.py (every path and writer), so the tests exercise
the same reader the real runner output goes through. Values are drawn from a seeded generator with a
known ordering of the methods (switch > composite > merge on ``clip_t``), so tests can check directions
without hard-coding numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from harness.io import stable_hash
from harness.store import (
    ScoreRow, append_rows, image_filename, image_id, new_set_metadata, pairwise_sub_metric, set_folder,
    write_set_metadata, write_testbed_info,
)

TESTBED = "toy"
METHOD_MEANS = {"merge": 0.20, "composite": 0.24, "switch": 0.28}
METHOD_COLOURS = {"merge": (200, 60, 60), "composite": (60, 160, 60), "switch": (60, 60, 200)}
SETS = [("n2_a", 2), ("n2_b", 2), ("n2_c", 2), ("n2_d", 2), ("n3_a", 3), ("n3_b", 3), ("n3_c", 3), ("n3_d", 3)]
SEEDS = [0, 1]
CATEGORIES = ["character", "clothing", "style"]
FAILED = ("composite", "n3_d", 1)  # a generation failure: no image, recorded under "failed"
ERROR_ROW = ("merge", "n2_b", 0)  # clip_t could not be computed for this image
NOT_SCORED = ("switch", "n2_c", 1)  # an image the clip_t metric never wrote a row for
JUDGE_PAIR = ("merge", "switch")
POINTWISE = ["element_integration", "spatial_consistency", "semantic_accuracy", "aesthetic_quality", "overall"]


def metric_key(metric: str, settings: dict[str, Any]) -> str:
    return stable_hash({"metric": metric, "version": "1", "settings": settings}, 12)


def _loras(set_id: str, n: int) -> list[dict[str, Any]]:
    return [{"id": f"{set_id}_{i}", "name": f"lora {i}", "category": CATEGORIES[i], "trigger": [f"trig{i}"],
             "path": f"testbed/toy/lora/{set_id}_{i}.safetensors", "sha256": "0" * 64, "scale": 0.8,
             "references": []} for i in range(n)]


def _image_key(label: str, set_id: str, seed: int) -> str:
    return stable_hash([label, set_id, seed], 16)


def _row(label: str, set_id: str, n: int, seed: int, metric: str, settings: dict[str, Any], sub_metric: str,
         value: float | None, status: str = "ok", reason: str = "") -> dict[str, Any]:
    return ScoreRow(
        image_id=image_id(label, set_id, seed), image_key=_image_key(label, set_id, seed), testbed=TESTBED,
        method=label, method_label=label, method_key=stable_hash(label, 12), set_id=set_id, n=n, seed=seed,
        metric=metric, sub_metric=sub_metric, value=value, status=status, reason=reason,
        metric_key=metric_key(metric, settings), metric_version="1",
        metric_settings=json.dumps(settings, sort_keys=True),
    ).to_dict()


def _append_rows(results_dir: Path, rows: list[dict[str, Any]]) -> None:
    append_rows(results_dir, [ScoreRow(**row) for row in rows])


def make_results_folder(results_dir: Path, clip_settings: dict[str, dict[str, Any]] | None = None,
                        rng_seed: int = 0) -> Path:
    """Write the fake folder; ``clip_settings`` may give a method other clip_t settings (another key)."""
    rng = np.random.default_rng(rng_seed)
    clip_settings = clip_settings or {}
    # a ground truth, and no primary columns: the headline falls back to its default choice
    write_testbed_info(results_dir, {"name": TESTBED, "ground_truth": "oracle/all_present"})
    rows: list[dict[str, Any]] = []
    for label, mean in METHOD_MEANS.items():
        clip = clip_settings.get(label, {"model": "toy-clip", "text": "prompt"})
        for set_id, n in SETS:
            folder = set_folder(results_dir, label, set_id)
            folder.mkdir(parents=True, exist_ok=True)
            meta = new_set_metadata(TESTBED, {"name": label, "label": label, "key": stable_hash(label, 12),
                                              "settings": {}}, {"id": set_id, "n": n, "loras": _loras(set_id, n)})
            for seed in SEEDS:
                if (label, set_id, seed) == FAILED:
                    meta["failed"][str(seed)] = {"reason": "RuntimeError: out of memory", "time": 0.0}
                    continue
                colour = tuple(min(255, c + 40 * seed) for c in METHOD_COLOURS[label])
                Image.new("RGB", (32, 32), colour).save(folder / image_filename(seed))
                meta["images"][str(seed)] = {"file": image_filename(seed), "key": _image_key(label, set_id, seed),
                                             "prompt": f"a photo, {set_id}", "negative_prompt": ""}
                value = float(mean - 0.01 * n + rng.normal(0, 0.01))
                if (label, set_id, seed) == ERROR_ROW:
                    rows.append(_row(label, set_id, n, seed, "clip_t", clip, "all", None, "error", "bad tensor"))
                elif (label, set_id, seed) != NOT_SCORED:
                    rows.append(_row(label, set_id, n, seed, "clip_t", clip, "all", value))
                # Per-LoRA sub-metrics (as image_ref writes them) plus their per-image mean.
                per_lora = [float(rng.uniform(0, 1)) for _ in range(n)]
                for lora, similarity in zip(_loras(set_id, n), per_lora):
                    rows.append(_row(label, set_id, n, seed, "image_ref", {"backbone": "dino"}, f"dino:{lora['id']}",
                                     similarity))
                rows.append(_row(label, set_id, n, seed, "image_ref", {"backbone": "dino"}, "dino:mean",
                                 float(np.mean(per_lora))))
                present = float(value + rng.normal(0, 0.01) > 0.21)
                rows.append(_row(label, set_id, n, seed, "oracle", {"version": 1}, "all_present", present))
                for sub in POINTWISE:
                    rows.append(_row(label, set_id, n, seed, "llm_judge", {"model": "fake"}, sub,
                                     float(np.clip(round(mean * 30 + rng.normal(0, 1), 1), 0, 10))))
            write_set_metadata(folder, meta)
    # Pairwise judge rows between merge and switch; switch usually wins composition.
    a, b = JUDGE_PAIR
    for set_id, n in SETS:
        for seed in SEEDS:
            for criterion in ("composition", "quality"):
                score_a = float(np.round(rng.uniform(4, 8) * 2) / 2)
                score_b = score_a + (1.0 if criterion == "composition" or seed == 0 else 0.0)
                rows.append(_row(a, set_id, n, seed, "llm_judge", {"model": "fake"}, pairwise_sub_metric(criterion, b),
                                 score_a))
                rows.append(_row(b, set_id, n, seed, "llm_judge", {"model": "fake"}, pairwise_sub_metric(criterion, a),
                                 score_b))
                rows.append(_row(a, set_id, n, seed, "llm_judge", {"model": "fake"},
                                 pairwise_sub_metric(criterion, b, consistency=True), float(seed == 0)))
    # An earlier, superseded row for one image: the tidy table must keep only the last one written.
    first = next(r for r in rows if r["metric"] == "clip_t" and r["value"] is not None)
    _append_rows(results_dir, [{**first, "value": 999.0}])
    _append_rows(results_dir, rows)
    return results_dir


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fake results folder shared by the tests of one module (copy it before changing it)."""
    return make_results_folder(tmp_path_factory.mktemp("results") / "toy")

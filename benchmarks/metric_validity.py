"""Do the metrics see what is in a toy-world image? Validity against known ground truth, no diffusion model needed.

Synthetic "methods" render every set of concepts with the toy world's renderer, each dropping every concept
(replacing it by a generic variant) with its own probability, so the truth is known per image
(``render_truth/all_present``) and the methods have a known ranking (drop_0 > drop_25 > drop_50 > drop_75).
The script scores the folder with the metrics' toy configs (and the toy oracle when it is built), then writes
``validity_render_truth.csv`` (and ``validity.csv`` against the oracle when present)::

    HF_HUB_OFFLINE=1 nice -n 10 .venv/bin/python benchmarks/metric_validity.py --out results/metric_validity

On the real toy testbed (diffusion images), ``python -m harness table results/toy`` writes ``validity.csv``.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
from PIL import Image

import harness  # noqa: F401
from harness.config import metric_config
from harness.metrics.base import METRICS, Metric
from harness.paths import resolve_path
from harness.scoring import score_results
from harness.store import (
    image_filename, is_results_folder, iter_images, load_scores, new_set_metadata, set_folder, write_set_metadata,
)
from harness.tables import lora_ids, tidy_table
from harness.toy import world
from harness.validity import GroundTruth, ground_truth_pairs, validity_table, write_validity

DROP_RATES = {"drop_0": 0.0, "drop_25": 0.25, "drop_50": 0.5, "drop_75": 0.75}


@METRICS.register("render_truth")
class RenderTruth(Metric):
    """The renderer's own record of which concepts it drew (``all_present`` 1/0)."""

    def score(self, images):
        for image in images:
            yield self.row(image, float(image.metadata["truth"]["all_present"]), "all_present")


def sample_sets(count: int, rng: np.random.Generator) -> list[list[str]]:
    """Random ComposLoRA-style sets: a character plus N-1 concepts of other categories, N in 2..5."""
    by_category = {c: [x.id for x in world.CONCEPTS if x.category == c] for c in world.CATEGORIES}
    sets: list[list[str]] = []
    while len(sets) < count:
        n = 2 + len(sets) % 4
        others = list(rng.choice(list(world.CATEGORIES[1:]), n - 1, replace=False))
        chosen = [str(rng.choice(by_category[c])) for c in ["character", *sorted(others, key=world.CATEGORIES.index)]]
        if chosen not in sets:  # a set id names one folder
            sets.append(chosen)
    return sets


def build_results(out: Path, n_sets: int, seeds: int, reference_dir: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    manifest = {entry["id"]: entry for entries in world.manifest().values() for entry in entries}
    for set_ids, (label, rate) in itertools.product(sample_sets(n_sets, rng), DROP_RATES.items()):
        set_id = "+".join(set_ids)
        folder = set_folder(out, label, set_id)
        folder.mkdir(parents=True, exist_ok=True)
        loras = [{"id": i, "name": manifest[i]["name"], "category": world.CONCEPTS_BY_ID[i].category,
                  "trigger": manifest[i]["trigger"], "path": "", "sha256": "", "scale": 1.0,
                  "references": str(reference_dir / i)} for i in set_ids]
        records = {}
        for image_seed in range(seeds):
            spec = world.sample_generic_spec(rng)
            kept = [i for i in set_ids if rng.random() >= rate]
            for concept_id in kept:
                spec = world.with_concept(spec, concept_id)
            Image.fromarray(world.render(spec, rng)).save(folder / image_filename(image_seed))
            records[str(image_seed)] = {
                "file": image_filename(image_seed), "key": f"{label}/{set_id}/{image_seed}",
                "prompt": world.caption(spec, concepts=tuple(set_ids)), "negative_prompt": "",
                "truth": {"all_present": len(kept) == len(set_ids), "kept": kept}}
        metadata = new_set_metadata("toy-render", {"name": label, "label": label, "key": label, "settings": {"drop": rate}},
                                    {"id": set_id, "n": len(set_ids), "loras": loras})
        write_set_metadata(folder, {**metadata, "images": records})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="results/metric_validity")
    parser.add_argument("--sets", type=int, default=24)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--metrics", nargs="*", default=["clip_text", "arcface", "image_ref"])
    args = parser.parse_args()
    out = Path(args.out)
    if not is_results_folder(out):
        build_results(out, args.sets, args.seeds, resolve_path("testbed/toy/references"))
    metrics = {"render_truth": {}, **{name: metric_config(name) for name in args.metrics}}
    if resolve_path("testbed/toy/oracle").exists():
        metrics["oracle"] = metric_config("oracle")
    score_results(out, metrics, progress=False)
    print(f"{len(load_scores(out))} score rows")
    tidy, ids = tidy_table(out), lora_ids(iter_images(out))
    table = validity_table(ground_truth_pairs(tidy, GroundTruth("render_truth", "all_present"), ids))
    print(table.to_string(index=False))
    print(f"wrote {write_validity(out, table, 'validity_render_truth.csv')}")
    if "oracle" in metrics:
        oracle_table = validity_table(ground_truth_pairs(tidy, GroundTruth("oracle", "all_present"), ids))
        print(f"wrote {write_validity(out, oracle_table)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

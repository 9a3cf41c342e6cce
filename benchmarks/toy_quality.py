"""Toy-world quality targets, measured (nothing hard-coded): ``python benchmarks/toy_quality.py``.

1. Oracle: per-slot accuracy on clean renders, on VAE round-trips and on renders with shifted pattern
   phases; agreement of its two members.
2. Base model on generic captions: per-slot oracle accuracy (target: mean >= 0.8); and with the character
   phrase said twice, which moves every later phrase 4 tokens on (is a slot read at any position?).
3. Each LoRA alone (prompt = base prompt + its triggers + random generic phrases for the other four
   slots): concept present (target >= 0.8), other prompted slots kept (target >= 0.7); and the same
   prompt without the LoRA (how often the base draws the concept unaided).
   With ``--named``: each held-back combination prompted in generic words, without its LoRA (e.g. `wearing
   black dots` for Polka gown): can the base model compose that unseen pair from words it knows?
   With ``--variants CATEGORY`` (e.g. clothing): each generic variant of that slot prompted in its own scenes,
   without a LoRA: which variants the base model draws well (a late-learnt one, such as dots, holds back the
   LoRA that must draw it in another ink).
4. With ``--results DIR`` (a scored run, e.g. results/toy from ``make demo``): the pairs of composition
   methods whose 95 % CIs do not overlap at N=3..5 in DIR/leaderboard_long.csv (target: at least one).
Sampler settings come from conf/testbed/toy.yaml unless overridden.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import harness  # noqa: F401  (before diffusers)
import numpy as np
import torch
from omegaconf import OmegaConf

from harness.toy import world
from harness.toy.oracle import Oracle, sample_any_spec

TARGETS = {"base_slot_accuracy": 0.8, "lora_present": 0.8, "lora_kept": 0.7}


def generate(pipe, prompts: list[str], seeds: list[int], sampling: dict, batch: int = 32) -> np.ndarray:
    images = []
    for start in range(0, len(prompts), batch):
        generators = [torch.Generator().manual_seed(seed) for seed in seeds[start:start + batch]]
        out = pipe(prompts[start:start + batch], num_inference_steps=sampling["steps"],
                   guidance_scale=sampling["guidance_scale"], height=sampling["height"], width=sampling["width"],
                   generator=generators, output_type="np").images
        images.append(np.clip(np.rint(out * 255), 0, 255).astype(np.uint8))
    return np.concatenate(images)


def oracle_checks(oracle: Oracle, vae, count: int, seed: int) -> dict:
    """Per-slot oracle accuracy on clean renders, on their VAE round-trips, and on renders whose patterns start
    at random phases (``world.render(any_phase=True)``: a shifted pattern is the same pattern)."""
    from harness.toy.base_model import to_model_range, vae_roundtrip

    rng = np.random.default_rng(seed)
    specs = [sample_any_spec(rng) for _ in range(count)]
    clean = np.stack([world.render(spec, rng) for spec in specs])
    recon = ((vae_roundtrip(vae, to_model_range(clean)) + 1) * 127.5).round().clamp(0, 255).byte()
    recon = recon.permute(0, 2, 3, 1).numpy()
    shifted = np.stack([world.render(spec, rng, any_phase=True) for spec in specs])
    result = {}
    for name, images in (("clean", clean), ("vae", recon), ("phase", shifted)):
        predictions = oracle.predict(images)
        result[name] = {c: float(np.mean([p[c].label == s.labels()[c] for p, s in zip(predictions, specs)]))
                        for c in world.CATEGORIES}
    return result


def agreement(oracle: Oracle, images: np.ndarray) -> float:
    members = oracle.member_predictions(images)
    same = [all(members[0][n][c].label == other[n][c].label for other in members[1:])
            for n in range(len(images)) for c in world.CATEGORIES]
    return float(np.mean(same))


SEPARATION_COLUMNS = ("oracle/all_present", "oracle/all_kept", "clip_text", "image_ref/dino:mean",
                      "image_ref/clip:mean", "arcface/mean")


def separations(results: Path) -> list[dict]:
    """Pairs of composition methods (not ``base``) whose CIs do not overlap, per N in 3..5 and column."""
    import pandas as pd

    path = results / "leaderboard_long.csv"
    if not path.exists():
        raise SystemExit(f"error: no {path}. Fix: pass a scored results folder (`make demo` writes results/toy).")
    table = pd.read_csv(path, dtype={"n": str})
    table = table[table["n"].isin(["3", "4", "5"]) & table["column"].isin(SEPARATION_COLUMNS)
                  & (table["method"] != "base")]
    found = []
    for (n, column), group in table.groupby(["n", "column"]):
        rows = group.sort_values("mean", ascending=False).to_dict("records")
        for i, high in enumerate(rows):
            for low in rows[i + 1:]:
                if high["ci_low"] > low["ci_high"]:
                    found.append({"n": n, "column": column,
                                  "higher": high["method_label"], "higher_ci": [high["ci_low"], high["ci_high"]],
                                  "lower": low["method_label"], "lower_ci": [low["ci_low"], low["ci_high"]]})
    print(f"separations at N=3..5 in {results} (composition-method pairs whose 95% CIs do not overlap): "
          f"{len(found)} (target >= 1) {'MET' if found else 'NOT MET'}")
    for row in found:
        print(f"  N={row['n']} {row['column']}: {row['higher']} [{row['higher_ci'][0]:.3f}, {row['higher_ci'][1]:.3f}]"
              f" > {row['lower']} [{row['lower_ci'][0]:.3f}, {row['lower_ci'][1]:.3f}]")
    return found


def shifted_accuracy(pipe, oracle: Oracle, specs: list, sampling: dict) -> dict[str, float]:
    """Per-slot accuracy on generic captions with the character phrase said twice: every later phrase sits 4
    tokens further on, as when a LoRA's trigger phrases are longer than the generic phrase they replace."""
    doubled = [world.caption(spec).replace(phrase, f"{phrase}, {phrase}")
               for spec in specs for phrase in [world.slot_phrase("character", spec.character)]]
    predictions = oracle.predict(generate(pipe, doubled, list(range(len(specs))), sampling))
    accuracy = {c: float(np.mean([p[c].label == s.labels()[c] for p, s in zip(predictions, specs)]))
                for c in world.CATEGORIES}
    print("  character phrase doubled (later phrases +4 tokens): "
          + "  ".join(f"{c} {v:.3f}" for c, v in accuracy.items()))
    return accuracy


def named_combinations(pipe, oracle: Oracle, images: int, sampling: dict) -> dict[str, float]:
    """Per concept: how often the base model draws it when its attribute pair is named in generic words."""
    rates = {}
    for number, concept in enumerate(world.CONCEPTS):
        rng = np.random.default_rng(100 + number)  # the specs of the LoRA measurement below
        specs = [world.concept_spec(concept.id, rng) for _ in range(images)]
        predictions = oracle.predict(generate(pipe, [world.caption(spec) for spec in specs], list(range(images)),
                                              sampling))
        rates[concept.id] = float(np.mean([p[concept.category].label == concept.id for p in predictions]))
        print(f"named in words, no LoRA: {concept.id:14} ({world.caption(specs[0])!r}) {rates[concept.id]:.3f}",
              flush=True)
    return rates


def variant_accuracy(pipe, oracle: Oracle, category: str, images: int, sampling: dict) -> dict[str, float]:
    """Per generic variant of ``category``: the share of ``images`` generic scenes showing it, prompted by
    their generic captions, in which the oracle reads that variant."""
    rates = {}
    for number, value in enumerate(world.generic_variants(category)):
        rng = np.random.default_rng([300, number])
        specs = [world.sample_generic_spec(rng).replace(**{category: value}) for _ in range(images)]
        predictions = oracle.predict(generate(pipe, [world.caption(spec) for spec in specs], list(range(images)),
                                              sampling))
        label = world.variant_label(category, value)
        rates[label] = float(np.mean([p[category].label == label for p in predictions]))
        print(f"base, {category} variant {label:24} {rates[label]:.3f}", flush=True)
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--testbed", default="conf/testbed/toy.yaml")
    parser.add_argument("--images", type=int, default=64, help="images per measurement")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument("--scale", type=float, default=None, help="LoRA scale (default: the testbed's)")
    parser.add_argument("--loras", default=None, help="comma list of LoRA ids (default all; 'none' to skip)")
    parser.add_argument("--skip-base", action="store_true")
    parser.add_argument("--triggers-last", action="store_true",
                        help="LoRA prompts with the trigger phrases after the generic ones (world.caption)")
    parser.add_argument("--named", action="store_true",
                        help="also: each held-back combination prompted in generic words, without a LoRA")
    parser.add_argument("--variants", default=None, choices=world.CATEGORIES,
                        help="also: each generic variant of this slot prompted alone, without a LoRA")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", type=Path, default=None, help="scored results folder: report separations")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from harness.pipelines import load_pipeline

    config = OmegaConf.to_container(OmegaConf.load(args.testbed), resolve=True)
    sampling = dict(config["sampling"])
    sampling["steps"] = args.steps or sampling["steps"]
    sampling["guidance_scale"] = args.guidance if args.guidance is not None else sampling["guidance_scale"]
    scale = args.scale if args.scale is not None else sampling["lora_scale"]
    base = Path(config["model"]["base"])
    oracle = Oracle.load(base.parent / "oracle")
    pipe = load_pipeline(base, scheduler=config["model"]["scheduler"], device="cpu")
    pipe.set_progress_bar_config(disable=True)
    figures: dict = {"settings": {**sampling, "lora_scale": scale, "images": args.images}}
    started = time.time()
    print(f"toy quality: {args.images} images per measurement, {sampling}, LoRA scale {scale}")

    if args.results is not None:
        figures["separations"] = separations(args.results)
    figures["oracle"] = oracle_checks(oracle, pipe.vae, args.images * 4, seed=1)
    for name, accuracy in figures["oracle"].items():
        print(f"oracle accuracy on {name:5} renders: " + "  ".join(f"{c} {v:.3f}" for c, v in accuracy.items()))

    if not args.skip_base:
        rng = np.random.default_rng(2)
        specs = [world.sample_generic_spec(rng) for _ in range(args.images)]
        images = generate(pipe, [world.caption(spec) for spec in specs], list(range(args.images)), sampling)
        predictions = oracle.predict(images)
        per_slot = {c: float(np.mean([p[c].label == s.labels()[c] for p, s in zip(predictions, specs)]))
                    for c in world.CATEGORIES}
        every = float(np.mean([all(p[c].label == s.labels()[c] for c in world.CATEGORIES)
                               for p, s in zip(predictions, specs)]))
        mean = float(np.mean(list(per_slot.values())))
        per_attribute = {f"{c} {world.ATTRIBUTE_NAMES[c][i]}":
                         float(np.mean([p[c].value[i] == s.slot(c)[i] for p, s in zip(predictions, specs)]))
                         for c in world.CATEGORIES for i in (0, 1)}
        figures["base"] = {"per_slot": per_slot, "mean": mean, "all_slots": every, "per_attribute": per_attribute,
                           "oracle_agreement": agreement(oracle, images)}
        print("base on generic captions: " + "  ".join(f"{c} {v:.3f}" for c, v in per_slot.items())
              + f"  | mean {mean:.3f} (target >= {TARGETS['base_slot_accuracy']}) "
              + ("MET" if mean >= TARGETS["base_slot_accuracy"] else "NOT MET")
              + f" | all five right {every:.3f} | oracle members agree {figures['base']['oracle_agreement']:.3f}")
        print("  per attribute: " + "  ".join(f"{name} {value:.3f}" for name, value in per_attribute.items()))
        figures["base"]["shifted_per_slot"] = shifted_accuracy(pipe, oracle, specs, sampling)

    if args.named:
        figures["named"] = named_combinations(pipe, oracle, args.images, sampling)
    if args.variants:
        figures["variants"] = variant_accuracy(pipe, oracle, args.variants, args.images, sampling)

    lora_dir = Path(config["lora_dir"])
    wanted = [] if args.loras == "none" else args.loras.split(",") if args.loras else [c.id for c in world.CONCEPTS]
    for concept_id in wanted:
        pipe.load_lora_weights(str(lora_dir / f"{concept_id}.safetensors"), adapter_name=concept_id)
    figures["loras"] = {}
    print(f"{'lora':14} {'present':>8} {'kept':>6} {'unaided':>8}   (targets: present >= "
          f"{TARGETS['lora_present']}, kept >= {TARGETS['lora_kept']})")
    for concept_id in wanted:
        concept = world.CONCEPTS_BY_ID[concept_id]
        # the concept's own number: a LoRA gets the same prompts whichever --loras subset it is measured in
        rng = np.random.default_rng(100 + world.CONCEPTS.index(concept))
        specs = [world.concept_spec(concept_id, rng) for _ in range(args.images)]
        prompts = [world.caption(spec, concepts=(concept_id,), triggers_last=args.triggers_last) for spec in specs]
        seeds = list(range(args.images))
        pipe.set_adapters([concept_id], [scale])
        predictions = oracle.predict(generate(pipe, prompts, seeds, sampling))
        pipe.disable_lora()
        unaided = oracle.predict(generate(pipe, prompts, seeds, sampling))
        pipe.enable_lora()
        others = [c for c in world.CATEGORIES if c != concept.category]
        present = float(np.mean([p[concept.category].label == concept_id for p in predictions]))
        kept = float(np.mean([p[c].label == s.labels()[c] for p, s in zip(predictions, specs) for c in others]))
        base_rate = float(np.mean([p[concept.category].label == concept_id for p in unaided]))
        kept_per_slot = {c: float(np.mean([p[c].label == s.labels()[c] for p, s in zip(predictions, specs)]))
                         for c in others}
        figures["loras"][concept_id] = {"present": present, "kept": kept, "present_without_lora": base_rate,
                                        "kept_per_slot": kept_per_slot}
        flag = "ok" if present >= TARGETS["lora_present"] and kept >= TARGETS["lora_kept"] else "BELOW TARGET"
        print(f"{concept_id:14} {present:8.3f} {kept:6.3f} {base_rate:8.3f}   {flag:12}  kept per slot: "
              + " ".join(f"{c} {v:.2f}" for c, v in kept_per_slot.items()), flush=True)
    lora_rows = figures["loras"].values()
    if not lora_rows:
        return _finish(args, figures)
    figures["lora_summary"] = {
        "mean_present": float(np.mean([r["present"] for r in lora_rows])),
        "mean_kept": float(np.mean([r["kept"] for r in lora_rows])),
        "loras_meeting_both": sum(r["present"] >= TARGETS["lora_present"] and r["kept"] >= TARGETS["lora_kept"]
                                  for r in lora_rows),
        "loras": len(figures["loras"]),
    }
    summary = figures["lora_summary"]
    print(f"LoRAs: mean present {summary['mean_present']:.3f}, mean kept {summary['mean_kept']:.3f}, "
          f"{summary['loras_meeting_both']}/{summary['loras']} meet both targets ({time.time() - started:.0f}s)")
    return _finish(args, figures)


def _finish(args: argparse.Namespace, figures: dict) -> int:
    if args.json:
        from harness.io import atomic_write_json

        atomic_write_json(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())

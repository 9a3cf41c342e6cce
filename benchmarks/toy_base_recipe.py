"""Pilot runs of the toy base model's training recipe: ``python benchmarks/toy_base_recipe.py``.

Trains a short base model (UNet + text encoder, on the committed toy VAE) with the chosen loss options, then
prints the oracle's per-slot accuracy on 64 images from generic captions (the measure of
``benchmarks/toy_quality.py``). Used to pick ``harness.toy.build.BASE_TRAINING``; each run takes ~8 min at
800 steps of batch 64 on one thread. Example (docs/toy-world.md "Base model"):

    python benchmarks/toy_base_recipe.py --steps 800 --batch 64                       # plain
    python benchmarks/toy_base_recipe.py --steps 800 --batch 64 --snr-gamma 5 --ema   # Min-SNR + EMA
    python benchmarks/toy_base_recipe.py --steps 800 --batch 64 --snr-gamma 5 --ema --noise-offset 0.1
    python benchmarks/toy_base_recipe.py --steps 1600 --batch 32 --snr-gamma 5 --ema --noise-offset 0.1
    python benchmarks/toy_base_recipe.py --steps 4500 --batch 32 --snr-gamma 5 --ema --noise-offset 0.1 \
        --phrase-shuffle --phrase-repeat 0.25    # caption phrases at any token position (~25 min)
    python benchmarks/toy_base_recipe.py --steps 4500 --batch 32 --snr-gamma 5 --ema --noise-offset 0.1 \
        --phrase-offset 8    # the whole caption moved on by 0..8 tokens, order kept (~35 min)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import harness  # noqa: F401  (before diffusers)
import numpy as np
import torch

from harness.toy import base_model, world
from harness.toy.oracle import Oracle
from harness.toy.tokenizer import build_toy_tokenizer

sys.path.insert(0, str(Path(__file__).parent))
from toy_quality import generate, shifted_accuracy  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--testbed", type=Path, default=Path("testbed/toy"))
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--snr-gamma", type=float, default=None)
    parser.add_argument("--noise-offset", type=float, default=0.0)
    parser.add_argument("--ema", action="store_true")
    parser.add_argument("--zero-terminal-snr", action="store_true", help="rescaled betas + v-prediction")
    parser.add_argument("--attention-16", action="store_true", help="cross-attention at the 16x16 level too")
    parser.add_argument("--phrase-shuffle", action="store_true", help="shuffle caption phrases (augment_caption)")
    parser.add_argument("--phrase-repeat", type=float, default=0.0, help="repeat each caption phrase with this p")
    parser.add_argument("--phrase-offset", type=int, default=0,
                        help="put 0..N extra leading commas before each caption (augment_caption)")
    parser.add_argument("--unnamed-held-back", type=float, default=0.0,
                        help="share of training scenes showing a held-back concept, unnamed (render_pool)")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from diffusers import AutoencoderKL

    from harness.pipelines import load_pipeline

    schedule = (dict(base_model.SD15_SCHEDULE, rescale_betas_zero_snr=True, prediction_type="v_prediction")
                if args.zero_terminal_snr else None)
    vae = AutoencoderKL.from_pretrained(args.testbed / "base" / "vae").eval()
    tokenizer = build_toy_tokenizer(world.vocabulary(), model_max_length=base_model.PROMPT_TOKENS)  # as the build
    unet, text_encoder = base_model.train_unet(
        base_model.render_pool(8192, 0, args.unnamed_held_back), vae, tokenizer, args.steps, args.batch,
        lr=args.lr, seed=0,
        snr_gamma=args.snr_gamma, noise_offset=args.noise_offset, ema=args.ema, schedule=schedule,
        attention_at_16=args.attention_16, phrase_shuffle=args.phrase_shuffle, phrase_repeat=args.phrase_repeat,
        phrase_offset=args.phrase_offset)
    with tempfile.TemporaryDirectory() as folder:
        base_model.save_pipeline(folder, vae, unet, text_encoder, tokenizer, schedule)
        pipe = load_pipeline(folder, scheduler="dpmsolver++", device="cpu")
        pipe.set_progress_bar_config(disable=True)
        rng = np.random.default_rng(2)
        specs = [world.sample_generic_spec(rng) for _ in range(args.images)]
        sampling = dict(steps=20, guidance_scale=7.5, height=world.SIZE, width=world.SIZE)
        images = generate(pipe, [world.caption(spec) for spec in specs], list(range(args.images)), sampling)
        oracle = Oracle.load(args.testbed / "oracle")
        shifted_accuracy(pipe, oracle, specs, sampling)
    predictions = oracle.predict(images)
    per_slot = {c: float(np.mean([p[c].label == s.labels()[c] for p, s in zip(predictions, specs)]))
                for c in world.CATEGORIES}
    print(f"{vars(args)}\nper-slot accuracy: " + "  ".join(f"{c} {v:.3f}" for c, v in per_slot.items())
          + f"  | mean {np.mean(list(per_slot.values())):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

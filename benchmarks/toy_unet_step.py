"""Time one training step of the toy base model: ``python benchmarks/toy_unet_step.py [--bf16] [--compile]``
(``--heads 8 --tokens 77``: the model of before 2026-12-05).

One step = text encoder + UNet forward, MSE loss, backward, AdamW, at the build's batch (32) on 16x16x4
latents, the base phase's unit of work (docs/toy-world.md "Build time"). Prints the median over ``--steps`` timed steps
(after 3 untimed ones) for plain fp32 and, when asked, bf16 autocast and ``torch.compile`` (its first step,
the compile, is printed apart). Used to check whether a cheaper step could bring the build under 30 min.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import harness  # noqa: F401  (before diffusers)
import torch

from harness.toy import base_model, world
from harness.toy.tokenizer import build_toy_tokenizer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bf16", action="store_true", help="also time bf16 autocast")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(unet)")
    parser.add_argument("--heads", type=int, default=base_model.UNET_HEADS, help="attention heads (the build's "
                        f"{base_model.UNET_HEADS}; 8 until 2026-12-05)")
    parser.add_argument("--tokens", type=int, default=base_model.PROMPT_TOKENS, help="tokenizer context (the "
                        f"build's {base_model.PROMPT_TOKENS}; 77 until 2026-12-05)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokenizer = build_toy_tokenizer(world.vocabulary(), model_max_length=args.tokens)
    unet = base_model.build_unet(heads=args.heads)
    text_encoder = base_model.build_text_encoder(len(tokenizer), tokenizer)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    ids = base_model.encode_captions(tokenizer, ["a picture, red circle figure, wearing black stripes"] * args.batch)
    latents, timesteps = torch.randn(args.batch, 4, 16, 16), torch.randint(0, 1000, (args.batch,))

    def step(model, bf16: bool) -> float:
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            prediction = model(latents, timesteps, encoder_hidden_states=text_encoder(ids)[0]).sample
            loss = torch.nn.functional.mse_loss(prediction.float(), latents)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - started

    modes = [("fp32", unet, False)] + [("bf16 autocast", unet, True)] * args.bf16
    modes += [("torch.compile", torch.compile(unet), False)] * args.compile
    for name, model, bf16 in modes:
        first = step(model, bf16)
        for _ in range(2):
            step(model, bf16)
        median = statistics.median(step(model, bf16) for _ in range(args.steps))
        print(f"{name:14} {median:.3f} s/step median (batch {args.batch}, {args.threads} thread(s), {args.heads} heads, "
              f"{args.tokens} tokens; first step "
              f"{first:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

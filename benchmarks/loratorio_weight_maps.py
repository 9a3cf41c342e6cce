"""LoRAtorio's spatial weights for one image, as a picture: ``python benchmarks/loratorio_weight_maps.py``.

Generates one image of a testbed set with ``loratorio`` and writes a PNG with the image on the left and the
patch weights Omega on the right: one row per step (every ``--every``-th), one column per LoRA of the set,
black = 0, white = 1 (each patch's column values sum to 1). Patches where a LoRA moves the prediction furthest
from the base model's are the ones it wins. Any method setting can be passed, e.g. ``--set patch_size=4``.

    python benchmarks/loratorio_weight_maps.py --testbed toy --set-id n3_character_1+clothing_1+style_1 \\
        --out /tmp/loratorio_maps.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import harness  # noqa: F401  (before diffusers)
from omegaconf import OmegaConf
from PIL import Image

from harness.config import load_testbed_config, testbed_config
from harness.lora import AdapterCache
from harness.methods import METHODS, ImageContext
from harness.methods.loratorio import weight_map_picture
from harness.paths import local_or_hub
from harness.pipelines import load_pipeline
from harness.runner import image_seed
from harness.sampler import Sampler, SamplingSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--testbed", default="toy")
    parser.add_argument("--set-id", default=None, help="a set id (`python -m harness sets toy`); default: the first N=3")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--every", type=int, default=1, help="show every k-th step")
    parser.add_argument("--set", action="append", default=[], help="a method setting, key=value (repeatable)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("loratorio_weight_maps.png"))
    args = parser.parse_args(argv)

    testbed = load_testbed_config(testbed_config(args.testbed))
    sets = testbed.sets()
    composition = next((s for s in sets if s.id == args.set_id), None) if args.set_id else \
        next(s for s in sets if s.n == 3)
    if composition is None:
        parser.error(f"no set {args.set_id!r} in {args.testbed}; list them with `python -m harness sets {args.testbed}`")
    settings = OmegaConf.to_container(OmegaConf.from_dotlist(args.set))
    method = METHODS.get("loratorio")(**settings)
    model, sampling = testbed.model, testbed.sampling
    pipe = load_pipeline(local_or_hub(model["base"]), vae=local_or_hub(model.get("vae")),
                         scheduler=model.get("scheduler", "dpmsolver++"), dtype=model.get("dtype", "float32"),
                         device=args.device)
    AdapterCache(pipe).ensure(list(composition.loras))
    sampler = Sampler(pipe)
    steps = SamplingSettings(int(sampling["steps"]), float(sampling["guidance_scale"]), int(sampling["height"]),
                             int(sampling["width"]))
    context = ImageContext(list(composition.loras), float(sampling.get("lora_scale", 0.8)),
                           testbed.prompt_for(composition), steps.steps, sampler.embed_without_loras)
    image, plan = sampler.generate(method, context, testbed.negative_prompt, steps,
                                   image_seed(args.seed, composition.id))
    maps = weight_map_picture(method.weight_maps, [lora.id for lora in composition.loras], every=args.every).convert("RGB")
    shown = image.resize((maps.height, maps.height), Image.NEAREST) if image.height < maps.height else image
    picture = Image.new("RGB", (shown.width + maps.width, max(shown.height, maps.height)), "white")
    picture.paste(shown, (0, 0))
    picture.paste(maps, (shown.width, 0))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(args.out)
    print(f"{composition.id} seed {args.seed}: mean weight per LoRA at the first and last step "
          f"{plan.notes['mean_patch_weights'][0]} / {plan.notes['mean_patch_weights'][-1]} -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

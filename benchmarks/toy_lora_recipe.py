"""Try other training settings for some toy LoRAs: ``python benchmarks/toy_lora_recipe.py --loras style_2``.

Retrains the listed LoRAs with the build's recipe (``harness.toy.lora_recipe``: each option left out keeps the
recipe's value) but the chosen steps / learning rate / rank / loss options, into a scratch copy of the testbed (the committed LoRAs are not touched), then
measures them with ``benchmarks/toy_quality.py`` (concept present, other slots kept). Each LoRA takes
~0.1 s per step on one thread. Examples (docs/toy-world.md "LoRA recipe"):

    python benchmarks/toy_lora_recipe.py --loras clothing_2,style_2,object_2 --steps 800
    python benchmarks/toy_lora_recipe.py --loras clothing_2,style_2,object_2 --steps 1200
    python benchmarks/toy_lora_recipe.py --loras clothing_2,style_2,object_2 --lr 4e-3
    python benchmarks/toy_lora_recipe.py --loras clothing_2,style_2,object_2 --rank 16
    python benchmarks/toy_lora_recipe.py --loras clothing_2,style_2,object_2 --examples 288
    python benchmarks/toy_lora_recipe.py --loras clothing_2,style_2,object_2 --batch 8
    python benchmarks/toy_lora_recipe.py --loras clothing_2,style_2,object_2 --no-text-encoder
    python benchmarks/toy_lora_recipe.py --loras clothing_2,style_2,object_2 --snr-gamma 0
    python benchmarks/toy_lora_recipe.py --loras object_2 --steps 800 --scale 1.0   # and another LoRA scale

Trainer options (docs/toy-world.md "Trainer options that did not help", all with ``--scale 1.0``):
``--te-lr 1e-2`` (text-encoder LoRA rate), ``--loraplus 16`` (LoRA+), ``--timesteps 300,1000`` (timestep range),
``--warmup 100`` (rate warm-up), ``--drop-slot 0`` / ``--drop-caption 0.1`` (captions), ``--preservation 96``
(generic renders mixed in), ``--text-targets q_proj,k_proj,v_proj,out_proj,fc1,fc2,token_embedding`` (a LoRA on
the token embeddings too), ``--mask-floor 0.1`` (masked loss: the concept's slot region weighs 1, the rest 0.1;
``none``: plain loss; by default the build's choice, masked for objects only), ``--unet-targets`` (other UNet
modules), ``--triggers-last`` (trigger phrases after the generic ones, in training captions and measured prompts),
``--uncond-anchor W`` (the empty prompt's prediction held to the base model's; the build uses 1, 0 turns it off),
``--guidance G`` (measure at another CFG). Since 2026-12-05 a LoRA is measured on the same prompts whichever
``--loras`` list it is in (before, the prompts followed the list's order).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import harness  # noqa: F401  (before diffusers)
from omegaconf import OmegaConf

from harness.toy import build, lora_recipe, world

sys.path.insert(0, str(Path(__file__).parent))
import toy_quality  # noqa: E402


BUILD_RECIPE = "build"  # --mask-floor's default: the recipe's choice for the concept's category


def _mask_floor(text: str) -> float | str | None:
    if text == BUILD_RECIPE:  # argparse passes the default through here too
        return text
    if text.lower() == "none":
        return None
    try:
        floor = float(text)
    except ValueError:
        floor = -1.0
    if not 0 <= floor <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a weight in [0, 1] (e.g. 0.1) or 'none'")
    return floor


def _timesteps(parser: argparse.ArgumentParser, text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        low, high = (int(part) for part in text.split(","))
    except ValueError:
        parser.error(f"--timesteps {text!r}: expected LOW,HIGH, e.g. 300,1000")
    return low, high


def _trainer_overrides(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    """The LoraTrainingConfig fields the command line changes from the recipe's (the options given)."""
    given = {
        "steps": args.steps or None, "learning_rate": args.lr, "rank": args.rank,
        "snr_gamma": args.snr_gamma,
        "noise_offset": args.noise_offset, "text_encoder_learning_rate": args.te_lr,
        "timestep_range": _timesteps(parser, args.timesteps), "warmup_steps": args.warmup,
        "loraplus_lr_ratio": args.loraplus, "uncond_anchor": args.uncond_anchor,
        "unet_target_modules": args.unet_targets.split(",") if args.unet_targets else None,
        "text_encoder_target_modules": args.text_targets.split(",") if args.text_targets else None,
        "train_text_encoder": False if args.no_text_encoder else None,
        "alpha_mask": None if args.mask_floor == BUILD_RECIPE else args.mask_floor is not None,
    }
    overrides = {name: value for name, value in given.items() if value is not None}
    if overrides.get("snr_gamma") == 0:  # --snr-gamma 0 turns Min-SNR off
        overrides["snr_gamma"] = None
    return overrides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loras", required=True, help="comma list of LoRA ids, e.g. clothing_2,object_2")
    parser.add_argument("--testbed", default="conf/testbed/toy.yaml")
    parser.add_argument("--work", type=Path, default=Path("results/toy_lora_recipe"),
                        help="scratch copy of the testbed (LoRAs, config) written here")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps (default: the recipe's for each LoRA, lora_recipe.lora_steps: 400, "
                             "clothing 3200)")
    parser.add_argument("--lr", type=float, default=None,
                        help=f"learning rate (default: the recipe's, {lora_recipe.LORA_LEARNING_RATE:g})")
    parser.add_argument("--rank", type=int, default=None,
                        help=f"LoRA rank (default: the recipe's, {lora_recipe.LORA_RANK})")
    parser.add_argument("--examples", type=int, default=build.Budget.lora_examples)
    parser.add_argument("--batch", type=int, default=build.Budget.lora_batch)
    parser.add_argument("--snr-gamma", type=float, default=None,
                        help=f"Min-SNR weighting of the loss; 0 for none (default: the recipe's, "
                             f"{lora_recipe.LORA_LOSS['snr_gamma']:g})")
    parser.add_argument("--noise-offset", type=float, default=None,
                        help=f"offset noise (default: the recipe's, {lora_recipe.LORA_LOSS['noise_offset']:g})")
    parser.add_argument("--no-text-encoder", action="store_true", help="a LoRA on the UNet only")
    parser.add_argument("--te-lr", type=float, default=None, help="text-encoder LoRA learning rate (default --lr)")
    parser.add_argument("--timesteps", default=None, help="LOW,HIGH: train only on timesteps in [LOW, HIGH)")
    parser.add_argument("--preservation", type=int, default=0,
                        help="extra generic renders with generic captions (prior preservation)")
    parser.add_argument("--warmup", type=int, default=None, help="linear learning-rate warm-up steps")
    parser.add_argument("--triggers-last", action="store_true",
                        help="captions and measured prompts with the trigger phrases after the generic ones")
    parser.add_argument("--unet-targets", default=None,
                        help="comma list of UNet modules for the LoRA (default: the recipe's, "
                             f"{','.join(lora_recipe.LORA_UNET_TARGETS)})")
    parser.add_argument("--mask-floor", type=_mask_floor, default=BUILD_RECIPE,
                        help="masked loss: weight 1 on the concept's slot region, this weight elsewhere; 'none' "
                             "for a plain loss (default: the recipe's, masked for "
                             f"{sorted(lora_recipe.LORA_MASK_FLOOR)})")
    parser.add_argument("--drop-caption", type=float, default=0.0, help="share of empty captions")
    parser.add_argument("--text-targets", default=None,
                        help="comma list of text-encoder LoRA targets (default: the recipe's, "
                             f"{','.join(lora_recipe.LORA_TEXT_TARGETS)}); add token_embedding for a LoRA on the "
                             "token embeddings")
    parser.add_argument("--loraplus", type=float, default=None, help="LoRA+ ratio of B to A learning rates (e.g. 16)")
    parser.add_argument("--drop-slot", type=float, default=0.25,
                        help="probability that a caption leaves out a generic slot phrase")
    parser.add_argument("--uncond-anchor", type=float, default=None,
                        help="weight of the term that holds the empty prompt's prediction to the base model's "
                             "(train_lora's uncond_anchor; 0 = off; default: the recipe's, "
                             f"{lora_recipe.LORA_UNCOND_ANCHOR:g})")
    parser.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the testbed's)")
    parser.add_argument("--images", type=int, default=48, help="images per measurement")
    parser.add_argument("--scale", type=float, default=None, help="LoRA scale (default: the testbed's)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads while measuring (toy_quality --threads)")
    args = parser.parse_args(argv)
    ids = args.loras.split(",")
    unknown = [i for i in ids if i not in world.CONCEPTS_BY_ID]
    if unknown:
        parser.error(f"unknown LoRA id(s) {unknown}; the toy LoRAs are {list(world.CONCEPTS_BY_ID)}")
    overrides = _trainer_overrides(parser, args)

    config = OmegaConf.load(args.testbed)
    lora_dir = args.work / "lora"
    if lora_dir.resolve() == Path(config.lora_dir).resolve():
        parser.error(f"--work {args.work} would overwrite the testbed's own LoRAs in {config.lora_dir}; "
                     "pick a scratch folder (default results/toy_lora_recipe)")
    lora_dir.mkdir(parents=True, exist_ok=True)
    for concept_id in ids:
        target = lora_dir / f"{concept_id}.safetensors"
        target.unlink(missing_ok=True)
        training = replace(lora_recipe.training_config(concept_id, build.Budget().lora_steps, args.batch), **overrides)
        mask_floor = None if args.mask_floor in (BUILD_RECIPE, None) else args.mask_floor
        print(f"[lora] {concept_id}: {training.steps} steps, lr {training.learning_rate:g}, rank {training.rank}, "
              f"{args.examples} renders")
        lora_recipe.train_concept_lora(Path(config.model.base), concept_id, target, training, examples=args.examples,
                                       drop_slot=args.drop_slot, drop_caption=args.drop_caption,
                                       preservation=args.preservation, mask_floor=mask_floor,
                                       triggers_last=args.triggers_last)
    for other in Path(config.lora_dir).glob("*.safetensors"):  # the others as built, so ids all resolve
        if other.stem not in ids:
            shutil.copyfile(other, lora_dir / other.name)
    config.lora_dir = str(lora_dir)
    scratch_config = args.work / "testbed.yaml"
    OmegaConf.save(config, scratch_config)
    measure = ["--testbed", str(scratch_config), "--images", str(args.images), "--skip-base", "--loras", args.loras,
               "--threads", str(args.threads)]
    measure += ["--triggers-last"] if args.triggers_last else []
    measure += ["--guidance", str(args.guidance)] if args.guidance is not None else []
    return toy_quality.main(measure + (["--scale", str(args.scale)] if args.scale is not None else []))


if __name__ == "__main__":
    raise SystemExit(main())

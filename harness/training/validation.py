"""Validation images during LoRA training: a few prompts rendered at every save, and one grid of them all.

At each save (``--save-every``) and at the end, every validation prompt is rendered once with the adapter as it
is at that step, always from the same seed, so the rows of ``<out>-validation.png`` (one per saved step) differ
only by what the LoRA has learnt. The images are kept as ``<out>-validation/step<N>_p<i>.png``; the grid is
redrawn from them after each save, so a resumed run's grid also shows the steps of the run before.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw, ImageFont

from harness.io import atomic_write

CELL = 128  # pixels per image in the grid (toy 32 px images are upscaled without smoothing)
LABEL_WIDTH = 110
HEADER = 22
_IMAGE_NAME = re.compile(r"^step(?P<step>\d+)_p(?P<prompt>\d+)\.png$")


def validation_folder(output_path: str | Path) -> Path:
    output_path = Path(output_path)
    return output_path.with_name(f"{output_path.stem}-validation")


def grid_path(output_path: str | Path) -> Path:
    output_path = Path(output_path)
    return output_path.with_name(f"{output_path.stem}-validation.png")


@torch.no_grad()
def render_validation(pipe: Any, modules: list[torch.nn.Module], prompts: list[str], step: int, folder: Path,
                      *, seed: int, sampling_steps: int, guidance: float, resolution: int) -> list[Path]:
    """Render each prompt with the pipeline's current adapter (DPM-Solver++, ``seed``); save and return them.

    The trained ``modules`` are put in eval mode and back; the global torch RNG state is restored, so training
    draws the same numbers with or without validation."""
    from harness.pipelines import build_scheduler

    rng_state = torch.get_rng_state()
    training = [module.training for module in modules]
    scheduler = pipe.scheduler
    pipe.scheduler = build_scheduler(scheduler, "dpmsolver++")
    pipe.set_progress_bar_config(disable=True)
    written = []
    try:
        for module in modules:
            module.eval()
        for index, prompt in enumerate(prompts):
            generator = torch.Generator(device="cpu").manual_seed(seed)
            image = pipe(prompt, num_inference_steps=sampling_steps, guidance_scale=guidance, height=resolution,
                         width=resolution, generator=generator).images[0]
            path = folder / f"step{step:06d}_p{index}.png"
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
            written.append(path)
    finally:
        pipe.scheduler = scheduler
        for module, was_training in zip(modules, training):
            module.train(was_training)
        torch.set_rng_state(rng_state)
    return written


def write_validation_grid(folder: Path, prompts: list[str], out: Path) -> Path | None:
    """Rows: the saved steps; columns: the prompts (the first 40 characters as the header)."""
    found: dict[int, dict[int, Path]] = {}
    for path in folder.glob("step*_p*.png") if folder.is_dir() else []:
        match = _IMAGE_NAME.match(path.name)
        if match:
            found.setdefault(int(match["step"]), {})[int(match["prompt"])] = path
    if not found:
        return None
    font = ImageFont.load_default(size=12)
    width = LABEL_WIDTH + CELL * len(prompts)
    canvas = Image.new("RGB", (width, HEADER + CELL * len(found)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for column, prompt in enumerate(prompts):
        text = prompt if len(prompt) <= 20 else prompt[:19] + "…"
        draw.text((LABEL_WIDTH + column * CELL + 3, 5), text, fill=(0, 0, 0), font=font)
    for row, step in enumerate(sorted(found)):
        top = HEADER + row * CELL
        draw.text((6, top + CELL // 2 - 6), f"step {step}", fill=(0, 0, 0), font=font)
        for column in range(len(prompts)):
            path = found[step].get(column)
            if path is None:
                continue
            with Image.open(path) as image:
                scale = (CELL - 4) / max(image.size)
                size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
                cell = image.convert("RGB").resize(size, Image.NEAREST if scale >= 1 else Image.LANCZOS)
            canvas.paste(cell, (LABEL_WIDTH + column * CELL + 2, top + 2))
    atomic_write(out, lambda tmp: canvas.save(tmp, format="PNG"))
    return out

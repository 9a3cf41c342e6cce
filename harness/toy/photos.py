"""Toy "photos" of one toy character, for the identity-LoRA walkthrough: what a user's photo folder looks like.

Each good photo is a world render of the character (``world.concept_spec``) scaled up 2-4x and pasted at a random
place on a larger canvas of random clutter, so a centre crop would often miss the character. The toy world has no
face detector: every photo carries the character's known box (``world``'s figure box, scaled and moved with the
render) as JSON in the PNG text chunk ``faces`` (``[[x0, y0, x1, y1], ...]``), which ``dataset prepare
--detector box`` reads in place of detection, as the ``arcface`` metric's ``detector: box`` does. A few bad photos
are added: no character, two characters, too small, a near-duplicate and an unreadable file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from harness.toy import world

FACES_KEY = "faces"  # PNG text chunk with the known boxes (the stand-in for a face detector)
CHARACTER_BOX = (6, 9, 26, 29)  # the figure's box in a 32 px render (conf/metric/arcface.yaml boxes.character)


def _clutter(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A canvas of random grey-ish rectangles: busy, but nothing like a toy character."""
    canvas = np.full((height, width, 3), rng.integers(60, 200, 3), dtype=np.uint8)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(6, 40)), y0 + int(rng.integers(6, 40))
        canvas[y0:y1, x0:x1] = rng.integers(40, 220) + rng.integers(-15, 16, 3)
    return Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))


def _save(image: Image.Image, path: Path, boxes: list[list[int]]) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_text(FACES_KEY, json.dumps(boxes))
    image.save(path, format="PNG", pnginfo=info)
    return path


def _paste_render(canvas: Image.Image, render: np.ndarray, scale: float, at: tuple[int, int]) -> list[int]:
    size = max(1, round(world.SIZE * scale))
    canvas.paste(Image.fromarray(render).resize((size, size), Image.NEAREST), at)
    x0, y0, x1, y1 = CHARACTER_BOX
    return [round(at[0] + x0 * scale), round(at[1] + y0 * scale), round(at[0] + x1 * scale),
            round(at[1] + y1 * scale)]


def write_toy_photos(out: str | Path, concept_id: str = "character_1", count: int = 12, seed: int = 0,
                     bad: bool = True) -> list[Path]:
    """``count`` good photos of ``concept_id`` (and, with ``bad``, the five bad ones) in ``out``; returns them."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = []
    for index in range(count):
        scale = int(rng.integers(2, 5))
        width, height = world.SIZE * scale + int(rng.integers(8, 80)), world.SIZE * scale + int(rng.integers(8, 80))
        canvas = _clutter(rng, width, height)
        at = (int(rng.integers(0, width - world.SIZE * scale + 1)), int(rng.integers(0, height - world.SIZE * scale + 1)))
        box = _paste_render(canvas, world.render(world.concept_spec(concept_id, rng), rng), scale, at)
        written.append(_save(canvas, out / f"photo_{index:02d}.png", [box]))
    if not bad:
        return written
    # no character: a scene without it
    canvas = _clutter(rng, 120, 100)
    canvas.paste(Image.fromarray(world.render(world.sample_generic_spec(rng), rng)).resize((64, 64)), (30, 20))
    written.append(_save(canvas, out / "bad_no_face.png", []))
    # two characters: the one of the LoRA large, another character small
    canvas = _clutter(rng, 200, 130)
    big = _paste_render(canvas, world.render(world.concept_spec(concept_id, rng), rng), 3, (4, 20))
    other = next(c.id for c in world.CONCEPTS if c.category == "character" and c.id != concept_id)
    small = _paste_render(canvas, world.render(world.concept_spec(other, rng), rng), 2, (130, 40))
    written.append(_save(canvas, out / "bad_two_faces.png", [small, big]))
    # too small: the character 12 px wide in a large photo
    canvas = _clutter(rng, 160, 120)
    tiny = _paste_render(canvas, world.render(world.concept_spec(concept_id, rng), rng), 0.375, (70, 50))
    written.append(_save(canvas, out / "bad_too_small.png", [tiny]))
    # a near-duplicate: the first photo saved again, slightly smaller (its box scaled with it)
    with Image.open(written[0]) as first:
        boxes = json.loads(first.info[FACES_KEY])
        smaller = first.resize((round(first.width * 0.9), round(first.height * 0.9)), Image.BICUBIC)
    written.append(_save(smaller, out / "photo_00_copy.png", [[round(c * 0.9) for c in box] for box in boxes]))
    # unreadable: a truncated JPEG
    (out / "bad_unreadable.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    written.append(out / "bad_unreadable.jpg")
    return written

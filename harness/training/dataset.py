"""Training examples: a folder of images with kohya-style captions, resized and centre-cropped.

Kohya convention: ``img.png`` is captioned by ``img.txt`` next to it. A trigger phrase can caption every
image (no caption files), or be put in front of each caption that lacks it. ``example_problems`` lists what
would otherwise pass silently (a caption without the trigger, an image much smaller than the training
resolution or far from square); ``train-lora`` prints them as warnings, or refuses with ``--strict``.
A folder written by ``python -m harness dataset prepare`` names its trigger in ``dataset.json``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from PIL import Image, ImageOps

from harness.io import IMAGE_SUFFIXES
from harness.training import TrainingInputError

DATASET_INFO_FILE = "dataset.json"  # written by `dataset prepare`: {"trigger": ..., ...}
MAX_UPSCALE = 2.0  # an image whose shorter side is below resolution / MAX_UPSCALE is blurred by the resize
MAX_ASPECT = 1.5  # a longer side above MAX_ASPECT x the shorter loses a third of the image to the centre crop


def load_examples(
    folder: str | Path,
    trigger: str | None = None,
    caption_extension: str = ".txt",
    caption_template: str = "{trigger}",
) -> list[tuple[Path, str]]:
    """(image path, caption) for every image in ``folder``, sorted by file name.

    An image's caption is its ``<stem><caption_extension>`` file when present, with ``trigger`` put in
    front when the caption does not already contain it; otherwise ``caption_template`` filled with the
    trigger. An image with neither a caption file nor a trigger is an error.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise TrainingInputError(
            f"The image folder {str(folder)!r} does not exist or is not a folder. Fix: pass a folder of "
            f"training images ({', '.join(IMAGE_SUFFIXES)}), each optionally captioned by a "
            f"same-named {caption_extension} file."
        )
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise TrainingInputError(
            f"The image folder {str(folder)!r} holds no images. Fix: put the training images "
            f"({', '.join(IMAGE_SUFFIXES)}) directly in that folder (sub-folders are not searched)."
        )
    examples = []
    for image in images:
        caption_file = image.with_suffix(caption_extension)
        if caption_file.is_file():
            caption = " ".join(caption_file.read_text(encoding="utf-8").split())
            if trigger and trigger not in caption:
                caption = f"{trigger}, {caption}" if caption else trigger
        elif trigger:
            caption = caption_template.format(trigger=trigger)
        else:
            raise TrainingInputError(
                f"The image {str(image)!r} has no caption file {caption_file.name!r} and no trigger phrase "
                "was given. Fix: add the caption file, or pass a trigger phrase (--trigger) to caption "
                "every image."
            )
        examples.append((image, caption))
    return examples


def dataset_trigger(folder: str | Path) -> str | None:
    """The trigger named by the folder's ``dataset.json`` (a prepared dataset), else None."""
    path = Path(folder).expanduser() / DATASET_INFO_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("trigger") or None
    except (OSError, ValueError, AttributeError):
        return None


def first_phrase(caption: str) -> str:
    return caption.split(",")[0].strip()


def example_problems(examples: list[tuple[Path, str]], resolution: int, trigger: str | None) -> list[str]:
    """What is wrong but would train anyway: captions without the trigger (``trigger``, or when None the
    first phrase most captions share), images the resize blurs or the centre crop cuts. One line each."""
    problems = []
    expected = trigger
    if expected is None and examples:
        phrase, count = Counter(first_phrase(caption) for _, caption in examples).most_common(1)[0]
        if phrase and count >= max(2, len(examples) / 2):
            expected = phrase
        elif len(examples) > 1:
            problems.append("no trigger was given and the captions share no first phrase, so no word is sure "
                            "to call this LoRA. Fix: pass --trigger WORD, or start every caption with it")
    if expected is not None:
        lacking = [image.name for image, caption in examples if expected not in caption]
        if lacking:
            problems.append(f"{len(lacking)} caption(s) lack the trigger {expected!r}: {', '.join(lacking[:8])}"
                            f"{' ...' if len(lacking) > 8 else ''}. Fix: add it to those caption files, or pass "
                            "--trigger to put it in front")
    for image, _ in examples:
        try:
            with Image.open(image) as opened:
                width, height = opened.size
        except (OSError, ValueError, Image.DecompressionBombError):
            continue  # reported as unreadable when training opens it
        if min(width, height) * MAX_UPSCALE < resolution:
            problems.append(f"{image.name} is {width}x{height}: upscaled {resolution / min(width, height):.1f}x "
                            f"to the training resolution {resolution} (blurred). Fix: use a larger image, or "
                            "`python -m harness dataset prepare` (it rejects photos that are too small)")
        elif max(width, height) > MAX_ASPECT * min(width, height):
            kept = min(width, height) / max(width, height)
            problems.append(f"{image.name} is {width}x{height}: the centre crop keeps {kept:.0%} of it. Fix: crop "
                            "it around the subject (`python -m harness dataset prepare` does)")
    return problems


def open_image(image: Image.Image | str | Path) -> Image.Image:
    """The image as stored (upright by its EXIF orientation); a file that cannot be read is a
    TrainingInputError naming it."""
    if isinstance(image, Image.Image):
        return image
    try:
        with Image.open(image) as opened:
            return ImageOps.exif_transpose(opened).copy()
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise TrainingInputError(
            f"Could not read the training image {str(image)!r} ({type(error).__name__}: {error}). "
            "Fix: replace or remove that file (it must be a readable PNG/JPEG/WebP/BMP image)."
        ) from error


def open_rgb(image: Image.Image | str | Path) -> Image.Image:
    """The image as RGB (see ``open_image``)."""
    return open_image(image).convert("RGB")


def has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info


def alpha_channel(image: Image.Image) -> Image.Image:
    """The image's alpha channel as an "L" image (255 = opaque); an image without one is fully opaque."""
    if not has_alpha(image):
        return Image.new("L", image.size, 255)
    return image.convert("RGBA").getchannel("A")


def resize_and_center_crop(image: Image.Image, resolution: int) -> Image.Image:
    """Resize so the shorter side is ``resolution``, then crop the centre square.

    No random crop or flip by default: identity LoRAs care about asymmetry (a parting, a logo).
    """
    width, height = image.size
    scale = resolution / min(width, height)
    if (width, height) != (resolution, resolution):
        size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
    width, height = image.size
    left, top = (width - resolution) // 2, (height - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))

"""``python -m harness dataset prepare PHOTOS --trigger WORD --out DATASET``: photos of one person -> a training set.

For every photo (sorted by name; PHOTOS is only read): open it (unreadable -> rejected), find the face, crop a
square around it and resize it to the training resolution, and write ``DATASET/<name>.png`` with its caption
``<name>.txt`` (the trigger first, then the photo's own caption file's text, or ``--caption-template``). A photo is
rejected, with the reason in the report, when it has no face, several faces (with ``--several-faces reject``; the
default keeps the largest), a face crop under half the resolution (``too small``: it would be upscaled more than 2x),
or when it is a near-duplicate of a photo already kept (dHash within ``--duplicate-distance`` bits).

Face detection is the ``arcface`` metric's: its settings come from ``conf/metric/arcface.yaml`` (``--root``, ``--pack``
and ``--detector`` override them) and the model is loaded by ``harness.metrics.backbones.load_face_analysis`` from a
local insightface pack (``buffalo_l``). ``--detector box`` reads known boxes from each photo instead (PNG text chunk
``faces``): the toy world's stand-in, as its pack has no detector (``harness.toy.photos`` writes the boxes).
``--subject`` keeps the whole photo instead, resized into an aspect-ratio bucket (no face wanted).

The report (``DATASET/_prepare/``, a sub-folder, so training does not read it): ``report.csv`` (one row per photo:
kept or rejected and why, size, face box, crop size, upscale, caption), ``report.md`` (the same as a table, plus a
summary of the photo sizes) and ``contact_sheet.png`` (kept crops and rejected photos, labelled).
``DATASET/dataset.json`` names the trigger, which ``train-lora`` then checks every caption for.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from harness.config import metric_config
from harness.io import IMAGE_SUFFIXES, atomic_write, atomic_write_json, atomic_write_text
from harness.metrics.backbones import ModelUnavailable
from harness.prompts import remove_phrases
from harness.training.dataset import DATASET_INFO_FILE, MAX_UPSCALE

REPORT_DIR = "_prepare"
FACES_KEY = "faces"  # the PNG text chunk ``--detector box`` reads (harness.toy.photos writes it)
SEVERAL_FACES = ("largest", "reject")
HASH_BITS = 64


class PrepareError(ValueError):
    """Bad input to ``dataset prepare``; the message names the thing and the fix."""


# ---- face detection: one interface, two detectors ------------------------------------------------------------
@dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in photo pixels
    score: float = 1.0

    @property
    def side(self) -> float:
        return max(self.box[2] - self.box[0], self.box[3] - self.box[1])


class FaceDetector(Protocol):
    def detect(self, image: Image.Image, info: dict[str, Any]) -> list[Face]: ...


class InsightfaceDetector:
    """The ``arcface`` metric's detector: insightface ``FaceAnalysis`` from a local pack (e.g. buffalo_l)."""

    def __init__(self, root: str, pack: str, providers: list[str] | None = None, det_size: int = 640,
                 det_thresh: float = 0.5) -> None:
        from harness.metrics.backbones import load_face_analysis

        self.app = load_face_analysis(str(root), pack, tuple(providers or ["CPUExecutionProvider"]), int(det_size),
                                      float(det_thresh))

    def detect(self, image: Image.Image, info: dict[str, Any]) -> list[Face]:
        from harness.metrics.arcface import to_bgr

        return [Face(tuple(float(v) for v in face.bbox), float(face.det_score)) for face in self.app.get(to_bgr(image))]


class BoxDetector:
    """Known boxes stored in the photo (PNG text chunk ``faces``: ``[[x0, y0, x1, y1], ...]``), as the arcface
    metric's ``detector: box``: the toy world's stand-in for a face detector. A photo without the chunk has none."""

    def detect(self, image: Image.Image, info: dict[str, Any]) -> list[Face]:
        try:
            boxes = json.loads(info.get(FACES_KEY, "[]"))
        except (TypeError, ValueError):
            return []
        return [Face(tuple(float(v) for v in box)) for box in boxes]


def build_detector(settings: dict[str, Any]) -> FaceDetector:
    """The detector the arcface settings name (``detector: insightface`` or ``box``)."""
    if settings.get("detector") == "box":
        return BoxDetector()
    return InsightfaceDetector(settings["root"], settings["pack"], settings.get("providers"),
                               settings.get("det_size", 640), settings.get("det_thresh", 0.5))


# ---- one photo -----------------------------------------------------------------------------------------------
@dataclass
class PrepareSettings:
    trigger: str
    resolution: int = 512
    subject: bool = False  # keep the whole photo in an aspect-ratio bucket, no face detection
    margin: float = 0.6  # crop side = face side x (1 + 2 margin)
    face_y: float = 0.45  # where the face centre sits in the crop, from the top (0.5: centred)
    several_faces: str = "largest"
    duplicate_distance: int = 4  # dHash bits: at most this many differ -> near-duplicate
    caption_template: str = "{trigger}"
    caption_extension: str = ".txt"

    def __post_init__(self) -> None:
        problems = []
        if not self.trigger.strip():
            problems.append("--trigger is empty: give the word that will call the LoRA (e.g. zqxperson)")
        if self.resolution < 8 or self.resolution % 8:
            problems.append(f"--resolution must be a positive multiple of 8 (got {self.resolution})")
        if self.several_faces not in SEVERAL_FACES:
            problems.append(f"--several-faces must be one of {', '.join(SEVERAL_FACES)} (got {self.several_faces!r})")
        if self.margin < 0 or not 0 <= self.face_y <= 1:
            problems.append(f"--margin must be >= 0 and --face-y in [0, 1] (got {self.margin}, {self.face_y})")
        if "{trigger}" not in self.caption_template:
            problems.append(f"--caption-template {self.caption_template!r} lacks {{trigger}}")
        if problems:
            raise PrepareError("Cannot prepare the dataset: " + "; ".join(problems) + ".")


@dataclass
class PhotoResult:
    photo: str
    status: str = "kept"  # kept | rejected
    reason: str = ""
    width: int | None = None
    height: int | None = None
    faces: int | None = None
    face_box: list[int] | None = None
    crop_px: int | None = None  # the crop's side in photo pixels (before resizing)
    upscale: float | None = None
    output: str | None = None
    caption: str | None = None
    dhash: str | None = field(default=None, repr=False)


def dhash(image: Image.Image) -> int:
    """64-bit difference hash: is each pixel of a 9x8 greyscale thumbnail brighter than its right neighbour."""
    pixels = np.asarray(image.convert("L").resize((9, 8), Image.LANCZOS), dtype=np.int16)
    bits = (pixels[:, 1:] > pixels[:, :-1]).flatten()
    return int("".join("1" if bit else "0" for bit in bits), 2)


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def face_crop_box(face: Face, width: int, height: int, margin: float, face_y: float) -> tuple[int, int, int, int]:
    """A square around ``face``: side = face side x (1 + 2 margin), the face centre at ``face_y`` of its height;
    moved (and if need be shrunk) to lie inside the photo."""
    x0, y0, x1, y1 = face.box
    side = min(face.side * (1 + 2 * margin), width, height)
    left = (x0 + x1) / 2 - side / 2
    top = (y0 + y1) / 2 - face_y * side
    left, top = min(max(0.0, left), width - side), min(max(0.0, top), height - side)
    return round(left), round(top), round(left + side), round(top + side)


def bucket_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """The aspect-ratio bucket of a photo: sides multiples of 64 (8 under 256 px), area about resolution^2."""
    step = 64 if resolution >= 256 else 8
    aspect = width / height
    bucket_width = max(step, round(resolution * aspect ** 0.5 / step) * step)
    bucket_height = max(step, round(resolution / aspect ** 0.5 / step) * step)
    return bucket_width, bucket_height


def caption_for(photo: Path, settings: PrepareSettings) -> str:
    """The trigger first, then the photo's own caption (its caption file) or the template's other words."""
    own = photo.with_suffix(settings.caption_extension)
    if own.is_file():
        text = " ".join(own.read_text(encoding="utf-8").split())
        rest = remove_phrases(text, [settings.trigger])
        return f"{settings.trigger}, {rest}" if rest else settings.trigger
    caption = settings.caption_template.format(trigger=settings.trigger)
    if not caption.startswith(settings.trigger):
        caption = f"{settings.trigger}, {remove_phrases(caption, [settings.trigger])}"
    return caption


def prepare_photo(photo: Path, settings: PrepareSettings, detector: FaceDetector | None
                  ) -> tuple[PhotoResult, Image.Image | None]:
    """The training image of one photo (None when rejected) and its report row."""
    result = PhotoResult(photo.name)
    try:
        with Image.open(photo) as opened:
            info = dict(opened.info)
            image = ImageOps.exif_transpose(opened).convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        result.status, result.reason = "rejected", f"unreadable ({type(error).__name__}: {error})"
        return result, None
    result.width, result.height = image.size
    result.dhash = f"{dhash(image):016x}"
    if settings.subject:
        bucket = bucket_size(*image.size, settings.resolution)
        scale = max(bucket[0] / image.width, bucket[1] / image.height)
        result.crop_px, result.upscale = min(image.size), round(scale, 2)
        if scale > MAX_UPSCALE:
            result.status, result.reason = "rejected", (f"too small: {image.width}x{image.height} would be upscaled "
                                                        f"{scale:.1f}x to the bucket {bucket[0]}x{bucket[1]}")
            return result, None
        return result, ImageOps.fit(image, bucket, Image.LANCZOS)
    faces = detector.detect(image, info)
    result.faces = len(faces)
    if not faces:
        result.status, result.reason = "rejected", "no face"
        return result, None
    if len(faces) > 1:
        if settings.several_faces == "reject":
            result.status, result.reason = "rejected", f"{len(faces)} faces (--several-faces reject)"
            return result, None
        result.reason = f"largest of {len(faces)} faces"
    face = max(faces, key=lambda f: f.side)
    result.face_box = [round(v) for v in face.box]
    box = face_crop_box(face, image.width, image.height, settings.margin, settings.face_y)
    result.crop_px = box[2] - box[0]
    result.upscale = round(settings.resolution / max(1, result.crop_px), 2)
    if result.upscale > MAX_UPSCALE:
        result.status, result.reason = "rejected", (f"too small: the face crop is {result.crop_px} px, upscaled "
                                                    f"{result.upscale:.1f}x to {settings.resolution} (at most "
                                                    f"{MAX_UPSCALE:g}x)")
        return result, None
    crop = image.crop(box)
    resample = Image.NEAREST if crop.width * 2 <= settings.resolution and crop.width < 64 else Image.LANCZOS
    return result, crop.resize((settings.resolution, settings.resolution), resample)


# ---- the folder ----------------------------------------------------------------------------------------------
def photo_files(photos: Path) -> list[Path]:
    return sorted(p for p in photos.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def prepare_dataset(photos: str | Path, out: str | Path, settings: PrepareSettings,
                    detector: FaceDetector | None = None, overwrite: bool = False) -> list[PhotoResult]:
    """Prepare every photo of ``photos`` into ``out`` (see the module docstring); returns the report rows."""
    photos, out = Path(photos).expanduser().resolve(), Path(out).expanduser().resolve()
    if not photos.is_dir():
        raise PrepareError(f"The photo folder {str(photos)!r} does not exist. Fix: pass the folder of photos.")
    if out == photos or photos in out.parents:
        raise PrepareError(f"The output {str(out)!r} is inside the photo folder, which is never modified. Fix: "
                           "write the dataset elsewhere (--out).")
    files = photo_files(photos)
    if not files:
        raise PrepareError(f"The photo folder {str(photos)!r} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    _clear_previous(out, overwrite)
    if detector is None and not settings.subject:
        raise PrepareError("No face detector given (or pass --subject to keep whole photos).")
    results: list[PhotoResult] = []
    kept_hashes: list[tuple[int, str]] = []
    used_names: set[str] = set()
    for photo in files:
        result, image = prepare_photo(photo, settings, detector)
        if image is not None:
            duplicate = next((name for value, name in kept_hashes
                              if hamming(value, int(result.dhash, 16)) <= settings.duplicate_distance), None)
            if duplicate is not None:
                result.status, result.reason = "rejected", f"near-duplicate of {duplicate}"
                image = None
        if image is not None:
            kept_hashes.append((int(result.dhash, 16), photo.name))
            name = photo.stem if photo.stem not in used_names else f"{photo.stem}_{photo.suffix.lstrip('.')}"
            used_names.add(name)
            result.output, result.caption = f"{name}.png", caption_for(photo, settings)
            out.mkdir(parents=True, exist_ok=True)
            atomic_write(out / result.output, lambda tmp, image=image: image.save(tmp, format="PNG"))
            atomic_write_text(out / f"{name}{settings.caption_extension}", result.caption + "\n")
        results.append(result)
    write_report(photos, out, settings, results)
    return results


def _clear_previous(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty output folder, unless ``overwrite``: then remove what an earlier prepare wrote there."""
    if not out.exists() or not any(out.iterdir()):
        return
    previous = out / REPORT_DIR / "report.csv"
    if not overwrite or not previous.is_file():
        raise PrepareError(f"The output folder {str(out)!r} is not empty. Fix: choose a new folder, or pass "
                           "--overwrite to replace a dataset an earlier `dataset prepare` wrote there.")
    with previous.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row.get("output"):
                for path in (out / row["output"], (out / row["output"]).with_suffix(".txt")):
                    path.unlink(missing_ok=True)
    shutil.rmtree(out / REPORT_DIR)
    (out / DATASET_INFO_FILE).unlink(missing_ok=True)


# ---- the report ----------------------------------------------------------------------------------------------
REPORT_COLUMNS = [name for name in PhotoResult.__dataclass_fields__ if name != "dhash"]


def size_summary(results: list[PhotoResult]) -> str:
    """One line on the photos' sizes: how many distinct, the range, how many are upscaled."""
    sizes = [(r.width, r.height) for r in results if r.width]
    if not sizes:
        return "no readable photo"
    distinct = Counter(sizes)
    smallest, largest = min(sizes, key=lambda s: s[0] * s[1]), max(sizes, key=lambda s: s[0] * s[1])
    upscaled = [r for r in results if r.status == "kept" and r.upscale and r.upscale > 1]
    line = (f"{len(sizes)} readable photos in {len(distinct)} sizes, from {smallest[0]}x{smallest[1]} to "
            f"{largest[0]}x{largest[1]}")
    if len(distinct) > 1:
        line += " (mixed sizes: every kept crop is resized to the training resolution)"
    if upscaled:
        line += f"; {len(upscaled)} kept crop(s) upscaled (up to {max(r.upscale for r in upscaled):.1f}x)"
    return line


def report_table(results: list[PhotoResult]) -> str:
    columns = ["photo", "status", "reason", "size", "crop_px", "upscale", "output"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in results:
        size = f"{r.width}x{r.height}" if r.width else ""
        values = [r.photo, r.status, r.reason, size, r.crop_px, r.upscale, r.output]
        lines.append("| " + " | ".join("" if v is None else str(v) for v in values) + " |")
    return "\n".join(lines)


def write_report(photos: Path, out: Path, settings: PrepareSettings, results: list[PhotoResult]) -> Path:
    folder = out / REPORT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=REPORT_COLUMNS)
    writer.writeheader()
    for result in results:
        row = {k: v for k, v in asdict(result).items() if k in REPORT_COLUMNS}
        row["face_box"] = json.dumps(row["face_box"]) if row["face_box"] else ""
        writer.writerow(row)
    atomic_write_text(folder / "report.csv", buffer.getvalue())
    kept = sum(r.status == "kept" for r in results)
    reasons = Counter(r.reason.split(" (")[0].split(":")[0] for r in results if r.status == "rejected")
    summary = (f"kept {kept} of {len(results)} photos"
               + (f"; rejected: {', '.join(f'{n} {reason}' for reason, n in reasons.most_common())}" if reasons else ""))
    atomic_write_text(folder / "report.md", f"# dataset prepare {photos} -> {out}\n\n{summary}\n\n"
                                            f"{size_summary(results)}\n\n{report_table(results)}\n")
    write_contact_sheet(photos, out, results, folder / "contact_sheet.png")
    atomic_write_json(out / DATASET_INFO_FILE, {
        "trigger": settings.trigger, "photos": str(photos), "kept": kept, "rejected": dict(reasons),
        "settings": asdict(settings)})
    return folder


def write_contact_sheet(photos: Path, out: Path, results: list[PhotoResult], path: Path, cell: int = 112,
                        columns: int = 6) -> Path:
    """Every photo: its training crop (kept, green) or the photo itself (rejected, red), labelled with the reason."""
    font = ImageFont.load_default(size=11)
    rows = -(-len(results) // columns)
    sheet = Image.new("RGB", (columns * cell, rows * (cell + 30)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for index, result in enumerate(results):
        left, top = (index % columns) * cell, (index // columns) * (cell + 30)
        source = out / result.output if result.output else photos / result.photo
        colour = (40, 150, 60) if result.status == "kept" else (200, 40, 40)
        draw.rectangle([left + 1, top + 1, left + cell - 2, top + cell - 2], outline=colour, width=3)
        try:
            with Image.open(source) as image:
                thumb = image.convert("RGB")
                scale = (cell - 10) / max(thumb.size)
                thumb = thumb.resize((max(1, round(thumb.width * scale)), max(1, round(thumb.height * scale))),
                                     Image.NEAREST if scale >= 1 else Image.LANCZOS)
            sheet.paste(thumb, (left + (cell - thumb.width) // 2, top + (cell - thumb.height) // 2))
        except (OSError, ValueError, SyntaxError):
            draw.text((left + 10, top + cell // 2), "unreadable", fill=colour, font=font)
        draw.text((left + 3, top + cell + 2), result.photo[:20], fill=(0, 0, 0), font=font)
        draw.text((left + 3, top + cell + 15), (result.reason or "kept")[:20], fill=colour, font=font)
    atomic_write(path, lambda tmp: sheet.save(tmp, format="PNG"))
    return path


# ---- command line --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m harness dataset prepare",
        description="Photos of one person -> face crops at the training resolution with trigger captions, and a "
                    "report of what was kept and why the others were rejected. PHOTOS is never modified.")
    parser.add_argument("photos", help="folder of photos (png jpg jpeg webp bmp; caption files kept)")
    parser.add_argument("--trigger", required=True, help="the word that will call the LoRA; first in every caption")
    parser.add_argument("--out", required=True, help="the dataset folder to write (train-lora --images)")
    parser.add_argument("--resolution", type=int, default=512, help="training resolution (square face crops)")
    parser.add_argument("--subject", action="store_true",
                        help="no face crop: keep the whole photo, resized into an aspect-ratio bucket")
    parser.add_argument("--margin", type=float, default=0.6, help="crop side = face side x (1 + 2 margin)")
    parser.add_argument("--face-y", type=float, default=0.45,
                        help="height of the face centre in the crop, from the top (0.5: centred)")
    parser.add_argument("--several-faces", choices=SEVERAL_FACES, default="largest",
                        help="a photo with several faces: keep the largest, or reject the photo")
    parser.add_argument("--duplicate-distance", type=int, default=4,
                        help="photos whose 64-bit dHash differ in at most this many bits are near-duplicates")
    parser.add_argument("--caption-template", default="{trigger}",
                        help="caption of a photo without a caption file (e.g. '{trigger}, a photo of a person')")
    parser.add_argument("--caption-extension", default=".txt")
    parser.add_argument("--detector", choices=("insightface", "box"), default=None,
                        help="insightface (a local pack's detector) or box (boxes stored in the photo: the toy "
                             "world); default: conf/metric/arcface.yaml's")
    parser.add_argument("--root", default=None, help="insightface root holding models/<pack>/ (default: arcface's)")
    parser.add_argument("--pack", default=None, help="insightface pack, e.g. buffalo_l (default: arcface's)")
    parser.add_argument("--overwrite", action="store_true", help="replace a dataset an earlier prepare wrote in --out")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "prepare":
        print("usage: python -m harness dataset prepare PHOTOS --trigger WORD --out DATASET [options]",
              file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv[1:])
    try:
        settings = PrepareSettings(args.trigger, args.resolution, args.subject, args.margin, args.face_y,
                                   args.several_faces, args.duplicate_distance, args.caption_template,
                                   args.caption_extension)
        detector = None
        if not args.subject:
            face_settings = metric_config("arcface")
            face_settings.update({k: v for k, v in (("detector", args.detector), ("root", args.root),
                                                    ("pack", args.pack)) if v is not None})
            detector = build_detector(face_settings)
        results = prepare_dataset(args.photos, args.out, settings, detector, args.overwrite)
    except (PrepareError, ModelUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report = Path(args.out) / REPORT_DIR
    print((report / "report.md").read_text(encoding="utf-8").split("\n", 2)[2].rstrip())
    print(f"\nreport: {report / 'report.csv'}, contact sheet: {report / 'contact_sheet.png'}")
    return 0 if any(r.status == "kept" for r in results) else 1

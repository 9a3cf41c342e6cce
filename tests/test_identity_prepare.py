"""dataset prepare: hand-made photos with known boxes -> crops, captions, rejections with reasons, a report; the
photo folder is never modified; the insightface path through the arcface metric's loader (faked here)."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from harness.identity import prepare
from harness.identity.prepare import (
    BoxDetector, Face, PrepareError, PrepareSettings, bucket_size, dhash, face_crop_box, hamming, prepare_dataset,
)
from harness.training.dataset import dataset_trigger, example_problems, load_examples


def _photo(path: Path, size: tuple[int, int], boxes: list[list[int]], seed: int) -> Path:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    for x0, y0, x1, y1 in boxes:
        array[y0:y1, x0:x1] = (250, 200, 150)
    info = PngImagePlugin.PngInfo()
    info.add_text("faces", json.dumps(boxes))
    Image.fromarray(array).save(path, pnginfo=info)
    return path


@pytest.fixture()
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    _photo(folder / "a_offcentre.png", (200, 100), [[150, 30, 190, 70]], 0)   # face at the right edge
    _photo(folder / "b_two.png", (160, 160), [[10, 10, 30, 30], [60, 60, 120, 120]], 1)
    _photo(folder / "c_none.png", (100, 100), [], 2)
    _photo(folder / "d_small.png", (300, 300), [[100, 100, 106, 106]], 3)
    (folder / "e_broken.jpg").write_bytes(b"not an image")
    Image.open(folder / "a_offcentre.png").resize((180, 90)).save(folder / "f_dup.bmp")  # .bmp read too
    (folder / "a_offcentre.txt").write_text("smiling, zqx, outdoors")
    return folder


def _checksums(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_prepare_crops_captions_rejects_and_leaves_the_photos_alone(photos, tmp_path):
    before = _checksums(photos)
    out = tmp_path / "dataset"
    f_dup = {"f_dup.bmp": [[135, 27, 171, 63]]}  # BMP holds no text chunk: give the dup its box another way

    class Detector(BoxDetector):
        def detect(self, image, info):
            return [Face(tuple(b)) for b in f_dup["f_dup.bmp"]] if not info.get("faces") and image.size == (180, 90) \
                else super().detect(image, info)

    results = {r.photo: r for r in prepare_dataset(photos, out, PrepareSettings("zqx", resolution=32, margin=0.5),
                                                   Detector())}
    assert _checksums(photos) == before  # nothing in PHOTOS was modified or added
    assert {name: (r.status, r.reason.split(" (")[0].split(":")[0]) for name, r in results.items()} == {
        "a_offcentre.png": ("kept", ""), "b_two.png": ("kept", "largest of 2 faces"),
        "c_none.png": ("rejected", "no face"), "d_small.png": ("rejected", "too small"),
        "e_broken.jpg": ("rejected", "unreadable"), "f_dup.bmp": ("rejected", "near-duplicate of a_offcentre.png")}
    crop = Image.open(out / "a_offcentre.png")
    centre = np.asarray(crop, dtype=int)[14:18, 14:18]
    assert crop.size == (32, 32) and np.abs(centre - (250, 200, 150)).max() <= 3  # the off-centre face is kept
    assert (out / "a_offcentre.txt").read_text().strip() == "zqx, smiling, outdoors"  # own caption, trigger first
    assert (out / "b_two.txt").read_text().strip() == "zqx"
    assert dataset_trigger(out) == "zqx"
    rows = list(csv.DictReader((out / "_prepare" / "report.csv").open()))
    assert [row["photo"] for row in rows] == sorted(results) and (out / "_prepare" / "contact_sheet.png").is_file()
    report = (out / "_prepare" / "report.md").read_text()
    assert "kept 2 of 6 photos" in report and "mixed sizes" in report
    examples = load_examples(out)  # the report folder is not read as training data
    assert [p.name for p, _ in examples] == ["a_offcentre.png", "b_two.png"]
    assert example_problems(examples, 32, dataset_trigger(out)) == []


def test_several_faces_reject_and_output_rules(photos, tmp_path):
    out = tmp_path / "dataset"
    results = prepare_dataset(photos, out, PrepareSettings("zqx", resolution=32, several_faces="reject"),
                              BoxDetector())
    assert next(r for r in results if r.photo == "b_two.png").reason == "2 faces (--several-faces reject)"
    with pytest.raises(PrepareError, match="not empty.*--overwrite"):
        prepare_dataset(photos, out, PrepareSettings("zqx", resolution=32), BoxDetector())
    prepare_dataset(photos, out, PrepareSettings("zqx", resolution=32), BoxDetector(), overwrite=True)
    assert (out / "b_two.png").is_file()
    with pytest.raises(PrepareError, match="inside the photo folder"):
        prepare_dataset(photos, photos / "out", PrepareSettings("zqx", resolution=32), BoxDetector())
    with pytest.raises(PrepareError, match="lacks \\{trigger\\}"):
        PrepareSettings("zqx", caption_template="a photo")


def test_subject_mode_keeps_the_whole_photo_in_a_bucket(photos, tmp_path):
    results = prepare_dataset(photos, tmp_path / "d", PrepareSettings("zqx", resolution=64, subject=True))
    kept = {r.photo: r for r in results if r.status == "kept"}
    assert Image.open(tmp_path / "d" / kept["a_offcentre.png"].output).size == bucket_size(200, 100, 64) == (88, 48)
    assert bucket_size(1000, 1000, 512) == (512, 512) and bucket_size(1200, 800, 512) == (640, 448)


def test_crop_box_and_hash_rules():
    assert face_crop_box(Face((40, 40, 60, 60)), 100, 100, 0.5, 0.5) == (30, 30, 70, 70)
    assert face_crop_box(Face((80, 40, 100, 60)), 100, 100, 0.5, 0.5) == (60, 30, 100, 70)  # moved inside
    assert face_crop_box(Face((0, 0, 100, 100)), 100, 60, 0.5, 0.5) == (20, 0, 80, 60)  # shrunk to fit
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    assert hamming(dhash(image), dhash(image.resize((50, 50)))) <= 4
    assert hamming(dhash(image), dhash(image.transpose(Image.FLIP_LEFT_RIGHT))) > 10


def test_insightface_detector_uses_the_arcface_loader(monkeypatch, photos, tmp_path):
    calls = []

    class FakeApp:
        def get(self, bgr):
            return [type("F", (), {"bbox": np.array([150, 30, 190, 70]), "det_score": 0.9})()]

    def fake_loader(root, pack, providers, det_size, det_thresh):
        calls.append((root, pack, det_size))
        return FakeApp()

    monkeypatch.setattr("harness.metrics.backbones.load_face_analysis", fake_loader)
    detector = prepare.build_detector({"detector": "insightface", "root": "r", "pack": "buffalo_l"})
    assert calls == [("r", "buffalo_l", 640)]
    assert detector.detect(Image.new("RGB", (200, 100)), {}) == [Face((150.0, 30.0, 190.0, 70.0), 0.9)]


def test_cli_with_a_pack_without_detector_says_use_box(photos, tmp_path, capsys):
    code = prepare.main(["prepare", str(photos), "--trigger", "zqx", "--out", str(tmp_path / "d"),
                         "--detector", "insightface"])  # the toy pack: recognition only
    assert code == 2 and "detection model" in capsys.readouterr().err
    code = prepare.main(["prepare", str(photos), "--trigger", "zqx", "--out", str(tmp_path / "d"),
                         "--resolution", "32"])  # arcface.yaml's detector: box
    assert code == 0 and "kept 2 of 6 photos" in capsys.readouterr().out

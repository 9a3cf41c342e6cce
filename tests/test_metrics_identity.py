"""arcface and image_ref on hand-made inputs with tiny random models; region extractors and status paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from metrics_support import CHARACTER_A, OBJECT_B, random_image, save_random_clip, write_results
from PIL import Image

from harness.metrics.arcface import ArcFace, assign_faces
from harness.metrics.image_ref import ImageRef
from harness.metrics.regions import REGIONS
from harness.store import iter_images
from harness.scoring import score_results
from harness.store import load_scores
from harness.toy.metric_weights import export_face_onnx, save_toy_dinov2

BOX = [0, 0, 32, 32]


class PixelNet(torch.nn.Module):
    """A hand-made recognition model: the 4x4 average-pooled pixels (same crop -> 1, different -> low)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(x, 28).flatten(1)


def flat(colour, size=32):
    return np.full((size, size, 3), colour, np.uint8)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    export_face_onnx(PixelNet().eval(), root / "insightface" / "models" / "toy_face" / "toy_arcface.onnx")
    return {"clip": save_random_clip(root), "dinov2": str(save_toy_dinov2(root / "dinov2")),
            "insightface_root": str(root / "insightface")}


def with_references(tmp_path: Path, lora: dict, arrays: list[np.ndarray]) -> dict:
    folder = tmp_path / "references" / lora["id"]
    folder.mkdir(parents=True, exist_ok=True)
    for index, array in enumerate(arrays):
        Image.fromarray(array).save(folder / f"{index}.png")
    return {**lora, "references": str(folder)}


def rows_by_sub_metric(frame, image_id):
    return {row.sub_metric: row for row in frame[frame["image_id"] == image_id].itertuples()}


# --- arcface -----------------------------------------------------------------------------------------------
def test_hungarian_beats_first_face() -> None:
    # greedy "first face takes its best character" would give face0->char0 (0.6) and face1->char1 (0.1)
    similarity = np.array([[0.6, 0.5], [0.55, 0.1]])
    assert assign_faces(similarity) == {0: (1, 0.55), 1: (0, 0.5)}
    # more characters than faces: one character is left without a face
    assert set(assign_faces(np.array([[0.2, 0.9]]))) == {1}


def test_arcface_identical_is_one_and_other_is_lower(tmp_path: Path, models: dict) -> None:
    reference = random_image(7)
    character = with_references(tmp_path, CHARACTER_A, [reference])
    images = {("m", "s"): [reference, flat((0, 0, 255))]}
    results = write_results(tmp_path / "r", images, {"s": [character, OBJECT_B]})
    settings = {"root": models["insightface_root"], "pack": "toy_face", "detector": "box",
                "boxes": {"character": BOX}}
    score_results(results, {"arcface": settings}, progress=False)
    frame = load_scores(results)
    same, other = rows_by_sub_metric(frame, "m/s/seed0"), rows_by_sub_metric(frame, "m/s/seed1")
    assert same["character_1"].status == "ok" and same["character_1"].value == pytest.approx(1.0, abs=1e-5)
    assert same["face_detected"].value == 1.0 and same["mean"].value == pytest.approx(1.0, abs=1e-5)
    assert other["character_1"].value < 0.95
    assert "object_1" not in same  # only characters have identities


def test_arcface_two_characters_are_assigned_by_hungarian(tmp_path: Path, models: dict) -> None:
    ref_a, ref_b = random_image(1), flat((250, 250, 0))
    char_a = with_references(tmp_path, CHARACTER_A, [ref_a])
    char_b = with_references(tmp_path, {**CHARACTER_A, "id": "character_2"}, [ref_b])
    # the image shows B on the left and A on the right, but the boxes say the opposite: assignment fixes it
    image = np.concatenate([ref_b, ref_a], axis=1)
    boxes = {"character_1": [0, 0, 32, 32], "character_2": [32, 0, 64, 32]}
    results = write_results(tmp_path / "r", {("m", "s"): [image]}, {"s": [char_a, char_b]}, extra={"boxes": boxes})
    metric = ArcFace(root=models["insightface_root"], pack="toy_face", detector="box")
    rows = {row.sub_metric: row for row in metric.score(iter_images(results))}
    assert rows["character_1"].value == pytest.approx(1.0, abs=1e-5)
    assert rows["character_2"].value == pytest.approx(1.0, abs=1e-5)
    assert rows["face_detected"].value == 1.0


def test_arcface_no_face(tmp_path: Path, models: dict) -> None:
    character = with_references(tmp_path, CHARACTER_A, [random_image(3)])
    results = write_results(tmp_path / "r", {("m", "s"): [random_image(4)]}, {"s": [character]})
    metric = ArcFace(root=models["insightface_root"], pack="toy_face", detector="box")
    metric.load()
    record = next(iter_images(results))
    # references get their face from the box; the generated image shows no face at all
    metric.settings["boxes"] = {"character": BOX}
    metric.face_embeddings = lambda image, record=None, characters=None, real=metric.face_embeddings: (
        real(image, record, characters) if record is None else [])
    rows = {row.sub_metric: row for row in metric.score([record])}
    assert rows["character_1"].status == "no_face" and rows["character_1"].value is None
    assert rows["face_detected"].value == 0.0
    assert rows["mean"].status == "no_face" and rows["mean"].value is None


def test_arcface_missing_pack_is_unavailable_without_download(tmp_path: Path, monkeypatch, models: dict) -> None:
    import insightface.app.face_analysis as face_analysis
    import insightface.utils.storage as storage

    def no_download(*args, **kwargs):
        raise AssertionError("insightface tried to download a model pack")

    monkeypatch.setattr(storage, "download", no_download)
    monkeypatch.setattr(face_analysis, "ensure_available", no_download)
    results = write_results(tmp_path / "r", {("m", "s"): [random_image(0)]}, {"s": [CHARACTER_A]})
    score_results(results, {"arcface": {"root": str(tmp_path / "nowhere"), "pack": "buffalo_l"},
                            "image_ref": {"dinov2": str(tmp_path / "no_dino")}}, progress=False)
    frame = load_scores(results)
    assert set(frame["status"]) == {"unavailable"} and frame["value"].isna().all()
    arcface = frame[frame["metric"] == "arcface"]["reason"].iloc[0]
    assert str(tmp_path / "nowhere" / "models" / "buffalo_l") in arcface and "buffalo_l" in arcface
    assert str(tmp_path / "no_dino") in frame[frame["metric"] == "image_ref"]["reason"].iloc[0]
    # a pack with a recognition model but no detector: insightface's bare assertion becomes a clear reason
    metric = ArcFace(root=models["insightface_root"], pack="toy_face", detector="insightface")
    from harness.metrics.backbones import ModelUnavailable

    with pytest.raises(ModelUnavailable, match="detection model"):
        metric.load()


# --- image_ref ---------------------------------------------------------------------------------------------
def test_image_ref_identical_is_100_and_unrelated_lower(tmp_path: Path, models: dict) -> None:
    reference = random_image(11)
    character = with_references(tmp_path, CHARACTER_A, [reference, flat((0, 255, 0))])
    images = {("m", "s"): [reference, flat((255, 0, 255))]}
    results = write_results(tmp_path / "r", images, {"s": [character]})
    settings = {"clip": models["clip"], "dinov2": models["dinov2"], "regions": {"character": "full"}}
    score_results(results, {"image_ref": settings}, progress=False)
    frame = load_scores(results)
    same, other = rows_by_sub_metric(frame, "m/s/seed0"), rows_by_sub_metric(frame, "m/s/seed1")
    for backbone in ("clip", "dino"):
        assert same[f"{backbone}:character_1"].value == pytest.approx(100.0, abs=1e-3)
        assert same[f"{backbone}:category=character"].value == pytest.approx(100.0, abs=1e-3)
        assert same[f"{backbone}:mean"].status == "ok"
        assert other[f"{backbone}:character_1"].value < 95.0


def test_image_ref_mean_over_references_is_lower_than_max(tmp_path: Path, models: dict) -> None:
    reference = random_image(12)
    character = with_references(tmp_path, CHARACTER_A, [reference, flat((0, 0, 0))])
    results = write_results(tmp_path / "r", {("m", "s"): [reference]}, {"s": [character]})
    values = {}
    for reference_mode in ("max", "mean"):
        metric = ImageRef(dinov2=models["dinov2"], reference=reference_mode, regions={"character": "full"})
        rows = {row.sub_metric: row for row in metric.score(iter_images(results))}
        values[reference_mode] = rows["dino:character_1"].value
    assert values["max"] == pytest.approx(100.0, abs=1e-3) and values["mean"] < values["max"]


def test_image_ref_fallbacks_and_missing_references(tmp_path: Path, models: dict) -> None:
    character = with_references(tmp_path, CHARACTER_A, [random_image(5)])
    obj = with_references(tmp_path, OBJECT_B, [random_image(6)])
    no_refs = {**OBJECT_B, "id": "object_2", "category": "clothing"}
    results = write_results(tmp_path / "r", {("m", "s"): [random_image(8)]}, {"s": [character, obj, no_refs]})
    metric = ImageRef(dinov2=models["dinov2"], regions={"character": "box", "object": "mask"},
                      region_settings={"boxes": {}, "clipseg": None})
    rows = {row.sub_metric: row for row in metric.score(iter_images(results))}
    assert rows["dino:character_1"].status == "fallback_full_image" and "no known box" in rows["dino:character_1"].reason
    assert rows["dino:object_1"].status == "fallback_full_image" and "no segmenter" in rows["dino:object_1"].reason
    assert rows["dino:character_1"].value is not None
    assert rows["dino:object_2"].status == "unavailable" and rows["dino:object_2"].value is None
    assert "clip:object_2" not in rows  # no CLIP configured: no CLIP rows


def test_region_extractors(tmp_path: Path) -> None:
    image = Image.fromarray(random_image(9))
    results = write_results(tmp_path / "r", {("m", "s"): [random_image(9)]}, {"s": [CHARACTER_A]},
                            extra={"boxes": {"character_1": [4, 4, 20, 20]}})
    record = next(iter_images(results))
    box = REGIONS.get("box")().extract(image, record, CHARACTER_A)[0]
    assert box.status == "ok" and box.image.size == (16, 16) and box.box == [4, 4, 20, 20]
    background = REGIONS.get("background")(blur_radius=4).extract(image, record, OBJECT_B)[0]
    original, blurred = np.asarray(image, float), np.asarray(background.image, float)
    assert background.status == "ok"
    assert np.abs(blurred[4:20, 4:20] - original[4:20, 4:20]).mean() > 10  # the character box is blurred
    assert np.array_equal(blurred[24:, 24:], original[24:, 24:])              # the rest is untouched
    assert REGIONS.get("background")().extract(image, None, OBJECT_B)[0].status == "fallback_full_image"
    assert REGIONS.get("full")().extract(image, None, OBJECT_B)[0].image is image
    with pytest.raises(KeyError, match="Known"):
        ImageRef(dinov2="x", regions={"character": "sam9"})


def test_mask_region_with_clipseg(tmp_path: Path) -> None:
    from harness.toy.metric_weights import save_tiny_clipseg

    clipseg = str(save_tiny_clipseg(tmp_path / "clipseg"))
    image = Image.fromarray(random_image(13))
    empty = REGIONS.get("mask")(clipseg=clipseg, threshold=1.0).extract(image, None, OBJECT_B)[0]
    assert empty.status == "fallback_full_image" and "empty mask" in empty.reason and empty.image is image
    everything = REGIONS.get("mask")(clipseg=clipseg, threshold=0.0, prompt="triggers").extract(image, None, OBJECT_B)[0]
    assert everything.status == "ok" and everything.box == [0, 0, 32, 32]

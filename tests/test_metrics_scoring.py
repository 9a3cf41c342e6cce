"""The scoring driver: resume, append-only JSON lines, unavailable models, load_scores; clip_text values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from metrics_support import CHARACTER_A, OBJECT_B, random_image, save_random_clip, write_results

from harness.cli import score_main as main
from harness.metrics.backbones import ModelUnavailable
from harness.metrics.base import METRICS, Metric
from harness.scoring import score_results
from harness.store import SCORE_COLUMNS, SCORES_DIR, load_scores, read_jsonl, scores_path


@METRICS.register("test_mean_pixel")
class MeanPixel(Metric):
    """A cheap metric for driver tests: the image's mean pixel value."""

    batch_size = 2

    def score(self, images):
        from PIL import Image

        for image in images:
            yield self.row(image, float(np.asarray(Image.open(image.path)).mean()))


@METRICS.register("test_missing_model")
class MissingModel(Metric):
    def load(self):
        raise ModelUnavailable("test weights", "/nowhere/weights.pt", "put them there")

    def score(self, images):
        raise AssertionError("never called when load fails")


@pytest.fixture
def results(tmp_path: Path) -> Path:
    images = {("merge", "set_a"): [random_image(0), random_image(1), random_image(2)],
              ("switch", "set_a"): [random_image(3), random_image(4), random_image(5)]}
    return write_results(tmp_path / "results", images, {"set_a": [CHARACTER_A, OBJECT_B]})


@pytest.fixture(scope="module")
def clip_settings(tmp_path_factory) -> dict:
    return save_random_clip(tmp_path_factory.mktemp("clip"))


def _row_count(results: Path) -> int:
    return sum(len(list(read_jsonl(p))) for p in (results / SCORES_DIR).rglob("*.jsonl"))


def test_resume_writes_no_new_rows(results: Path) -> None:
    first = score_results(results, {"test_mean_pixel": {}}, progress=False)
    assert first[0]["scored"] == 6 and _row_count(results) == 6
    second = score_results(results, {"test_mean_pixel": {}}, progress=False)
    assert second[0]["scored"] == 0 and second[0]["skipped"] == 6
    assert _row_count(results) == 6
    # other settings = another metric key = scored again, in its own folder
    score_results(results, {"test_mean_pixel": {"variant": 2}}, progress=False)
    assert _row_count(results) == 12


def test_rows_go_to_one_file_per_method(results: Path) -> None:
    score_results(results, {"test_mean_pixel": {}}, progress=False)
    frame = load_scores(results)
    key = frame["metric_key"].iloc[0]
    for label in ("merge", "switch"):
        rows = list(read_jsonl(scores_path(results, "test_mean_pixel", key, label)))
        assert {row["method_label"] for row in rows} == {label} and len(rows) == 3


def test_truncated_last_line_is_skipped_and_rescored(results: Path) -> None:
    score_results(results, {"test_mean_pixel": {}}, progress=False)
    path = next((results / SCORES_DIR).rglob("merge.jsonl"))
    text = path.read_text()
    path.write_text(text[: len(text) - 40])  # a writer killed mid-line
    assert len(load_scores(results)) == 5
    summary = score_results(results, {"test_mean_pixel": {}}, progress=False)
    assert summary[0]["scored"] == 1
    frame = load_scores(results)
    assert len(frame) == 6 and frame["image_id"].is_unique


def test_corrupt_middle_line_is_an_error(results: Path) -> None:
    score_results(results, {"test_mean_pixel": {}}, progress=False)
    path = next((results / SCORES_DIR).rglob("merge.jsonl"))
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0][:10]] + lines[1:]) + "\n")
    with pytest.raises(ValueError, match="corrupt"):
        load_scores(results)


def test_load_scores_columns(results: Path) -> None:
    assert list(load_scores(results).columns) == SCORE_COLUMNS  # empty folder: still the columns
    score_results(results, {"test_mean_pixel": {}}, progress=False)
    frame = load_scores(results)
    assert list(frame.columns) == SCORE_COLUMNS
    assert set(frame["status"]) == {"ok"} and frame["n"].eq(2).all()


def test_missing_model_gives_unavailable_rows_and_others_still_run(results: Path) -> None:
    summaries = score_results(results, {"test_missing_model": {}, "test_mean_pixel": {}}, progress=False)
    assert [s["status"] for s in summaries] == ["unavailable", "ok"]
    frame = load_scores(results)
    missing = frame[frame["metric"] == "test_missing_model"]
    assert len(missing) == 6 and set(missing["status"]) == {"unavailable"}
    assert missing["value"].isna().all() and missing["reason"].str.contains("/nowhere/weights.pt").all()
    assert frame[frame["metric"] == "test_mean_pixel"]["value"].notna().all()


def test_unavailable_rows_are_retried_and_replaced(results: Path, clip_settings: dict) -> None:
    settings = {**clip_settings, "pretrained": str(results / "not_yet.pt")}
    score_results(results, {"clip_text": settings}, progress=False)
    frame = load_scores(results)
    assert set(frame["status"]) == {"unavailable"}
    assert frame["reason"].str.contains("not_yet.pt").all() and frame["reason"].str.contains("toy").all()
    # the weights appear at that path: the same metric key is scored for real and the retry rows drop out
    Path(settings["pretrained"]).write_bytes(Path(clip_settings["pretrained"]).read_bytes())
    summary = score_results(results, {"clip_text": settings}, progress=False)
    assert summary[0]["scored"] == 6
    frame = load_scores(results)
    assert len(frame) == 6 and set(frame["status"]) == {"ok"}


def test_clip_text_settings_change_the_number(results: Path, clip_settings: dict) -> None:
    variants = {
        "raw": {"clamp": False, "scale": 100.0},
        "hessel": {"clamp": False, "scale": 2.5},
        "clamped": {"clamp": True, "scale": 100.0},
        "torchmetrics": {"clamp": True, "scale": 100.0, "mode": "torchmetrics"},
        "triggers": {"clamp": False, "scale": 100.0, "text": "triggers"},
    }
    values = {}
    for name, extra in variants.items():
        summary = score_results(results, {"clip_text": {**clip_settings, **extra}}, progress=False)
        frame = load_scores(results)
        frame = frame[frame["metric_key"] == summary[0]["metric_key"]].sort_values("image_id")
        assert len(frame) == 6 and set(frame["status"]) == {"ok"}
        values[name] = frame["value"].to_numpy()
    assert np.allclose(values["hessel"], values["raw"] * 0.025, atol=1e-4)
    assert np.allclose(values["clamped"], np.maximum(values["raw"], 0), atol=1e-4)
    assert np.allclose(values["torchmetrics"], values["raw"], atol=1e-4)  # its clamp is on the mean
    assert not np.allclose(values["triggers"], values["raw"])
    assert np.all(np.abs(values["raw"]) <= 100.0 + 1e-3)


def test_clip_text_identical_pairs_score_higher_than_shuffled(clip_settings: dict) -> None:
    """Cosine of an image with itself is 1; CLIP alignment of matching pairs equals the diagonal."""
    import torch
    from PIL import Image

    from harness.metrics.clip_text import ClipText, aggregate
    from harness.metrics.backbones import clip_image_embeddings

    metric = ClipText(**clip_settings)
    metric.load()
    model, preprocess, _ = metric._loaded
    images = [Image.fromarray(random_image(seed)) for seed in range(3)]
    emb = clip_image_embeddings(model, preprocess, images + images[:1])
    assert torch.allclose(emb[0] @ emb[3], torch.tensor(1.0), atol=1e-5)
    assert aggregate([-10.0, 4.0], {"mode": "torchmetrics", "clamp": True}) == 0.0
    assert aggregate([-10.0, 4.0], {"mode": "per_image", "clamp": True}) == -3.0


def test_clip_text_rejects_unknown_text_source() -> None:
    from harness.metrics.clip_text import ClipText

    with pytest.raises(ValueError, match="triggers"):
        ClipText(text="caption")


def test_cli_scores_with_overrides(results: Path, clip_settings: dict) -> None:
    argv = [str(results), "--metric", "clip_text", "--no-progress"]
    argv += [f"--set=clip_text.{key}={value}" for key, value in clip_settings.items()]
    assert main(argv) == 0
    frame = load_scores(results)
    assert len(frame) == 6 and set(frame["metric"]) == {"clip_text"}
    settings = json.loads(frame["metric_settings"].iloc[0])
    assert settings["pretrained"] == clip_settings["pretrained"] and settings["scale"] == 100.0


def test_score_hydra_app(results: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([f"output_dir={results}", "+metrics.test_mean_pixel.name=test_mean_pixel", "+methods=[switch]",
                 "progress=false"]) == 0
    frame = load_scores(results)
    assert set(frame["method_label"]) == {"switch"} and len(frame) == 3
    with pytest.raises(SystemExit) as exit_info:  # the tiny testbed names no default metric
        main([f"output_dir={results}"])
    assert exit_info.value.code == 2 and "metric=" in capsys.readouterr().err


def test_not_a_results_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="images/"):
        score_results(tmp_path, {"test_mean_pixel": {}}, progress=False)

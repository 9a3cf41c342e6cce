"""The identity-LoRA path end to end on the toy world, on CPU: toy photos -> dataset prepare -> train-lora (with
checkpoints) -> strength sweep -> a recommended strength, through the commands a user runs."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from harness.__main__ import main as harness_main
from harness.toy.photos import write_toy_photos


@pytest.mark.slow
def test_photos_to_recommended_strength(tmp_path, capsys):
    torch.set_num_threads(1)
    photos, dataset, lora = tmp_path / "photos", tmp_path / "dataset", tmp_path / "lora" / "zorblat.safetensors"
    write_toy_photos(photos, count=4)
    assert harness_main(["dataset", "prepare", str(photos), "--trigger", "zorblat", "--out", str(dataset),
                         "--resolution", "32", "--margin", "0.3", "--face-y", "0.59",
                         "--caption-template", "{trigger}, a picture"]) == 0
    assert "kept 5 of 9 photos" in capsys.readouterr().out  # 4 good + the two-character photo's largest
    assert harness_main(["train-lora", "--base", "testbed/toy/base", "--images", str(dataset), "--out", str(lora),
                         "--resolution", "32", "--batch-size", "2", "--steps", "8", "--lr", "2e-3", "--text-encoder",
                         "--save-every", "4", "--validation-prompts", "zorblat, a picture",
                         "--validation-sampling-steps", "4", "--device", "cpu", "--no-progress"]) == 0
    checkpoint = lora.with_name("zorblat-step000004.safetensors")
    assert checkpoint.is_file() and lora.with_name("zorblat-validation.png").is_file()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a picture, {trigger}\na picture, {trigger}, night plain background\n")
    argv = ["strength", str(checkpoint), str(lora), "--prompts", str(prompts), "--scales", "0.5,1.0",
            "--references", str(dataset), "--out", str(tmp_path / "sweep"), "--testbed", "toy", "--steps", "4",
            "--seeds", "0", "--no-progress"]
    assert harness_main(argv) == 0
    out = capsys.readouterr().out
    assert "recommended: zorblat" in out and "rule: the lowest strength" in out
    table = pd.read_csv(tmp_path / "sweep" / "strength.csv")
    assert list(table["label"]) == ["zorblat-step000004@0.5", "zorblat-step000004@1", "zorblat@0.5", "zorblat@1"]
    assert (table["images"] == 2).all() and table["identity"].notna().all() and table["recommended"].sum() == 1
    assert json.loads((tmp_path / "sweep" / "strength.json").read_text())["label"] in set(table["label"])
    for name in ("pictures/strength.png", "report.html", "leaderboard.csv"):
        assert (tmp_path / "sweep" / name).is_file()
    assert harness_main(argv) == 0  # resumable: a rerun generates nothing
    assert "generated 0, skipped 2" in capsys.readouterr().out

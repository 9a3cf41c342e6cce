"""``benchmarks/toy_lora_recipe.py``: retrains toy LoRAs into a scratch testbed and measures them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import toy_lora_recipe  # noqa: E402

LORAS = Path(__file__).parents[1] / "testbed" / "toy" / "lora"


def test_a_retrained_lora_is_measured_without_touching_the_committed_one(tmp_path, capsys):
    committed = LORAS / "object_2.safetensors"
    before = committed.stat().st_mtime_ns
    assert toy_lora_recipe.main(["--loras", "object_2", "--steps", "1", "--examples", "4", "--images", "2",
                                 "--work", str(tmp_path)]) == 0
    assert committed.stat().st_mtime_ns == before
    retrained = tmp_path / "lora" / "object_2.safetensors"
    assert retrained.read_bytes() != committed.read_bytes()
    assert (tmp_path / "lora" / "style_1.safetensors").read_bytes() == (LORAS / "style_1.safetensors").read_bytes()
    out = capsys.readouterr().out
    assert "object_2: 1 steps" in out and "\nobject_2 " in out and "LoRAs: mean present" in out


def test_an_unknown_lora_id_names_the_known_ones(tmp_path, capsys):
    with pytest.raises(SystemExit):
        toy_lora_recipe.main(["--loras", "object_9", "--work", str(tmp_path)])
    err = capsys.readouterr().err
    assert "object_9" in err and "character_1" in err


def test_no_text_encoder_trains_a_unet_only_lora(tmp_path):
    from safetensors import safe_open

    assert toy_lora_recipe.main(["--loras", "object_2", "--no-text-encoder", "--steps", "1", "--examples", "4",
                                 "--images", "1", "--work", str(tmp_path)]) == 0
    with safe_open(str(tmp_path / "lora" / "object_2.safetensors"), "pt") as lora:
        assert {key.split(".")[0] for key in lora.keys()} == {"unet"}


def test_the_testbed_s_own_lora_folder_is_refused_as_scratch(capsys):
    before = (LORAS / "object_2.safetensors").stat().st_mtime_ns
    with pytest.raises(SystemExit):
        toy_lora_recipe.main(["--loras", "object_2", "--work", str(LORAS.parent)])
    assert "would overwrite the testbed's own LoRAs" in capsys.readouterr().err
    assert (LORAS / "object_2.safetensors").stat().st_mtime_ns == before

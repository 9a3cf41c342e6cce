"""``python -m harness testbed build toy --quick``: the build path end to end, with tiny step counts."""

from __future__ import annotations

import json

from harness.__main__ import main
from harness.toy import world


def test_quick_build_writes_a_loadable_testbed(tmp_path):
    assert main(["testbed", "build", "toy", "--quick", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "lora_info.json").read_text()) == world.manifest()
    assert (tmp_path / "base" / "model_index.json").exists() and (tmp_path / "oracle" / "config.json").exists()
    for concept in world.CONCEPTS:
        assert (tmp_path / "lora" / f"{concept.id}.safetensors").stat().st_size > 0
        assert list((tmp_path / "references" / concept.id).glob("*.png"))
    # a second build resumes: every phase is skipped, nothing is retrained
    before = (tmp_path / "lora" / "character_1.safetensors").stat().st_mtime_ns
    assert main(["testbed", "build", "toy", "--quick", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "lora" / "character_1.safetensors").stat().st_mtime_ns == before

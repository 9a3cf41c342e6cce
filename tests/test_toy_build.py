"""``python -m harness testbed build toy --quick``: the build path end to end, with tiny step counts."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from harness.__main__ import main
from harness.toy import base_model, build, lora_recipe, world


@pytest.mark.slow
def test_quick_build_writes_a_loadable_testbed(tmp_path):
    assert main(["testbed", "build", "toy", "--quick", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "lora_info.json").read_text()) == world.manifest()
    assert (tmp_path / "base" / "model_index.json").exists() and (tmp_path / "oracle" / "config.json").exists()
    assert json.loads((tmp_path / "metric_models" / "manifest.json").read_text())["checks"]  # toy CLIP, face, DINOv2
    tokenizer_config = json.loads((tmp_path / "base" / "tokenizer" / "tokenizer_config.json").read_text())
    assert tokenizer_config["model_max_length"] == base_model.PROMPT_TOKENS
    for concept in world.CONCEPTS:
        assert (tmp_path / "lora" / f"{concept.id}.safetensors").stat().st_size > 0
        assert list((tmp_path / "references" / concept.id).glob("*.png"))
        metadata = safe_open(tmp_path / "lora" / f"{concept.id}.safetensors", "pt").metadata()
        config = lora_recipe.training_config(concept.id, build.QUICK.lora_steps, build.QUICK.lora_batch)
        assert {key: json.loads(metadata[key]) for key in config.record()} == config.record(), concept.id
        assert int(metadata["steps"]) == lora_recipe.lora_steps(concept.id, build.QUICK.lora_steps), concept.id
    assert lora_recipe.lora_steps("clothing_2", build.QUICK.lora_steps) > build.QUICK.lora_steps  # 8x
    # a second build resumes: every phase is skipped, nothing is retrained
    before = (tmp_path / "lora" / "character_1.safetensors").stat().st_mtime_ns
    assert main(["testbed", "build", "toy", "--quick", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "lora" / "character_1.safetensors").stat().st_mtime_ns == before
    # --lora-shard 1/2 redoes only every second LoRA (the share --jobs 2 gives its second process)
    stamps = {c.id: (tmp_path / "lora" / f"{c.id}.safetensors").stat().st_mtime_ns for c in world.CONCEPTS}
    assert main(["testbed", "build", "toy", "--quick", "--out", str(tmp_path), "--phases", "lora", "--force",
                 "--jobs", "1", "--lora-shard", "1/2"]) == 0
    redone = {c.id for c in world.CONCEPTS if (tmp_path / "lora" / f"{c.id}.safetensors").stat().st_mtime_ns != stamps[c.id]}
    assert redone == {c.id for number, c in enumerate(world.CONCEPTS) if number % 2 == 1}


@pytest.mark.slow
def test_a_failing_second_build_process_is_reported_with_the_fix(tmp_path, capfd):
    # the oracle phase runs in the second process; without a VAE it stops with its own error
    with pytest.raises(SystemExit, match="second build process \\(oracle\\) failed"):
        main(["testbed", "build", "toy", "--quick", "--out", str(tmp_path), "--phases", "oracle"])
    assert "Fix: build it first" in capfd.readouterr().err
    assert not (tmp_path / "oracle").exists()


@pytest.mark.parametrize("shard", ["x", "2/2", "1/2/3"])
def test_a_malformed_lora_shard_is_refused_with_the_expected_form(tmp_path, capsys, shard):
    with pytest.raises(SystemExit) as stop:
        main(["testbed", "build", "toy", "--quick", "--out", str(tmp_path), "--lora-shard", shard])
    assert stop.value.code == 2 and "expected I/N" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_the_base_model_takes_the_free_core_once_the_second_process_ends(monkeypatch):
    import torch

    from harness.toy.build import take_free_core

    class FakeProcess:
        returncode = None

        def poll(self):
            return self.returncode

    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(n))
    monkeypatch.setattr(torch, "get_num_threads", lambda: calls[-1] if calls else 1)
    calls: list[int] = []
    helper = FakeProcess()
    on_step = take_free_core(helper, threads=2)
    on_step(1)
    assert calls == []  # the second process still runs: keep one thread
    helper.returncode = 0
    on_step(2)
    on_step(3)
    assert calls == [2]  # switched once


def test_the_loras_train_on_one_thread_per_process_after_the_base_took_both_cores(tmp_path, monkeypatch):
    import contextlib

    import torch

    from harness.toy import build

    seen: list[int] = []
    monkeypatch.setattr(build, "_second_process", lambda *args, **kwargs: contextlib.nullcontext(None))
    monkeypatch.setattr(build, "build_base", lambda out, budget, on_step=None: on_step(1))  # no second process
    monkeypatch.setattr(build, "build_loras", lambda out, budget, shard: seen.append(torch.get_num_threads()))
    threads = torch.get_num_threads()
    try:
        assert main(["testbed", "build", "toy", "--quick", "--out", str(tmp_path), "--phases", "base,lora",
                     "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert seen == [1]  # two threads here beside the second LoRA process would oversubscribe two cores

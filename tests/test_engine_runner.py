"""The runner: content-addressed resume, kills, failures recorded, determinism across subsets and shards."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from tqdm import tqdm

from harness.io import read_json
from harness.store import iter_failures, iter_images, set_folder
from harness.runner import RunSummary, image_seed, select_sets
from engine_support import make_runner, tiny_testbed


def run_sets(runner, sets, seeds=(0,)):
    summary = RunSummary()
    with tqdm(disable=True) as progress:
        for composition in sets:
            runner.run_set(composition, list(seeds), summary, progress)
    return summary


def test_image_seed_depends_on_seed_and_set_only():
    assert image_seed(1, "n2_a+b") == image_seed(1, "n2_a+b") != image_seed(1, "n2_a+c")
    assert image_seed(42, "anything", "direct") == 42


def test_shards_partition_the_sets(tiny_testbed_dir):
    sets = tiny_testbed(tiny_testbed_dir).sets()
    shards = [select_sets(sets, shard=f"{i}/3") for i in range(3)]
    assert sorted(s.id for shard in shards for s in shard) == sorted(s.id for s in sets)
    with pytest.raises(ValueError, match="i/n"):
        select_sets(sets, shard="3")


@pytest.mark.slow
def test_rerun_skips_and_kill_loses_only_the_image_in_flight(tiny_testbed_dir, tmp_path, monkeypatch):
    testbed = tiny_testbed(tiny_testbed_dir)
    sets = select_sets(testbed.sets(), n=[2], limit=3)
    runner = make_runner(testbed, tmp_path, "switch")
    calls = Counter()
    real_generate = runner.generate_batch

    def killed_on_third(*args, **kwargs):
        calls["generate"] += 1
        if calls["generate"] == 3:
            raise KeyboardInterrupt  # a kill mid-image (a batch of one): nothing of it may be recorded
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(runner, "generate_batch", killed_on_third)
    with pytest.raises(KeyboardInterrupt):
        run_sets(runner, sets, seeds=(0, 1))
    assert len(list(iter_images(tmp_path))) == 2
    assert not list(tmp_path.rglob("*.tmp"))

    resumed = make_runner(testbed, tmp_path, "switch")
    summary = run_sets(resumed, sets, seeds=(0, 1))
    assert (summary.generated, summary.skipped) == (4, 2)
    again = run_sets(make_runner(testbed, tmp_path, "switch"), sets, seeds=(0, 1))
    assert (again.generated, again.skipped) == (0, 6)


@pytest.mark.slow
def test_changed_setting_never_reuses_a_stale_image(tiny_testbed_dir, tmp_path):
    testbed = tiny_testbed(tiny_testbed_dir)
    sets = select_sets(testbed.sets(), limit=1)
    run_sets(make_runner(testbed, tmp_path, "switch", interval=2), sets)
    first = next(iter_images(tmp_path))
    summary = run_sets(make_runner(testbed, tmp_path, "switch", interval=3), sets)
    assert summary.generated == 1
    assert next(iter_images(tmp_path)).key != first.key
    changed = tiny_testbed(tiny_testbed_dir, sampling={"steps": 7, "guidance_scale": 7.5, "height": 32, "width": 32,
                                                        "lora_scale": 0.8})
    assert run_sets(make_runner(changed, tmp_path, "switch", interval=3), sets).generated == 1


@pytest.mark.slow
def test_same_image_from_any_subset_or_shard(tiny_testbed_dir, tmp_path):
    testbed = tiny_testbed(tiny_testbed_dir)
    sets = select_sets(testbed.sets(), n=[2], limit=4)
    run_sets(make_runner(testbed, tmp_path / "all", "merge"), sets)
    run_sets(make_runner(testbed, tmp_path / "shard", "merge"), select_sets(sets, shard="1/2")[::-1])
    for image in iter_images(tmp_path / "shard"):
        twin = set_folder(tmp_path / "all", "merge", image.set_id) / image.path.name
        assert image.path.read_bytes() == twin.read_bytes()


def test_missing_lora_fails_its_set_with_reason_and_keeps_going(tiny_testbed_dir, tmp_path):
    testbed = tiny_testbed(tiny_testbed_dir)
    ghost = testbed.loras["clothing_1"].__class__(**{**vars(testbed.loras["clothing_1"]), "path": tmp_path / "gone.safetensors"})
    testbed.loras["clothing_1"] = ghost
    sets = select_sets(testbed.sets(), ids=["n2_character_1+clothing_1", "n2_character_1+style_1"])
    summary = run_sets(make_runner(testbed, tmp_path, "merge"), sets)
    assert summary.generated == 1 and sum(summary.failed.values()) == 1
    failure = next(iter_failures(tmp_path))
    assert failure["set_id"] == "n2_character_1+clothing_1"
    assert "gone.safetensors" in failure["reason"] and "Fix" in failure["reason"]


def test_metadata_records_schedule_weights_and_truncation(tiny_testbed_dir, tmp_path):
    long_prompt = "a picture, " + ", ".join(f"word{i}" for i in range(60))
    # the triggers come first, so the encoder still reads them: the cut-off words are recorded, not fatal
    testbed = tiny_testbed(tiny_testbed_dir, prompt=long_prompt, prompt_template="{triggers}, {prompt}")
    sets = select_sets(testbed.sets(), n=[3], limit=1)
    run_sets(make_runner(testbed, tmp_path, "w_switch", interval=2), sets)
    record = next(iter_images(tmp_path)).metadata
    assert len(record["plan"]["schedule"]) == 6
    assert sum(record["plan"]["importance"].values()) == pytest.approx(1.0)
    assert record["truncation"]["prompt"]["tokens"] > 77
    meta = read_json(next(tmp_path.rglob("metadata.json")))
    assert all(lora["sha256"] and len(lora["sha256"]) == 64 for lora in meta["set"]["loras"])


@pytest.mark.slow
def test_cli_run_then_rerun_skips(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "harness", "run", "method=switch", "limit=2", "progress=false",
               f"output_dir={tmp_path}", "testbed.sampling.steps=4", "hydra.run.dir=" + str(tmp_path / "logs")]
    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "generated 2, skipped 0" in first.stdout
    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert "generated 0, skipped 2" in second.stdout
    assert len(list(iter_images(tmp_path))) == 2


def test_trigger_missing_from_prompt_is_a_recorded_failure(tiny_testbed_dir, tmp_path):
    testbed = tiny_testbed(tiny_testbed_dir, prompt_template="{prompt}")
    summary = run_sets(make_runner(testbed, tmp_path, "merge"), select_sets(testbed.sets(), limit=1))
    assert summary.failed == Counter({"no trigger phrase": 1})
    assert "prompt_template" in next(iter_failures(tmp_path))["reason"]


def test_missing_base_model_error_names_path_and_fix(tmp_path):
    from harness.pipelines import ModelLoadError, load_pipeline

    with pytest.raises(ModelLoadError, match=r"nowhere.*Fix: point `model.base`"):
        load_pipeline(tmp_path / "nowhere", device="cpu")


def test_limit_per_n_is_an_even_stratified_subset(tiny_testbed_dir):
    sets = tiny_testbed(tiny_testbed_dir, n=[2, 3]).sets()
    chosen = select_sets(sets, limit_per_n=2)
    assert [s.n for s in chosen] == [2, 2, 3, 3]
    of_two = [s for s in sets if s.n == 2]
    assert chosen[0] == of_two[0] and chosen[1] == of_two[len(of_two) // 2]


def test_a_prompt_cut_before_every_trigger_fails_the_set(tiny_testbed_dir, tmp_path):
    long_prompt = "a picture, " + ", ".join(f"word{i}" for i in range(60))
    testbed = tiny_testbed(tiny_testbed_dir, prompt=long_prompt)  # "{prompt}, {triggers}": triggers past 77 tokens
    sets = select_sets(testbed.sets(), n=[2], limit=1)
    summary = run_sets(make_runner(testbed, tmp_path, "merge"), sets)
    assert summary.generated == 0 and not list(iter_images(tmp_path))
    failure = read_json(next(tmp_path.rglob("metadata.json")))["failed"]["0"]
    assert "cuts off every trigger phrase" in failure["reason"] and "Fix" in failure["reason"]

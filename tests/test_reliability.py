"""Faults a real user meets: non-finite sampling, a second setting in one label, cut score rows, corrupt images,
config typos, partial or unsupported LoRA files, degenerate plans, a full disk. Each must end in a clear
record or message, and lose nothing already computed."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_support import make_runner, tiny_testbed
from metrics_support import CHARACTER_A, write_results
from safetensors.torch import load_file, save_file

from harness import cli
from harness.lora import LoraError, LoraSpec, load_adapter, lora_identity
from harness.methods import METHODS, ImageContext
from harness.metrics.base import METRICS, Metric
from harness.pipelines import load_pipeline
from harness.runner import RunSummary, run, select_sets
from harness.sampler import Sampler, SamplingSettings
from harness.scoring import score_results
from harness.settings import ConfigError, RunSettings
from harness.io import read_json
from harness.store import iter_images, load_scores, scores_path
from harness.workflow import rebuild_outputs


def run_sets(runner, sets) -> RunSummary:
    summary = RunSummary()

    class Quiet:
        def update(self, _count: int) -> None:
            pass

    for composition in sets:
        runner.run_set(composition, [0], summary, Quiet())
    return summary


class NaNComposite(METHODS.get("composite")):
    """A method whose combination overflows: what a huge LoRA or guidance scale does to real latents."""

    def combine(self, step, predictions, guidance_scale):
        return torch.full_like(predictions[0][0], float("nan"))


def test_non_finite_latents_fail_the_image_and_save_nothing(tiny_testbed_dir, tmp_path):
    testbed = tiny_testbed(tiny_testbed_dir)
    runner = make_runner(testbed, tmp_path, "composite")
    runner.method = NaNComposite()
    summary = run_sets(runner, select_sets(testbed.sets(), n=[2], limit=1))
    assert summary.generated == 0 and summary.failed_count == 1
    assert not list(tmp_path.rglob("*.png"))
    failure = read_json(next(tmp_path.rglob("metadata.json")))["failed"]["0"]
    assert "NonFiniteError" in failure["reason"] and "step 1 of" in failure["reason"]


class Fixed(Metric):
    def __init__(self, value: float) -> None:
        super().__init__(value=value)
        self.registered_name = "fixed"

    def score(self, images):
        for image in images:
            yield self.row(image, self.settings["value"])


def test_a_metric_never_stores_nan(tmp_path):
    results = write_results(tmp_path / "r", {("m", "s"): [np.zeros((8, 8, 3), np.uint8)]}, {"s": [CHARACTER_A]})
    row = Fixed(float("nan")).row(next(iter_images(results)), float("nan"))
    assert row.value is None and row.status == "error" and "non-finite" in row.reason


def _settings(tmp_path: Path, **changes) -> RunSettings:
    return RunSettings(output_dir=tmp_path, limit=1, n=(2,), device="cpu", progress=False, **changes)


def test_a_label_holds_one_setting(tiny_testbed_dir, tmp_path):
    merge = METHODS.get("merge")()
    run(tiny_testbed(tiny_testbed_dir), merge, "merge", _settings(tmp_path))
    other_scale = tiny_testbed(tiny_testbed_dir, sampling={"steps": 6, "guidance_scale": 7.5, "height": 32,
                                                           "width": 32, "lora_scale": 0.4})
    with pytest.raises(ConfigError, match=r"images/merge already holds .*lora_scale: 0\.8 there, 0\.4 now.*method\.label=merge_"):
        run(other_scale, merge, "merge", _settings(tmp_path))
    before = read_json(next(tmp_path.rglob("metadata.json")))["images"]["0"]["key"]
    run(other_scale, merge, "merge", _settings(tmp_path, overwrite=True))  # asked for: regenerated
    assert read_json(next(tmp_path.rglob("metadata.json")))["images"]["0"]["key"] != before
    run(other_scale, merge, "merge_scale_0.4", _settings(tmp_path))  # or its own label, beside the first
    assert {path.name for path in (tmp_path / "images").iterdir()} == {"merge", "merge_scale_0.4"}


@pytest.mark.slow
def test_a_hydra_sweep_labels_its_points(tmp_path):
    """`-m testbed.sampling.lora_scale=0.4,1.0` writes two folders, not one overwritten twice."""
    cli.run_main(["-m", "method=single", "testbed.sampling.lora_scale=0.4,1.0", "limit=1", "n=[2]",
                  "progress=false", "score=false", f"output_dir={tmp_path}", "testbed.sampling.steps=3",
                  f"hydra.sweep.dir={tmp_path / 'logs'}"])
    labels = sorted(path.name for path in (tmp_path / "images").iterdir())
    # every override that changes images names the point (steps too), run options (limit, n, ...) do not
    assert labels == ["single_lora_scale=0.4_steps=3", "single_lora_scale=1.0_steps=3"]


def test_rows_cut_before_their_mark_are_scored_again(tmp_path):
    images = {("m", "s"): [np.full((8, 8, 3), 10 * i, np.uint8) for i in range(3)]}
    results = write_results(tmp_path / "r", images, {"s": [CHARACTER_A]})
    METRICS.register("fixed_value")(FixedValue)
    score_results(results, {"fixed_value": {}}, progress=False)
    metric = FixedValue()
    marks = scores_path(results, "fixed_value", metric.key, "m").with_suffix(".done")
    lines = marks.read_text().splitlines()
    marks.write_text("\n".join(lines[:-1]) + "\n")  # a kill between the rows and the mark of the last image
    summary = score_results(results, {"fixed_value": {}}, progress=False)[0]
    assert summary["scored"] == 1 and summary["skipped"] == 2
    assert len(load_scores(results)) == 3  # the rescored image's rows replace the old ones


class FixedValue(Metric):
    def score(self, images):
        for image in images:
            yield self.row(image, 1.0)


def test_an_all_error_metric_does_not_say_ok(tmp_path, capsys):
    results = write_results(tmp_path / "r", {("m", "s"): [np.zeros((8, 8, 3), np.uint8)]}, {"s": [CHARACTER_A]})
    METRICS.register("always_fails")(AlwaysFails)
    summary = score_results(results, {"always_fails": {}}, progress=False)[0]
    assert summary["status"] == "error" and "status error" in capsys.readouterr().out


class AlwaysFails(Metric):
    def score(self, images):
        raise RuntimeError("backbone exploded")


def test_a_corrupt_image_is_regenerated_and_pictures_survive_it(tiny_testbed_dir, tmp_path):
    testbed = tiny_testbed(tiny_testbed_dir)
    sets = select_sets(testbed.sets(), n=[2], limit=1)
    run_sets(make_runner(testbed, tmp_path), sets)
    image = next(iter_images(tmp_path))
    good = image.path.read_bytes()
    image.path.write_bytes(b"not a png at all")
    rebuild_outputs(tmp_path)  # the grid draws an 'unreadable' cell instead of crashing
    summary = run_sets(make_runner(testbed, tmp_path), sets)
    assert summary.generated == 1 and image.path.read_bytes() == good


def test_config_typos_are_errors(tmp_path):
    from hydra import compose, initialize_config_dir

    from harness.config import RunConfig
    from harness.paths import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        with pytest.raises(ConfigError, match=r"no setting intervall.*interval, timing"):
            RunConfig.from_hydra(compose("config", overrides=["method=switch", "+method.intervall=3"]))
        if not torch.cuda.is_available():
            with pytest.raises(ConfigError, match="device=cuda: CUDA is not available"):
                RunConfig.from_hydra(compose("config", overrides=["device=cuda"]))
    with pytest.raises(ConfigError, match=r"n=\[9\].*no sets of size \[9\]"):
        select_sets([s for s in []] or tiny_sets(), n=[9])


def tiny_sets():
    from harness.testbeds import CompositionSet

    return [CompositionSet("n2_a+b", (LoraSpec("a", "a", "character", ("x",), Path("a")),) * 2)]


def _pipe(tiny_testbed_dir):
    return load_pipeline(tiny_testbed_dir / "base", device="cpu")


def _spec(lora_id: str, path: Path) -> LoraSpec:
    return LoraSpec(lora_id, lora_id, "character", (f"trig {lora_id}",), path)


def test_a_lora_that_matches_in_part_is_reported_or_refused(tiny_testbed_dir, tmp_path, caplog):
    state = load_file(str(tiny_testbed_dir / "lora" / "character_1.safetensors"))
    unet_keys = sorted(k for k in state if k.startswith("unet.") and k.endswith("lora_A.weight"))
    # one extra layer that the model does not have
    partial = dict(state)
    partial["unet.nowhere.to_q.lora_A.weight"] = torch.zeros(4, 8)
    partial["unet.nowhere.to_q.lora_B.weight"] = torch.zeros(8, 4)
    save_file(partial, str(tmp_path / "partial.safetensors"))
    report = load_adapter(_pipe(tiny_testbed_dir), _spec("partial", tmp_path / "partial.safetensors"))
    assert report["layers_in_file"]["unet"] == len(unet_keys) + 1
    assert report["layers_applied"]["unet"] == len(unet_keys)
    assert "partial" in caplog.text and "layers applied" in caplog.text
    # most layers foreign: refused
    keep = {unet_keys[0], unet_keys[0].replace("lora_A", "lora_B")}  # one real layer, the rest renamed away
    foreign = {(k if k in keep or not k.startswith("unet.") else k.replace("unet.", "unet.elsewhere_", 1)): v.clone()
               for k, v in state.items()}
    save_file(foreign, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(LoraError, match=r"matches the base model only in part.*lora_min_applied"):
        load_adapter(_pipe(tiny_testbed_dir), _spec("foreign", tmp_path / "foreign.safetensors"))


def test_a_unet_only_lora_is_not_recorded_on_the_text_encoder(tiny_testbed_dir, tmp_path):
    state = load_file(str(tiny_testbed_dir / "lora" / "character_1.safetensors"))
    save_file({k: v for k, v in state.items() if k.startswith("unet.")}, str(tmp_path / "unet_only.safetensors"))
    pipe = _pipe(tiny_testbed_dir)
    spec = _spec("unet_only", tmp_path / "unet_only.safetensors")
    load_adapter(pipe, spec)
    sampler = Sampler(pipe)
    context = ImageContext([spec], 0.8, "a picture, trig unet_only", 3, sampler.embed_without_loras)
    _, plan = sampler.denoise(METHODS.get("merge")(), context, "", SamplingSettings(3, 7.5, 32, 32), 0)
    assert plan.text_encoder_adapters == {} and plan.notes["no_text_encoder_weights"] == ["unet_only"]


def test_editing_a_peft_adapter_config_changes_the_lora_identity(tmp_path):
    weights = tmp_path / "adapter_model.safetensors"
    save_file({"base_model.model.down_blocks.0.x.lora_A.weight": torch.zeros(2, 2)}, str(weights))
    spec = _spec("peft", weights)
    config = tmp_path / "adapter_config.json"
    config.write_text(json.dumps({"r": 4, "lora_alpha": 16}))
    first = lora_identity(spec)
    config.write_text(json.dumps({"r": 4, "lora_alpha": 64}))
    assert lora_identity(spec) != first


def test_a_loha_file_is_named_as_unsupported(tiny_testbed_dir, tmp_path):
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.hada_w1_a": torch.zeros(4, 2),
               "lora_unet_down_blocks_0_attentions_0_proj_in.hada_w1_b": torch.zeros(2, 4)},
              str(tmp_path / "loha.safetensors"))
    with pytest.raises(LoraError, match=r"LoHa file \(LyCORIS\).*not supported.*Fix"):
        load_adapter(_pipe(tiny_testbed_dir), _spec("loha", tmp_path / "loha.safetensors"))


def test_a_switch_with_too_few_steps_says_so(caplog):
    from harness.methods import builtin

    builtin._warned.clear()  # the console line is said once per process
    loras = [LoraSpec(name, name, "character", ("x",), Path(name)) for name in ("a", "b", "c")]
    context = ImageContext(loras, 0.8, "a picture, x", 4, lambda text: torch.ones(3))
    plan = METHODS.get("switch")(interval=5).prepare(context)
    assert "2 of 3 LoRAs never run (b, c)" in plan.notes["degenerate"] and "degenerates" in caplog.text


def test_w_switch_keeps_raw_importances_and_flags_uniform_weights():
    loras = [LoraSpec(name, name, "character", (f"{name} word",), Path(name)) for name in ("a", "b")]
    context = ImageContext(loras, 0.8, "a picture, a word, b word", 20, lambda text: torch.ones(3))
    plan = METHODS.get("w_switch")().prepare(context)  # every ablation leaves v(p) unchanged: importance 0
    assert plan.notes["raw_importance"] == {"a": pytest.approx(0.0), "b": pytest.approx(0.0)}
    assert "uniform" in plan.notes["degenerate_weights"] and plan.importance == {"a": 0.5, "b": 0.5}


def test_a_full_disk_ends_in_one_line(tiny_testbed_dir, tmp_path, monkeypatch, capsys):
    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.png"))

    monkeypatch.setattr("harness.runner.atomic_write", full)
    with pytest.raises(SystemExit) as exit_info:
        cli.run_main(["limit=1", "n=[2]", "progress=false", "score=false", f"output_dir={tmp_path}",
                      "testbed.sampling.steps=3", f"hydra.run.dir={tmp_path / 'logs'}"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "error: " in err and "disk is full" in err and "Traceback" not in err


def test_a_diffusers_lora_with_alpha_other_than_rank_loads_at_alpha_over_rank(tiny_testbed_dir, tmp_path):
    """The file's lora_adapter_metadata (alpha) reaches the adapter: alpha = 2 x rank doubles the scaling."""
    from harness.training.lora_file import adapter_config, save_lora_file

    state = load_file(str(tiny_testbed_dir / "lora" / "character_1.safetensors"))
    unet = {key[len("unet."):]: value for key, value in state.items() if key.startswith("unet.")}
    targets = sorted({key.split(".lora_")[0].rsplit(".", 1)[-1] for key in unet})
    rank = next(value.shape[0] for key, value in unet.items() if key.endswith("lora_A.weight"))
    scales = {}
    for alpha in (rank, 2 * rank):
        path = save_lora_file(tmp_path / f"alpha{alpha}.safetensors",
                              {"unet": (unet, adapter_config(rank, alpha, targets))}, {"trigger": "x"})
        pipe = _pipe(tiny_testbed_dir)
        load_adapter(pipe, _spec(f"a{alpha}", path))
        layer = next(m for m in pipe.unet.modules() if hasattr(m, "scaling") and f"a{alpha}" in m.scaling)
        scales[alpha] = layer.scaling[f"a{alpha}"]
    assert scales[2 * rank] == pytest.approx(2 * scales[rank]) and scales[rank] == pytest.approx(1.0)


def _start(command: list[str], env: dict) -> "subprocess.Popen":
    import subprocess

    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


@pytest.mark.slow
def test_kill_9_during_generation_and_scoring_loses_only_work_in_flight(tmp_path):
    """A real SIGKILL of `run` mid-generation, then of `score` mid-scoring: the reruns finish the rest, every
    stored image is intact, and every image ends with exactly one complete set of rows."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run_command = [sys.executable, "-m", "harness", "run", "method=composite", "limit=6", "progress=false",
                   "score=false", f"output_dir={tmp_path}", "testbed.sampling.steps=8",
                   f"hydra.run.dir={tmp_path / 'logs'}"]
    process = _start(run_command, env)
    deadline = time.time() + 240
    while len(list(tmp_path.rglob("seed0.png"))) < 2 and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = {path: path.read_bytes() for path in tmp_path.rglob("seed0.png")}
    assert 2 <= len(done_before) < 6
    subprocess.run(run_command, check=True, capture_output=True, env=env, timeout=300)
    images = list(iter_images(tmp_path))
    assert len(images) == 6 and all(path.read_bytes() == data for path, data in done_before.items())

    METRIC = "fixed_slow"
    score_command = [sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, 'tests'); import harness\n"
        "from harness.metrics.base import METRICS, Metric\n"
        "class Slow(Metric):\n"
        "    batch_size = 1\n"
        "    def score(self, images):\n"
        "        for image in images:\n"
        "            time.sleep(0.5); yield self.row(image, 1.0, 'a'); yield self.row(image, 2.0, 'b')\n"
        f"METRICS.register('{METRIC}')(Slow)\n"
        "from harness.scoring import score_results\n"
        f"score_results({str(tmp_path)!r}, {{'{METRIC}': {{}}}}, progress=False)\n")]
    process = _start(score_command, {**env, "PYTHONPATH": str(Path.cwd())})
    marks = tmp_path / "scores" / METRIC
    while not list(marks.rglob("*.done")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.1)
    time.sleep(0.6)
    process.send_signal(signal.SIGKILL)
    process.wait()
    subprocess.run(score_command, check=True, capture_output=True, env={**env, "PYTHONPATH": str(Path.cwd())},
                   timeout=120)
    rows = load_scores(tmp_path)
    rows = rows[rows["metric"] == METRIC]
    assert len(rows) == 12 and set(rows.groupby("image_key").size()) == {2}


def test_the_leaderboard_says_what_tells_two_labels_of_one_method_apart(tiny_testbed_dir, tmp_path):
    single = METHODS.get("single")()
    sampling = {"steps": 3, "guidance_scale": 7.5, "height": 32, "width": 32}
    for scale in (0.4, 1.0):
        testbed = tiny_testbed(tiny_testbed_dir, sampling={**sampling, "lora_scale": scale})
        run(testbed, single, f"single_{scale}", _settings(tmp_path))
    run(tiny_testbed(tiny_testbed_dir, sampling={**sampling, "lora_scale": 0.8}), METHODS.get("merge")(), "merge",
        _settings(tmp_path))
    METRICS.register("fixed_value_meta")(FixedValue)
    score_results(tmp_path, {"fixed_value_meta": {}}, progress=False)
    paths = rebuild_outputs(tmp_path)
    methods = json.loads(paths["leaderboard_meta"].read_text())["methods"]
    assert methods["single_0.4"]["differs"] == {"lora_scale": 0.4}
    assert methods["single_1.0"]["differs"] == {"lora_scale": 1.0}
    assert methods["merge"]["differs"] == {} and methods["merge"]["settings"]["lora_scale"] == 0.8
    page = paths["report"].read_text()
    assert "differs by" in page and "lora_scale=0.4" in page

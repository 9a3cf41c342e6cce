"""The seams of the layering: typed settings from the config, the results-folder store, plugins by entry point."""

from __future__ import annotations

import multiprocessing
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import harness  # noqa: F401
from harness import config as harness_config
from harness.config import RunConfig
from harness.metrics.base import METRICS
from harness.paths import CONF_DIR
from harness.settings import ConfigError, RunSettings, Shard
from harness.store import (
    new_set_metadata, parse_pairwise_sub_metric, pairwise_sub_metric, read_set_metadata, update_set_metadata,
)
from harness import testbeds


def compose_config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_hydra_config_becomes_typed_objects(tmp_path: Path) -> None:
    cfg = compose_config("testbed=toy", "method=switch", "method.interval=3", "shard=1/2", "limit=4",
                         f"output_dir={tmp_path}", "seeds=[0,1]")
    config = RunConfig.from_hydra(cfg)
    assert isinstance(config.settings, RunSettings)
    assert config.settings.shard == Shard(1, 2) and config.settings.limit == 4 and config.settings.seeds == (0, 1)
    assert config.settings.output_dir == tmp_path
    assert config.method.name == "switch" and config.method.settings["interval"] == 3
    assert config.method_label == "switch"
    assert config.testbed.ground_truth == "oracle/all_present"
    assert "oracle/all_present" in config.testbed.primary_columns
    assert set(config.metrics) == {"oracle", "clip_text", "arcface", "image_ref"}


@pytest.mark.parametrize("override, message", [
    ("limit=-1", "limit=-1"), ("limit=0", "limit=0"), ("seeds=[]", "seeds=[]"), ("shard=3/2", "shard=3/2"),
    ("shard=1", "i/n"), ("seed_mode=random", "seed_mode"), ("batching=fast", "batching"), ("dtype=fp8", "dtype"),
])
def test_bad_run_settings_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        RunConfig.from_hydra(compose_config("testbed=toy", override))


def test_tiny_testbed_is_built_explicitly(tmp_path: Path) -> None:
    config = harness_config.testbed_config("tiny")
    config.update(manifest=str(tmp_path / "tiny" / "lora_info.json"), lora_dir=str(tmp_path / "tiny" / "lora"))
    with pytest.raises(testbeds.TestbedError, match="not found"):  # loading alone builds nothing
        testbeds.load_testbed(config)
    assert not (tmp_path / "tiny").exists()
    testbed = harness_config.load_testbed_config(config)  # the explicit step builds it
    assert (tmp_path / "tiny" / "lora_info.json").exists() and len(testbed.loras) == 6


def test_the_oracle_plugs_in_through_the_entry_point() -> None:
    names = {point.name: point.value for point in entry_points(group="harness.metrics")}
    assert names.get("oracle") == "harness.toy.oracle_metric:ToyOracleMetric"
    assert METRICS.get("oracle").__module__ == "harness.toy.oracle_metric"


def test_pairwise_names_round_trip() -> None:
    assert parse_pairwise_sub_metric(pairwise_sub_metric("composition", "w_switch")) == ("composition", False,
                                                                                         "w_switch")
    assert parse_pairwise_sub_metric(pairwise_sub_metric("quality", "merge", consistency=True)) == ("quality", True,
                                                                                                   "merge")
    assert parse_pairwise_sub_metric("all_present") is None


def _write_seeds(folder: str, seeds: list[int]) -> None:
    for seed in seeds:
        def add(metadata: dict, seed: int = seed) -> None:
            metadata["images"][str(seed)] = {"file": f"seed{seed}.png"}

        update_set_metadata(folder, add, lambda: new_set_metadata("t", {"label": "m"}, {"id": "s"}))


def test_two_writers_keep_every_record(tmp_path: Path) -> None:
    """Two processes updating one metadata.json at once (e.g. two seed ranges) lose nothing."""
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write_seeds, args=(str(tmp_path), list(range(start, 60, 2))))
               for start in (0, 1)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
        assert writer.exitcode == 0
    assert sorted(map(int, read_set_metadata(tmp_path)["images"])) == list(range(60))

"""Every method has a conf/method YAML that builds it, and `run -m method=...` reaches every method."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import harness  # noqa: F401
from harness.config import RunConfig
from harness.methods import METHODS
from harness.paths import CONF_DIR

YAMLS = sorted(path.stem for path in (Path(CONF_DIR) / "method").glob("*.yaml"))


def test_every_registered_method_has_a_yaml() -> None:
    assert set(METHODS.names()) <= set(YAMLS)
    assert {"cmlora", "loratorio", "klora", "merge_cat", "merge_svd", "merge_ties", "merge_dare"} <= set(YAMLS)


@pytest.mark.parametrize("name", YAMLS)
def test_yaml_builds_its_method_with_its_settings(name: str, tmp_path: Path) -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["testbed=toy", f"method={name}", f"output_dir={tmp_path}"])
    config = RunConfig.from_hydra(cfg)
    assert config.method.name == name and config.method_label == name
    documented = METHODS.get(name).__doc__ or ""
    assert len(documented.strip()) > 40, f"{name}: its docstring should state its formula and source"

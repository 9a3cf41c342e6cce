"""Where the Hydra config stops: one composed ``DictConfig`` becomes typed, validated objects, once.

``RunConfig.from_hydra(cfg)`` returns the testbed (``harness.testbeds.Testbed``), the method instance and its
label, the run's ``RunSettings`` and the selected metrics (``{name: settings}``); nothing below the command
line sees the raw config. Building the tiny random testbed on first use is an explicit step here
(``prepare_testbed_assets``), not a side effect of loading a testbed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from harness.methods import CompositionMethod, build_method
from harness.paths import CONF_DIR, resolve_path
from harness.settings import ConfigError, RunSettings, Shard
from harness.testbeds import Testbed, load_testbed
from harness.tiny import build_tiny_testbed

log = logging.getLogger("harness.config")


def metric_config(name: str, conf_dir: str | Path = CONF_DIR) -> dict[str, Any]:
    """Settings of ``conf/metric/<name>.yaml`` as a plain dict."""
    path = Path(conf_dir) / "metric" / f"{name}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in path.parent.glob("*.yaml")))
        raise ConfigError(f"No metric config {path}. Known metrics: {known}. Add conf/metric/{name}.yaml "
                          f"with `name: {name}` and its settings.")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def testbed_config(name: str, conf_dir: str | Path = CONF_DIR) -> dict[str, Any]:
    """``conf/testbed/<name>.yaml`` as a plain dict (for commands that take a testbed by name)."""
    path = Path(conf_dir) / "testbed" / f"{name}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in path.parent.glob("*.yaml")))
        raise ConfigError(f"No testbed config {path}. Known testbeds: {known}.")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def prepare_testbed_assets(config: dict[str, Any]) -> None:
    """Build the assets a testbed builds itself (``build: tiny``) when they are missing."""
    if config.get("build") != "tiny":
        return
    manifest = resolve_path(config["manifest"])
    if not manifest.exists():
        log.info("building the tiny random testbed in %s (first use)", manifest.parent)
        build_tiny_testbed(manifest.parent)


def load_testbed_config(config: dict[str, Any]) -> Testbed:
    prepare_testbed_assets(config)
    return load_testbed(config)


def selected_metrics(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """The metrics chosen with ``metric=[...]``, else the testbed's default ``metrics`` list."""
    chosen = OmegaConf.to_container(cfg.metrics, resolve=True) if cfg.get("metrics") else {}
    if isinstance(chosen, list):  # `metrics: [clip_text, ...]` names only: read each conf/metric/<name>.yaml
        chosen = {name: metric_config(name) for name in chosen}
    return chosen or {name: metric_config(name) for name in cfg.testbed.get("metrics") or []}


def _optional_tuple(value: Any) -> tuple | None:
    return None if value is None else tuple(value)


def run_settings(cfg: DictConfig) -> RunSettings:
    """The run options of ``conf/config.yaml`` as a validated ``RunSettings``."""
    return RunSettings(
        output_dir=Path(cfg.output_dir), seeds=_optional_tuple(cfg.seeds), seed_mode=cfg.seed_mode,
        n=_optional_tuple(cfg.n), sets=_optional_tuple(cfg.sets), limit=cfg.limit,
        limit_per_n=cfg.get("limit_per_n"), shard=Shard.parse(cfg.shard), device=cfg.device, dtype=cfg.dtype,
        batching=cfg.batching, batch_size=cfg.get("batch_size", 1), adapter_cache=cfg.adapter_cache,
        score=bool(cfg.get("score", True)),
        tables=bool(cfg.get("tables", True)), progress=bool(cfg.get("progress", True)),
        overwrite=bool(cfg.get("overwrite", False)), lora_min_applied=float(cfg.get("lora_min_applied", 0.9)),
    )


# Overrides that do not change an image: they never name a sweep point.
NOT_IMAGE_SETTINGS = ("method", "testbed", "metric", "output_dir", "seeds", "n", "sets", "limit", "limit_per_n",
                      "shard", "score", "tables", "progress", "overwrite", "adapter_cache", "lora_min_applied",
                      "method.label", "batch_size")


def sweep_label(label: str, overrides: list[str]) -> str:
    """A sweep point's label: the method's label plus the settings this job overrides that change images
    (``single`` + ``testbed.sampling.lora_scale=0.4`` -> ``single_lora_scale=0.4``), so the points of a
    ``-m`` sweep never share a folder."""
    parts = []
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key in NOT_IMAGE_SETTINGS or key.startswith(("hydra", "metrics.")):
            continue
        parts.append(f"{key.rsplit('.', 1)[-1]}={value}")
    return "_".join([label, *parts]).replace("/", "-")


def _hydra_job_overrides() -> tuple[bool, list[str]]:
    """(is this a multirun job, this job's command-line overrides); (False, []) outside a Hydra app."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return False, []
    hydra_cfg = HydraConfig.get()
    return hydra_cfg.mode == RunMode.MULTIRUN, list(hydra_cfg.overrides.task)


@dataclass
class RunConfig:
    """One ``run``: what to generate (testbed, method), how (settings) and how to score it (metrics)."""

    testbed: Testbed
    method: CompositionMethod
    method_label: str
    settings: RunSettings
    metrics: dict[str, dict[str, Any]]

    @classmethod
    def from_hydra(cls, cfg: DictConfig) -> RunConfig:
        settings = run_settings(cfg)
        method_settings = OmegaConf.to_container(cfg.method, resolve=True)
        name, label = method_settings.pop("name"), method_settings.pop("label", None)
        try:
            method = build_method(name, method_settings)
        except (KeyError, ValueError) as error:
            raise ConfigError(str(error).strip('"')) from None
        testbed = load_testbed_config(OmegaConf.to_container(cfg.testbed, resolve=True))
        label = label or name
        multirun, overrides = _hydra_job_overrides()
        if multirun and not any(o.lstrip("+").startswith("method.label=") for o in overrides):
            label = sweep_label(label, overrides)
        return cls(testbed, method, label, settings, selected_metrics(cfg))

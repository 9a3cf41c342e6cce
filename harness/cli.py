"""Hydra entry points for the config-driven subcommands (``run``, ``score``); config in ``conf/``."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def run_app(cfg: DictConfig) -> None:
    from harness.runner import run

    logging.getLogger("harness").setLevel(logging.INFO)
    run(cfg)


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def score_app(cfg: DictConfig) -> None:
    from omegaconf import OmegaConf

    from harness.runner import selected_metrics
    from harness.scoring import score_from_config

    from harness.tables import refresh_tables

    OmegaConf.set_struct(cfg, False)
    cfg.metrics = selected_metrics(cfg)
    score_from_config(cfg)
    if cfg.get("tables", True):
        refresh_tables(cfg.output_dir)

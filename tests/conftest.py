"""Shared test setup: offline hub, torchvision compatibility, one tiny testbed per session, and every test
leaves process-global state as it found it.

Test helper modules (``engine_support``, ``metrics_support``, ``results_fixture``, ``judge_server``) are
imported one way: ``from engine_support import ...``; pytest puts ``tests/`` on ``sys.path``
(``pythonpath`` in pyproject.toml). Tests marked ``slow`` are left out by ``make test-fast``.
"""

import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import harness  # noqa: E402,F401  (makes torchvision importable before open_clip/diffusers are)
import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def restore_process_state():
    """Give the next test the process this one got: torch's thread count and global RNG, environment
    variables, working directory and logger levels (CLI entry points and training code change them)."""
    threads = torch.get_num_threads()
    rng = torch.get_rng_state()
    environ = dict(os.environ)
    cwd = os.getcwd()
    loggers = {name: logger.level for name, logger in logging.Logger.manager.loggerDict.items()
               if isinstance(logger, logging.Logger)}
    root_level = logging.getLogger().level
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    torch.set_rng_state(rng)
    if dict(os.environ) != environ:
        os.environ.clear()
        os.environ.update(environ)
    if os.getcwd() != cwd:
        os.chdir(cwd)
    for name, level in loggers.items():
        logging.getLogger(name).setLevel(level)
    logging.getLogger().setLevel(root_level)


@pytest.fixture(scope="session")
def tiny_testbed_dir(tmp_path_factory):
    """A random tiny pipeline + six random LoRAs (diffusers, peft, kohya formats)."""
    from harness.tiny import build_tiny_testbed

    folder = tmp_path_factory.mktemp("tiny")
    build_tiny_testbed(folder)
    return folder

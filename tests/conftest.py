"""Shared test setup: offline hub, torchvision compatibility, one tiny testbed per session."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import harness  # noqa: E402,F401  (makes torchvision importable before open_clip/diffusers are)
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_testbed_dir(tmp_path_factory):
    """A random tiny pipeline + six random LoRAs (diffusers, peft, kohya formats)."""
    from harness.tiny import build_tiny_testbed

    folder = tmp_path_factory.mktemp("tiny")
    build_tiny_testbed(folder)
    return folder

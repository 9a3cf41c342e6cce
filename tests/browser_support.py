"""Shared by the browser tests: the system's headless Chromium, or a skip that says how to install it."""

from __future__ import annotations

import shutil

import pytest


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("headless Chromium is not installed (Debian: apt-get install -y chromium; .ci/run installs it)")

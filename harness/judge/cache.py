"""On-disk cache of judge calls: one JSON file per call, named by the hash of everything that determines
the answer (model, server, rubric and version, image bytes hashes, prompt text, sampling settings), so a
rerun makes no calls. Only answers the model actually gave are stored (``ok``, ``refused``,
``parse_error``); transport errors (HTTP 429/500, timeouts) are not, so a rerun retries them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.io import atomic_write_json, read_json, stable_hash


def call_key(request: dict[str, Any]) -> str:
    """The cache key of a call description (a JSON-serialisable dict)."""
    return stable_hash(request, 32)


class JudgeCache:
    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            return read_json(self.path(key))
        except ValueError:  # a damaged entry is treated as absent and overwritten by the next call
            return None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        atomic_write_json(self.path(key), entry)

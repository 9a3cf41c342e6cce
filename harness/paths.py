"""Where things are: the project root, the config folder, and the one rule for resolving a user's path.

Every loader in the harness takes a local path; this module is the only place that decides what a relative
path means (the current folder first, then the project root), so a command behaves the same from any folder.
"""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = PROJECT_ROOT / "conf"


def resolve_path(path: str | Path | None) -> Path | None:
    """Relative paths are taken from the current folder if they exist there, else from the project root."""
    if path is None:
        return None
    path = Path(str(path)).expanduser()
    if path.is_absolute() or path.exists():
        return path
    return PROJECT_ROOT / path


def local_or_hub(source: str | Path | None) -> str | Path | None:
    """A model path resolved like every other path; anything that is not on disk (a hub id) is returned as is."""
    resolved = resolve_path(source)
    return resolved if resolved is not None and resolved.exists() else source

"""The results folder: the one module that knows its layout and reads and writes what lies in it.

Layout of a results folder (``results/<testbed>/`` by default)::

    testbed.json                                      the testbed's name and analysis settings (ground truth,
                                                      primary columns), written by ``run`` and ``score``
    images/<method_label>/<set_id>/seed<seed>.png     one file per generated image
    images/<method_label>/<set_id>/metadata.json      {"testbed": .., "method": .., "set": ..,
                                                       "images": {"<seed>": record}, "failed": {"<seed>": {..}}}
    scores/<metric>/<metric_key>/<method_label>.jsonl score rows (ScoreRow), append-only
    scores/<metric>/<metric_key>/<method_label>.done  one line per image whose rows were all written
    scores.parquet, scores.csv, leaderboard.csv, leaderboard_long.csv, leaderboard.meta.json,
    coverage.csv, judge_wtl.csv, validity.csv         tables (``python -m harness table``)
    pictures/, report.html                            pictures and the static report
    ratings.sqlite                                    human ratings (``python -m harness rate``), SQLite in WAL
                                                      mode; exported as rows of metric ``human`` under scores/
    agreement.csv                                     human ratings vs metrics (``python -m harness agreement``)

``metadata.json`` is rewritten atomically under a file lock after every image (read, merge, write), so a
killed run loses at most the images in flight (one batch) and two runs writing one folder keep each other's records.
A record's ``key`` is the content-addressed hash of everything that determines the pixels.

The LLM judge's pairwise rows name the other method in the sub-metric: ``<criterion>_vs_<other label>`` and
``<criterion>_consistent_vs_<other label>``; ``pairwise_sub_metric`` and ``parse_pairwise_sub_metric`` are the
only places that spell that.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from filelock import FileLock

from harness.io import atomic_write_json, atomic_write_text, read_json

logger = logging.getLogger(__name__)

# --- the layout ------------------------------------------------------------------------------------------------
IMAGES_DIR = "images"
SCORES_DIR = "scores"
METADATA_FILE = "metadata.json"
TESTBED_FILE = "testbed.json"
SCORES_STEM = "scores"  # scores.parquet and scores.csv: the tidy table
LEADERBOARD_FILE = "leaderboard.csv"
LEADERBOARD_LONG_FILE = "leaderboard_long.csv"
LEADERBOARD_META_FILE = "leaderboard.meta.json"
COVERAGE_FILE = "coverage.csv"
JUDGE_FILE = "judge_wtl.csv"
VALIDITY_FILE = "validity.csv"
PICTURES_DIR = "pictures"
REPORT_FILE = "report.html"
RATINGS_FILE = "ratings.sqlite"
AGREEMENT_FILE = "agreement.csv"


def image_filename(seed: int) -> str:
    return f"seed{seed}.png"


def image_id(method_label: str, set_id: str, seed: int) -> str:
    return f"{method_label}/{set_id}/seed{seed}"


def method_folder(results_dir: str | Path, method_label: str) -> Path:
    """``<results>/images/<method_label>/``: every set of one method label."""
    return Path(results_dir) / IMAGES_DIR / method_label


def set_folder(results_dir: str | Path, method_label: str, set_id: str) -> Path:
    """``<results>/images/<method_label>/<set_id>/``: one set's images and their metadata.json."""
    return method_folder(results_dir, method_label) / set_id


def is_results_folder(results_dir: str | Path) -> bool:
    return (Path(results_dir) / IMAGES_DIR).is_dir() or (Path(results_dir) / SCORES_DIR).is_dir()


def results_dir_of(image_path: str | Path) -> Path | None:
    """The results folder holding ``images/<method>/<set>/seed<N>.png``, or None if the path is elsewhere."""
    parents = Path(image_path).parents
    if len(parents) > 3 and parents[2].name == IMAGES_DIR:
        return parents[3]
    return None


# --- the testbed's analysis settings ------------------------------------------------------------------------------
def write_testbed_info(results_dir: str | Path, info: dict[str, Any]) -> Path:
    """Record what the tables need to know about the testbed (name, ground truth, primary columns)."""
    path = Path(results_dir) / TESTBED_FILE
    if read_json(path) != info:
        atomic_write_json(path, info)
    return path


def read_testbed_info(results_dir: str | Path) -> dict[str, Any]:
    """What ``write_testbed_info`` stored; ``{}`` for a folder made before it existed or by hand."""
    return read_json(Path(results_dir) / TESTBED_FILE, default={}) or {}


# --- image metadata -----------------------------------------------------------------------------------------------
def new_set_metadata(testbed: str, method: dict[str, Any], composition: dict[str, Any]) -> dict[str, Any]:
    """An empty ``metadata.json`` for one method x set: ``method`` has name, label, key, settings;
    ``composition`` has id, n, loras."""
    return {"testbed": testbed, "method": method, "set": composition, "images": {}, "failed": {}}


def read_set_metadata(folder: str | Path) -> dict[str, Any] | None:
    return read_json(Path(folder) / METADATA_FILE)


def update_set_metadata(folder: str | Path, update: Callable[[dict[str, Any]], None],
                        new: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Read ``metadata.json`` (or ``new()``), apply ``update`` in place, write it back atomically, all under a
    lock: writers of one folder (two runs, two seed ranges) never lose each other's records."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / f".{METADATA_FILE}.lock")):
        current = read_set_metadata(folder)
        metadata = copy.deepcopy(current) if current is not None else new()
        update(metadata)
        if metadata != current:  # a rerun that changes nothing leaves the file untouched
            atomic_write_json(folder / METADATA_FILE, metadata)
    return metadata


def write_set_metadata(folder: str | Path, metadata: dict[str, Any]) -> None:
    """Replace a set's metadata.json (test fixtures and tools that build a folder by hand)."""
    update_set_metadata(folder, lambda current: (current.clear(), current.update(metadata)), dict)


def _metadata_files(results_dir: str | Path, method_label: str = "*") -> list[Path]:
    return sorted((Path(results_dir) / IMAGES_DIR).glob(f"{method_label}/*/{METADATA_FILE}"))


def iter_set_metadata(results_dir: str | Path, method_label: str) -> Iterator[dict[str, Any]]:
    """Every set's metadata.json of one method label (e.g. to check what settings its images were made with)."""
    for path in _metadata_files(results_dir, method_label):
        yield read_json(path)


# What a label's images were made with, beside the set and seed (as the runner records it per image).
RUN_SETTING_FIELDS = ("lora_scale", "sampling", "scheduler", "dtype", "batching", "seed_mode", "negative_prompt")


def label_settings(results_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Per method label: the method's name and settings and the run settings its images were made with (from
    its first recorded image), so that two labels of one method can be told apart."""
    found: dict[str, dict[str, Any]] = {}
    for path in _metadata_files(results_dir):
        meta = read_json(path)
        label = meta["method"]["label"]
        if label in found or not meta.get("images"):
            continue
        record = next(iter(meta["images"].values()))
        found[label] = {"method": meta["method"]["name"], "settings": {
            **{f"method.{key}": value for key, value in sorted(meta["method"].get("settings", {}).items())},
            **{name: record.get(name) for name in RUN_SETTING_FIELDS if name in record},
            "model": (record.get("model") or {}).get("base")}}
    return found


@dataclass
class ImageRecord:
    """One generated image and the facts a metric needs about it."""

    image_id: str
    path: Path
    key: str
    testbed: str
    method: str
    method_label: str
    method_key: str
    set_id: str
    n: int
    seed: int
    prompt: str
    negative_prompt: str
    loras: list[dict[str, Any]]  # each: id, name, category, trigger (list), path, sha256, scale, references
    metadata: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def trigger_text(self) -> str:
        """All trigger phrases of the set joined by ', ' (the 'trigger phrases only' CLIP text)."""
        return ", ".join(phrase for lora in self.loras for phrase in lora["trigger"])


def iter_images(results_dir: str | Path, methods: list[str] | None = None) -> Iterator[ImageRecord]:
    """Every image recorded under ``results_dir/images`` whose file exists, in a stable order."""
    for metadata_path in _metadata_files(results_dir):
        folder = metadata_path.parent
        meta = read_json(metadata_path)
        label = meta["method"]["label"]
        if methods is not None and label not in methods and meta["method"]["name"] not in methods:
            continue
        for seed_text, record in sorted(meta.get("images", {}).items(), key=lambda item: int(item[0])):
            path = folder / record["file"]
            if not path.exists():
                continue
            yield ImageRecord(
                image_id=image_id(label, meta["set"]["id"], int(seed_text)),
                path=path,
                key=record["key"],
                testbed=meta["testbed"],
                method=meta["method"]["name"],
                method_label=label,
                method_key=meta["method"]["key"],
                set_id=meta["set"]["id"],
                n=len(meta["set"]["loras"]),
                seed=int(seed_text),
                prompt=record["prompt"],
                negative_prompt=record["negative_prompt"],
                loras=meta["set"]["loras"],
                metadata=record,
            )


def iter_failures(results_dir: str | Path) -> Iterator[dict[str, Any]]:
    """Generation failures recorded by the runner: method_label, set_id, seed, reason."""
    for metadata_path in _metadata_files(results_dir):
        meta = read_json(metadata_path)
        for seed_text, failure in meta.get("failed", {}).items():
            yield {
                "method": meta["method"]["name"],
                "method_label": meta["method"]["label"],
                "set_id": meta["set"]["id"],
                "n": len(meta["set"]["loras"]),
                "seed": int(seed_text),
                "reason": failure["reason"],
            }


# --- score rows ---------------------------------------------------------------------------------------------------
# Why a value is missing or special. ``ok`` and ``fallback_full_image`` carry a value; the rest do not.
STATUSES = ("ok", "fallback_full_image", "no_face", "unavailable", "refused", "parse_error", "error")
VALUE_STATUSES = ("ok", "fallback_full_image")
RETRY_STATUSES = ("unavailable", "error")  # rows that do not count as scored: a later run tries again


@dataclass
class ScoreRow:
    """One tidy row: one image x metric x sub-metric."""

    image_id: str
    image_key: str
    testbed: str
    method: str
    method_label: str
    method_key: str
    set_id: str
    n: int
    seed: int
    metric: str
    sub_metric: str
    value: float | None
    status: str
    reason: str
    metric_key: str
    metric_version: str
    metric_settings: str  # JSON of the settings that define the number

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


SCORE_COLUMNS = list(ScoreRow.__dataclass_fields__)


def scores_path(results_dir: str | Path, metric: str, metric_key: str, method_label: str) -> Path:
    return Path(results_dir) / SCORES_DIR / metric / metric_key / f"{method_label}.jsonl"


def results_dir_of_scores(path: str | Path) -> Path:
    """The results folder of ``scores/<metric>/<metric_key>/<label>.jsonl``; ValueError for any other path."""
    path = Path(path)
    if len(path.parents) < 4 or path.parents[2].name != SCORES_DIR:
        raise ValueError(f"{path} is not inside a results folder's {SCORES_DIR}/<metric>/<metric_key>/; pass the "
                         "results folder or its scores.parquet instead")
    return path.parents[3]


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Rows of a JSON-lines file; a truncated last line (a killed writer) is skipped with a warning."""
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            if number >= len(lines) - 1:  # only the last line may be cut short
                logger.warning("%s: skipping truncated last line %d", path, number)
                continue
            raise ValueError(f"{path}: line {number} is not valid JSON; the file is corrupt (delete it to rescore)")


def append_rows(results_dir: str | Path, rows: Iterable[ScoreRow]) -> int:
    """Append rows to their per-method JSONL files; flush and fsync so a finished batch survives a crash."""
    by_file: dict[Path, list[str]] = defaultdict(list)
    for row in rows:
        path = scores_path(results_dir, row.metric, row.metric_key, row.method_label)
        by_file[path].append(json.dumps(row.to_dict(), default=str))
    for path, lines in by_file.items():
        _append_lines(path, lines)
    return sum(len(lines) for lines in by_file.values())


def _append_lines(path: Path, lines: list[str]) -> None:
    """Append JSON lines under the file's lock; flush and fsync, so what returned is on disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.parent / f".{path.name}.lock")):
        _repair_truncated_tail(path)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def _repair_truncated_tail(path: Path) -> None:
    """A killed writer can leave a partial last line: cut it off so new rows do not follow garbage.

    The image it belonged to has no complete row, so it counts as not scored and is scored again.
    """
    if not path.exists() or not path.stat().st_size:
        return
    with open(path, "rb+") as handle:
        data = handle.read()
        if data.endswith(b"\n"):
            return
        keep = data.rfind(b"\n") + 1
        logger.warning("%s: dropping a truncated last line before appending", path)
        handle.truncate(keep)


def replace_metric_rows(results_dir: str | Path, metric: str, rows: Iterable[ScoreRow]) -> int:
    """Make ``rows`` the only rows of ``metric``: for a metric recomputed whole from another store (the human
    ratings in ratings.sqlite), where appending would keep answers a rater has since undone.

    Each file is replaced atomically; files of the metric that get no row are removed.
    """
    rows = list(rows)
    if any(row.metric != metric for row in rows):
        raise ValueError(f"replace_metric_rows({metric!r}) got rows of another metric")
    by_file: dict[Path, list[str]] = defaultdict(list)
    for row in rows:
        by_file[scores_path(results_dir, row.metric, row.metric_key, row.method_label)].append(
            json.dumps(row.to_dict(), default=str))
    folder = Path(results_dir) / SCORES_DIR / metric
    for path in sorted(folder.glob("*/*.jsonl")) if folder.is_dir() else []:
        if path not in by_file:
            path.unlink()
    for path, lines in by_file.items():
        atomic_write_text(path, "\n".join(lines) + "\n")
    return len(rows)


def mark_scored(results_dir: str | Path, metric: str, metric_key: str, images: Iterable[ImageRecord]) -> None:
    """Record that every row of these images is on disk (call after ``append_rows`` returned): an image whose
    rows were cut by a kill or a full disk has no mark and is scored again. The mark holds the image's sha256,
    so an image regenerated with other bytes is scored again too."""
    by_file: dict[Path, list[str]] = defaultdict(list)
    for image in images:
        path = scores_path(results_dir, metric, metric_key, image.method_label).with_suffix(".done")
        by_file[path].append(json.dumps({"image_key": image.key, "sha256": image.metadata.get("sha256")}))
    for path, lines in by_file.items():
        _append_lines(path, lines)


def scored_images(results_dir: str | Path, metric: str, metric_key: str) -> dict[str, str | None]:
    """Images already scored with this metric key: image key -> the sha256 it had when scored (None if unknown).

    Scored means: a final row (not unavailable/error) and, where the method's rows carry completion marks
    (``.done``), a mark; a score file written before marks existed counts by its rows alone.
    """
    folder = Path(results_dir) / SCORES_DIR / metric / metric_key
    done: dict[str, str | None] = {}
    for path in sorted(folder.glob("*.jsonl")):
        final = {row["image_key"] for row in read_jsonl(path) if row.get("status") not in RETRY_STATUSES}
        marks_path = path.with_suffix(".done")
        if not marks_path.exists():
            done.update(dict.fromkeys(final))
            continue
        for mark in read_jsonl(marks_path):
            if mark["image_key"] in final:
                done[mark["image_key"]] = mark.get("sha256")
    return done


def load_scores(results_dir: str | Path) -> "pandas.DataFrame":  # noqa: F821
    """Every score row of a results folder as a DataFrame with columns SCORE_COLUMNS.

    Where an image was scored again after an ``unavailable``/``error`` row, the retried rows are dropped;
    among duplicates of (image, metric key, sub-metric) the last written wins.
    """
    import pandas as pd

    files = sorted((Path(results_dir) / SCORES_DIR).glob("*/*/*.jsonl"))
    frame = pd.DataFrame([row for path in files for row in read_jsonl(path)], columns=SCORE_COLUMNS)
    if frame.empty:
        return frame
    unit = ["image_key", "metric_key"]
    final = ~frame["status"].isin(RETRY_STATUSES)
    has_final = final.groupby([frame[c] for c in unit]).transform("any")
    frame = frame[final | ~has_final]
    frame = frame.drop_duplicates(subset=unit + ["sub_metric"], keep="last")
    return frame.reset_index(drop=True)


# --- the judge's pairwise sub-metric names ------------------------------------------------------------------------
PAIRWISE_MARKER = "_vs_"
_PAIRWISE = re.compile(r"^(?P<criterion>.+?)(?P<consistent>_consistent)?_vs_(?P<other>.+)$")


def pairwise_sub_metric(criterion: str, other_label: str, consistency: bool = False) -> str:
    """``<criterion>_vs_<other>`` (this image's score against ``other``) or ``<criterion>_consistent_vs_<other>``."""
    return f"{criterion}{'_consistent' if consistency else ''}{PAIRWISE_MARKER}{other_label}"


def parse_pairwise_sub_metric(sub_metric: str) -> tuple[str, bool, str] | None:
    """``(criterion, is_consistency, other_label)`` of a pairwise sub-metric, None for any other."""
    match = _PAIRWISE.match(sub_metric)
    return (match["criterion"], match["consistent"] is not None, match["other"]) if match else None

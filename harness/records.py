"""What the runner writes and what metrics read: the results-folder layout and the image record.

Layout of a results folder (``results/<testbed>/`` by default)::

    images/<method_label>/<set_id>/seed<seed>.png   one file per generated image
    images/<method_label>/<set_id>/metadata.json    {"method": .., "set": .., "images": {"<seed>": record},
                                                     "failed": {"<seed>": {"reason": .., "time": ..}}}
    scores/<metric>/<metric_key>/<method_label>.jsonl  tidy score rows (see harness.metrics.base.ScoreRow)

``metadata.json`` is rewritten atomically after every image, so a killed run loses at most the image in
flight. A record's ``key`` is the content-addressed hash of everything that determines the pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from harness.io import read_json

METADATA_FILE = "metadata.json"


def image_filename(seed: int) -> str:
    return f"seed{seed}.png"


def image_id(method_label: str, set_id: str, seed: int) -> str:
    return f"{method_label}/{set_id}/seed{seed}"


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
    images_dir = Path(results_dir) / "images"
    for metadata_path in sorted(images_dir.glob(f"*/*/{METADATA_FILE}")):
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
    for metadata_path in sorted((Path(results_dir) / "images").glob(f"*/*/{METADATA_FILE}")):
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

"""Does a fresh run reproduce a reference results folder? Images pixel by pixel, leaderboard means to a tolerance.

    python -m harness demo output_dir=/tmp/regen            # regenerate from an empty folder
    python benchmarks/reproduce_results.py results/toy /tmp/regen

Prints, for the images both folders hold (same method label, set and seed): how many, the largest absolute
difference in uint8 levels and how many pixels differ at all; then, for every leaderboard cell (method x N x
column ``.mean``) both leaderboards hold: the largest absolute difference. Exit code 1 when an image differs by
more than ``--max-level`` or a mean by more than ``--max-mean-diff`` (defaults: 1 level, 1e-3), or when an
image of the reference is missing from the candidate.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

import harness  # noqa: F401
from harness.store import LEADERBOARD_FILE, iter_images


def image_differences(reference: Path, candidate: Path) -> tuple[pd.DataFrame, set[str], set[str]]:
    """Per image id both folders hold: max |difference| and the count of differing pixels."""
    ref = {record.image_id: record.path for record in iter_images(reference)}
    new = {record.image_id: record.path for record in iter_images(candidate)}
    rows = []
    for image_id in sorted(set(ref) & set(new)):
        a = np.asarray(Image.open(ref[image_id]).convert("RGB"), dtype=np.int16)
        b = np.asarray(Image.open(new[image_id]).convert("RGB"), dtype=np.int16)
        if a.shape != b.shape:
            rows.append({"image_id": image_id, "max_level": 255, "pixels_differing": a.size})
            continue
        difference = np.abs(a - b)
        rows.append({"image_id": image_id, "max_level": int(difference.max()),
                     "pixels_differing": int((difference.max(axis=2) > 0).sum())})
    return pd.DataFrame(rows, columns=["image_id", "max_level", "pixels_differing"]), set(ref) - set(new), set(new) - set(ref)


def mean_differences(reference: Path, candidate: Path) -> pd.Series:
    """|difference| of every ``.mean`` cell the two leaderboards share, indexed by (method, N, column)."""
    index = ["method_label", "n"]
    a = pd.read_csv(reference / LEADERBOARD_FILE, dtype={"n": str}).set_index(index)
    b = pd.read_csv(candidate / LEADERBOARD_FILE, dtype={"n": str}).set_index(index)
    columns = [c for c in a.columns if c.endswith(".mean") and c in b.columns]
    shared = a.index.intersection(b.index)
    left, right = a.loc[shared, columns].astype(float), b.loc[shared, columns].astype(float)
    difference = (left - right).abs()
    difference = difference.mask(left.isna() & right.isna(), 0.0)  # missing on both sides agrees
    difference = difference.mask(left.isna() != right.isna(), float("inf"))  # missing on one side does not
    return difference.stack()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("reference", type=Path)
    parser.add_argument("candidate", type=Path)
    parser.add_argument("--max-level", type=int, default=1)
    parser.add_argument("--max-mean-diff", type=float, default=1e-3)
    args = parser.parse_args(argv)
    images, only_reference, only_candidate = image_differences(args.reference, args.candidate)
    print(f"images compared: {len(images)}; only in {args.reference}: {len(only_reference)}; "
          f"only in {args.candidate}: {len(only_candidate)}")
    if len(images):
        worst = images.sort_values("max_level", ascending=False).iloc[0]
        print(f"max |difference|: {images['max_level'].max()} uint8 levels (worst {worst['image_id']}, "
              f"{worst['pixels_differing']} pixels differ); images identical: {(images['max_level'] == 0).sum()}; "
              f"pixels differing in all: {images['pixels_differing'].sum()}")
    means = mean_differences(args.reference, args.candidate)
    print(f"leaderboard means compared: {len(means)}; max |difference|: {means.max() if len(means) else float('nan'):.3g}")
    if len(means):
        print("largest:", means.sort_values(ascending=False).head(3).to_dict())
        by_metric = means.groupby(means.index.get_level_values(2).str.split("/").str[0].str.split(".").str[0]).max()
        print("max |difference| per metric:", by_metric.round(6).to_dict())
    # images only in the candidate (methods added since) are reported, not a failure
    ok = (not only_reference and (images["max_level"] <= args.max_level).all()
          and (means <= args.max_mean_diff).all())
    print("reproduced" if ok else "NOT reproduced")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

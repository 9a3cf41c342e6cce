"""Hand-made ratings for the rating-kit tests: answers written straight into a RatingsDB, with known outcomes."""

from __future__ import annotations

import json
from pathlib import Path

from harness.rating.db import Answer, RatingsDB
from harness.rating.study import RUBRICS
from harness.store import ScoreRow


def answer(rater: str, item: str, set_id: str, left: tuple[str, str], right: tuple[str, str] | None,
           criterion: str, given: str, kind: str = "main", repeat_of: str = "", expected: str = "",
           study: str = "hand", rubric: str = "pairwise") -> Answer:
    """``left``/``right`` are (method, image key) as shown; ``given`` is left/right/tie/skip or a 0-10 score."""
    return Answer(study=study, rater=rater, item=item, kind=kind, repeat_of=repeat_of, expected=expected,
                  set_id=set_id, seed=0, n=2, image_left=left[1], image_right=right[1] if right else None,
                  method_left=left[0], method_right=right[0] if right else None, rubric=rubric,
                  rubric_version=RUBRICS[rubric].version, criterion=criterion, answer=given, seconds=1.5)


def new_db(folder: Path, study: str = "hand", rubric: str = "pairwise") -> RatingsDB:
    db = RatingsDB(folder / "ratings.sqlite")
    db.register_study(study, rubric, RUBRICS[rubric].version, {"name": study})
    return db


def score_row(method: str, set_id: str, key: str, metric: str, sub_metric: str, value: float | None,
              metric_key: str = "k1") -> dict:
    return ScoreRow(image_id=f"{method}/{set_id}/seed0", image_key=key, testbed="hand", method=method,
                    method_label=method, method_key=method, set_id=set_id, n=2, seed=0, metric=metric,
                    sub_metric=sub_metric, value=value, status="ok" if value is not None else "error",
                    reason="", metric_key=metric_key, metric_version="1",
                    metric_settings=json.dumps({})).to_dict()

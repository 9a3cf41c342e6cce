"""ratings.sqlite: WAL, schema version, one row per answer, atomic inserts, undo, resume, concurrent writers;
and the export of answers as rows of metric ``human``."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from pathlib import Path

import pytest

from harness.rating.db import SCHEMA_VERSION, DuplicateAnswer, RatingsDB, RatingsError
from harness.rating.export import HUMAN_METRIC, human_score_rows, pairwise_votes
from rating_support import answer, new_db

M1, M2 = ("m1", "k_a1"), ("m2", "k_b1")


def test_new_database_is_wal_with_a_schema_version(tmp_path: Path) -> None:
    db = new_db(tmp_path)
    assert db.journal_mode() == "wal"
    with sqlite3.connect(db.path) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.add([answer("r1", "i1", "s1", M1, M2, "composition", "left")])
    # resume: a new handle (a restarted server) sees every answer
    reopened = RatingsDB(db.path)
    assert reopened.answered("hand", "r1") == {"i1": {"composition": "left"}}
    assert list(reopened.answers()["answer"]) == ["left"]


def test_newer_schema_and_garbage_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "ratings.sqlite"
    RatingsDB(path)
    with sqlite3.connect(path) as connection:
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(RatingsError, match="newer than this harness"):
        RatingsDB(path)
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not a database at all" * 100)
    with pytest.raises(RatingsError, match="not a usable ratings database"):
        RatingsDB(garbage)


def test_a_question_is_answered_once_and_inserts_are_atomic(tmp_path: Path) -> None:
    db = new_db(tmp_path)
    db.add([answer("r1", "i1", "s1", M1, M2, "composition", "left")])
    with pytest.raises(DuplicateAnswer, match="already answered"):
        # the second answer of the batch is a duplicate: neither is stored
        db.add([answer("r1", "i1", "s1", M1, M2, "identity", "tie"),
                answer("r1", "i1", "s1", M1, M2, "composition", "right")])
    assert db.answered("hand", "r1") == {"i1": {"composition": "left"}}
    with pytest.raises(RatingsError, match="answer not stored"):
        db.add([answer("r1", "i2", "s1", M1, M2, "composition", "left", kind="bogus")])


def test_undo_removes_the_raters_last_answer_only(tmp_path: Path) -> None:
    db = new_db(tmp_path)
    db.add([answer("r1", "i1", "s1", M1, M2, "composition", "left")])
    db.add([answer("r2", "i1", "s1", M1, M2, "composition", "tie")])
    db.add([answer("r1", "i1", "s1", M1, M2, "identity", "right")])
    undone = db.undo_last("hand", "r1")
    assert (undone.rater, undone.criterion, undone.answer) == ("r1", "identity", "right")
    assert db.answered("hand", "r1") == {"i1": {"composition": "left"}}
    assert db.answered("hand", "r2") == {"i1": {"composition": "tie"}}
    assert db.undo_last("hand", "r1").criterion == "composition"
    assert db.undo_last("hand", "r1") is None


def test_a_study_name_keeps_its_definition(tmp_path: Path) -> None:
    db = new_db(tmp_path)
    db.register_study("hand", "pairwise", "pairwise-1", {"name": "hand"})  # the same again: fine
    with pytest.raises(RatingsError, match="another definition"):
        db.register_study("hand", "pairwise", "pairwise-1", {"name": "hand", "seed": 1})
    assert [s["name"] for s in db.studies()] == ["hand"]


def _write_answers(path: str, rater: str, count: int) -> None:
    db = RatingsDB(path)
    for index in range(count):
        db.add([answer(rater, f"i{index}", "s1", M1, M2, "composition", "left")])


def test_concurrent_writers_keep_every_answer(tmp_path: Path) -> None:
    db = new_db(tmp_path)
    count = 150
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_write_answers, args=(str(db.path), f"proc{i}", count)) for i in range(2)]
    threads = [threading.Thread(target=_write_answers, args=(str(db.path), f"thread{i}", count)) for i in range(2)]
    for worker in processes + threads:
        worker.start()
    for worker in processes + threads:
        worker.join(timeout=120)
    assert all(p.exitcode == 0 for p in processes)
    frame = db.answers()
    assert len(frame) == 4 * count
    assert frame.groupby("rater").size().to_dict() == {name: count for name in
                                                       ("proc0", "proc1", "thread0", "thread1")}


def test_votes_are_oriented_by_method_whatever_the_side(tmp_path: Path) -> None:
    db = new_db(tmp_path)
    db.add([answer("r1", "i1", "s1", M1, M2, "composition", "left"),    # m1 (A) on the left, chosen
            answer("r2", "i1", "s1", M2, M1, "composition", "right"),   # m1 on the right, chosen
            answer("r3", "i1", "s1", M2, M1, "composition", "left"),    # m2 chosen
            answer("r4", "i1", "s1", M2, M1, "composition", "tie"),
            answer("r5", "i1", "s1", M2, M1, "composition", "skip")])
    votes = pairwise_votes(db.answers())
    assert list(votes["method_a"].unique()) == ["m1"] and list(votes["key_a"].unique()) == ["k_a1"]
    assert list(votes["pref_a"]) == [1.0, 1.0, 0.0, 0.5]  # the skip is no vote


def test_export_rows_carry_values_and_statuses(tmp_path: Path) -> None:
    from harness.store import ImageRecord

    db = new_db(tmp_path)
    db.add([answer("r1", "i1", "s1", M1, M2, "composition", "left"),
            answer("r2", "i1", "s1", M2, M1, "composition", "tie"),
            answer("r1", "i1", "s1", M1, M2, "quality", "skip"),
            answer("r1", "i1|repeat", "s1", M2, M1, "composition", "left", kind="repeat", repeat_of="i1")])
    records = {key: ImageRecord(image_id=f"{method}/s1/seed0", path=tmp_path / "x.png", key=key, testbed="hand",
                                method=method, method_label=method, method_key=method, set_id="s1", n=2, seed=0,
                                prompt="", negative_prompt="", loras=[]) for method, key in (M1, M2)}
    rows = {(r.method_label, r.sub_metric): r for r in human_score_rows(db.answers(), records)}
    assert {r.metric for r in rows.values()} == {HUMAN_METRIC}
    # main answers only (the repeat measures the rater): m1 chosen once, tied once -> 0.75; m2 0.25
    assert rows["m1", "composition"].value == 0.75 and rows["m2", "composition"].value == 0.25
    assert rows["m1", "composition_vs_m2"].value == 0.75
    # a question only skipped is missing with a reason, never 0
    quality = rows["m1", "quality"]
    assert quality.value is None and quality.status == "refused" and "can't tell" in quality.reason

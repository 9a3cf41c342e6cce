"""``ratings.sqlite``: every answer of every rater, one row per answer, in SQLite (standard library) in WAL mode.

Why SQLite: two raters answer at once from two browser tabs, served by two threads; SQLite's write lock and
WAL journal make each insert atomic and durable, and readers never block the writer. Every write opens its own
connection and runs in one ``BEGIN IMMEDIATE`` transaction, so an answer is either stored whole or not at all.

Tables (schema version ``SCHEMA_VERSION``, kept in ``PRAGMA user_version``)::

    studies(name, rubric, rubric_version, definition, created_at)
        one row per study: its YAML definition as JSON; a study name keeps one definition forever
    answers(id, study, rater, item, kind, repeat_of, expected, set_id, seed, n,
            image_left, image_right, method_left, method_right, rubric, rubric_version,
            criterion, answer, seconds, created_at)
        one row per answer. image_* are image keys (content-addressed, harness.store), as shown on each side
        (pointwise: image_right is NULL); answer is left|right|tie|skip (pairwise) or 0..10|skip (pointwise);
        seconds is the time the rater took for it (NULL when not measured: simulated raters);
        UNIQUE(study, rater, item, criterion): a question is answered once (undo deletes the row)

This module knows nothing about pages or statistics; ``harness.rating.export`` turns answers into score rows.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from harness.store import RATINGS_FILE

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 30.0

SCHEMA = """
CREATE TABLE studies (
    name TEXT PRIMARY KEY,
    rubric TEXT NOT NULL,
    rubric_version TEXT NOT NULL,
    definition TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE answers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study TEXT NOT NULL REFERENCES studies(name),
    rater TEXT NOT NULL,
    item TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('main', 'repeat', 'gold')),
    repeat_of TEXT NOT NULL DEFAULT '',
    expected TEXT NOT NULL DEFAULT '',
    set_id TEXT NOT NULL,
    seed INTEGER NOT NULL,
    n INTEGER NOT NULL,
    image_left TEXT NOT NULL,
    image_right TEXT,
    method_left TEXT NOT NULL,
    method_right TEXT,
    rubric TEXT NOT NULL,
    rubric_version TEXT NOT NULL,
    criterion TEXT NOT NULL,
    answer TEXT NOT NULL,
    seconds REAL CHECK (seconds IS NULL OR seconds >= 0),
    created_at TEXT NOT NULL,
    UNIQUE (study, rater, item, criterion)
);
CREATE INDEX answers_by_rater ON answers (study, rater, id);
"""


class RatingsError(RuntimeError):
    """ratings.sqlite cannot be used as asked: the message says why."""


class DuplicateAnswer(RatingsError):
    """The rater already answered this question (a double click, or two tabs of one rater)."""


@dataclass(frozen=True)
class Answer:
    """One row of ``answers`` (without its id)."""

    study: str
    rater: str
    item: str
    kind: str
    repeat_of: str
    expected: str
    set_id: str
    seed: int
    n: int
    image_left: str
    image_right: str | None
    method_left: str
    method_right: str | None
    rubric: str
    rubric_version: str
    criterion: str
    answer: str
    seconds: float | None
    created_at: str = ""


ANSWER_COLUMNS = [f.name for f in fields(Answer)]


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class RatingsDB:
    """The ratings database of one results folder (created on first use)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._initialise()

    @classmethod
    def of(cls, results_dir: str | Path) -> RatingsDB:
        return cls(Path(results_dir) / RATINGS_FILE)

    # -- connections ----------------------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        connection.row_factory = sqlite3.Row
        connection.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        connection.execute("PRAGMA foreign_keys = ON")
        return connection

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One atomic write transaction (BEGIN IMMEDIATE takes the write lock up front: no upgrade deadlock)."""
        connection = self._connect()
        try:
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
        finally:
            connection.close()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        connection = self._connect()
        try:
            yield connection
        finally:
            connection.close()

    def _initialise(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = self._connect()
        try:
            connection.execute("PRAGMA journal_mode = WAL")  # persistent: recorded in the file
            connection.execute("BEGIN IMMEDIATE")
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                for statement in filter(str.strip, SCHEMA.split(";")):  # executescript would commit
                    connection.execute(statement)
                connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            connection.execute("COMMIT")
        except sqlite3.DatabaseError as error:
            raise RatingsError(f"{self.path} is not a usable ratings database ({error}); move it away to start a "
                               f"new one") from None
        finally:
            connection.close()
        if version > SCHEMA_VERSION:
            raise RatingsError(f"{self.path} has schema version {version}, newer than this harness's "
                               f"{SCHEMA_VERSION}: update the harness to read it")

    def journal_mode(self) -> str:
        with self._read() as connection:
            return connection.execute("PRAGMA journal_mode").fetchone()[0]

    # -- studies --------------------------------------------------------------------------------------------
    def register_study(self, name: str, rubric: str, rubric_version: str, definition: dict[str, Any]) -> None:
        """Record a study's definition; the same name with another definition is refused (its answers would mix)."""
        text = json.dumps(definition, sort_keys=True)
        with self._write() as connection:
            row = connection.execute("SELECT definition FROM studies WHERE name = ?", (name,)).fetchone()
            if row is None:
                connection.execute("INSERT INTO studies VALUES (?, ?, ?, ?, ?)",
                                   (name, rubric, rubric_version, text, now()))
            elif row["definition"] != text:
                raise RatingsError(f"study {name!r} is already in {self.path} with another definition "
                                   f"({row['definition']}); give the changed study a new `name:`")

    def studies(self) -> list[dict[str, Any]]:
        with self._read() as connection:
            rows = connection.execute("SELECT * FROM studies ORDER BY created_at, name").fetchall()
        return [{**dict(row), "definition": json.loads(row["definition"])} for row in rows]

    # -- answers --------------------------------------------------------------------------------------------
    def add(self, answers: list[Answer]) -> list[int]:
        """Insert answers in one transaction (all or none); ``DuplicateAnswer`` if a question was answered."""
        stamp = now()
        ids = []
        with self._write() as connection:
            for answer in answers:
                row = asdict(answer)
                row["created_at"] = row["created_at"] or stamp
                try:
                    cursor = connection.execute(
                        f"INSERT INTO answers ({', '.join(ANSWER_COLUMNS)}) "
                        f"VALUES ({', '.join('?' * len(ANSWER_COLUMNS))})", [row[c] for c in ANSWER_COLUMNS])
                except sqlite3.IntegrityError as error:
                    if "UNIQUE" in str(error):
                        raise DuplicateAnswer(f"rater {answer.rater!r} already answered {answer.criterion!r} of "
                                              f"item {answer.item!r}") from None
                    raise RatingsError(f"answer not stored: {error}") from None
                ids.append(int(cursor.lastrowid))
        return ids

    def undo_last(self, study: str, rater: str) -> Answer | None:
        """Delete the rater's most recent answer in the study and return it (None when there is none)."""
        with self._write() as connection:
            row = connection.execute("SELECT * FROM answers WHERE study = ? AND rater = ? ORDER BY id DESC LIMIT 1",
                                     (study, rater)).fetchone()
            if row is None:
                return None
            connection.execute("DELETE FROM answers WHERE id = ?", (row["id"],))
        return Answer(**{c: row[c] for c in ANSWER_COLUMNS})

    def answered(self, study: str, rater: str) -> dict[str, dict[str, str]]:
        """item id -> {criterion: answer} of one rater."""
        with self._read() as connection:
            rows = connection.execute("SELECT item, criterion, answer FROM answers WHERE study = ? AND rater = ?",
                                      (study, rater)).fetchall()
        done: dict[str, dict[str, str]] = {}
        for row in rows:
            done.setdefault(row["item"], {})[row["criterion"]] = row["answer"]
        return done

    def answers(self, study: str | None = None) -> pd.DataFrame:
        """Every answer (of one study, or all) as a DataFrame with the table's columns, in insertion order."""
        query = "SELECT * FROM answers" + (" WHERE study = ?" if study is not None else "") + " ORDER BY id"
        with self._read() as connection:
            rows = connection.execute(query, (study,) if study is not None else ()).fetchall()
        return pd.DataFrame([dict(row) for row in rows], columns=["id", *ANSWER_COLUMNS])

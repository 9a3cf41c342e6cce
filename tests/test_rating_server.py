"""The rating server without a browser: routes, validation (a 4xx with a message, never a crash), the image
route's confinement to the results folder, a taken port, and the ``rate`` / ``agreement`` commands."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pandas as pd
import pytest
from starlette.testclient import TestClient

from harness.rating.cli import agreement_main, open_study, rate_main, simulated_study
from harness.rating.server import ServerError, check_port, create_app
from harness.rating.study import StudySpec
from harness.store import AGREEMENT_FILE, RATINGS_FILE
from results_fixture import results_dir  # noqa: F401


@pytest.fixture()
def folder(results_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "toy"
    shutil.copytree(results_dir, copy)
    return copy


@pytest.fixture()
def client(folder: Path) -> TestClient:
    spec = StudySpec.from_dict({"name": "web", "pairs": ["merge:switch"], "items_per_rater": 2, "repeats": 1,
                                "gold": 1})
    study, db = open_study(folder, spec)
    client = TestClient(create_app(study, db, folder), raise_server_exceptions=False)
    client.study = study  # for the test that tampers with an image record
    return client


def test_page_assets_and_study(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "<script src=\"/static/rate.js\"" in page.text and "http" not in page.text.split("<body>")[0]
    assert client.get("/static/rate.js").status_code == 200
    study = client.get("/api/study").json()
    assert study["rubric"] == "pairwise" and [c["id"] for c in study["criteria"]] == ["composition", "identity",
                                                                                        "quality"]


def test_answers_progress_and_undo(client: TestClient, folder: Path) -> None:
    state = client.post("/api/state", json={"rater": "ann"}).json()
    assert (state["total"], state["done"], state["finished"]) == (4, 0, False)
    item = state["item"]
    assert item["position"] == 0 and item["left"].startswith("/image/") and item["right"].startswith("/image/")
    assert {e["category"] for e in item["elements"]} and "method" not in str(item)  # blind: no method names
    for criterion, given in (("composition", "left"), ("identity", "tie")):
        state = client.post("/api/answer", json={"rater": "ann", "position": 0, "criterion": criterion,
                                                 "answer": given, "seconds": 2.5}).json()
    assert state["item"]["answers"] == {"composition": "left", "identity": "tie"}
    state = client.post("/api/answer", json={"rater": "ann", "position": 0, "criterion": "quality",
                                             "answer": "skip", "seconds": None}).json()
    assert state["item"]["position"] == 1 and state["done"] == 1 and state["answered_questions"] == 3
    undone = client.post("/api/undo", json={"rater": "ann"}).json()
    assert undone["undone"] and undone["item"]["position"] == 0 and undone["item"]["answers"] == {
        "composition": "left", "identity": "tie"}
    # another rater starts from scratch; the stored rows say which sides were shown and how long it took
    assert client.post("/api/state", json={"rater": "bob"}).json()["done"] == 0
    from harness.rating.db import RatingsDB
    rows = RatingsDB(folder / RATINGS_FILE).answers()
    assert list(rows["criterion"]) == ["composition", "identity"] and list(rows["seconds"]) == [2.5, 2.5]
    assert rows["image_left"].str.len().min() > 0 and set(rows["rubric_version"]) == {"pairwise-1"}


ANSWER = {"rater": "ann", "position": 0, "criterion": "composition", "answer": "left", "seconds": 1.0}


@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    ({**ANSWER, "rater": "<script>alert(1)</script>"}, 400, "rater id"),
    ({**ANSWER, "rater": ""}, 400, "rater id"),
    ({**ANSWER, "position": 99}, 400, "position"),
    ({**ANSWER, "position": "0"}, 400, "position"),
    ({**ANSWER, "position": True}, 400, "position"),
    ({**ANSWER, "criterion": "beauty"}, 400, "criterion"),
    ({**ANSWER, "answer": "A"}, 400, "answer"),
    ({**ANSWER, "seconds": -1}, 400, "seconds"),
    ({**ANSWER, "seconds": "fast"}, 400, "seconds"),
    ({**ANSWER, "admin": True}, 400, "unknown field"),
    ({**ANSWER, "position": 1}, 409, "not the current one"),
    (b"{\"rater\": \"" + b"x" * 5000 + b"\"}", 413, "at most"),
])
def test_malformed_answers_get_a_4xx_with_a_message(client: TestClient, body, status: int, message: str) -> None:
    response = (client.post("/api/answer", content=body, headers={"content-type": "application/json"})
                if isinstance(body, bytes) else client.post("/api/answer", json=body))
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_a_question_cannot_be_answered_twice(client: TestClient) -> None:
    assert client.post("/api/answer", json=ANSWER).status_code == 200
    second = client.post("/api/answer", json={**ANSWER, "answer": "right"})
    assert second.status_code == 409 and "undo" in second.json()["error"]


def test_wrong_methods_and_routes(client: TestClient) -> None:
    assert client.get("/api/answer").status_code == 405
    missing = client.get("/api/nothing")
    assert missing.status_code == 404 and missing.json()["error"]
    assert client.post("/api/state", json={"rater": "a b"}).status_code == 400


def test_images_only_from_the_results_folder(client: TestClient, folder: Path, tmp_path: Path) -> None:
    item = client.post("/api/state", json={"rater": "ann"}).json()["item"]
    image = client.get(item["left"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert client.get("/image/0123456789abcdef").status_code == 404  # a key not in the study
    assert client.get("/image/NOT-A-KEY").status_code == 400
    for attempt in ("/image/..%2F..%2F..%2Fetc%2Fpasswd", "/image/../../etc/passwd", "/static/../db.py",
                    "/static/..%2F..%2Fstore.py", "/image/%2Fetc%2Fpasswd"):
        response = client.get(attempt)
        assert response.status_code in (400, 404), attempt
        assert "root:" not in response.text and "import" not in response.text
    # a record pointing outside images/ (a tampered metadata.json) is refused too
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"secret")
    key = item["left"].rsplit("/", 1)[1]
    client.study.images[key].path = outside
    assert client.get(item["left"]).status_code == 404


def test_a_taken_port_is_named_with_the_fix() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(ServerError, match=f"--port {port + 1}"):
            check_port("127.0.0.1", port)


def test_rate_command_errors(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for argv, message in (([str(folder), "--pairs", "merge:nope"], "unknown method 'nope'"),
                          ([str(tmp_path / "empty")], "not a results folder"),
                          ([str(folder), "--study", str(tmp_path / "none.yaml")], "not found")):
        with pytest.raises(SystemExit) as stop:
            rate_main(argv)
        assert stop.value.code == 2 and message in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        with pytest.raises(SystemExit) as stop:
            rate_main([str(folder), "--pairs", "merge:switch", "--gold", "0", "--port",
                       str(taken.getsockname()[1])])
        assert stop.value.code == 2 and "in use" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        agreement_main([str(folder)])
    assert stop.value.code == 2 and "no ratings" in capsys.readouterr().err


def test_simulated_study_then_agreement(folder: Path, capsys: pytest.CaptureFixture) -> None:
    assert rate_main([str(folder), "--pairs", "merge:switch,composite:switch", "--items-per-rater", "all",
                      "--gold", "2", "--repeats", "4", "--simulate", "oracle", "--raters", "2",
                      "--noise", "0"]) == 0
    assert agreement_main([str(folder)]) == 0
    printed = capsys.readouterr().out
    assert "krippendorff_alpha" in printed and "clip_t" in printed
    table = pd.read_csv(folder / AGREEMENT_FILE)
    # noise-free oracle raters agree with each other, with themselves, and pass every gold item
    consistency = table[(table["figure"] == "rater_consistency") & (table["subject"] == "all raters")]
    gold = table[(table["figure"] == "gold_accuracy") & (table["subject"] == "all raters")]
    assert consistency["value"].item() == 1.0 and gold["value"].item() == 1.0
    # ... and the tidy table has the human metric like any other
    scores = pd.read_parquet(folder / "scores.parquet")
    human = scores[scores["metric"] == "human"]
    assert set(human["sub_metric"]) >= {"composition", "identity", "quality"} and set(human["status"]) == {"ok"}
    leaderboard = pd.read_csv(folder / "leaderboard.csv")
    assert "human/composition.mean" in leaderboard.columns
    # the report's section, with its plots
    page = (folder / "report.html").read_text(encoding="utf-8")
    assert "Human ratings: agreement with people" in page and AGREEMENT_FILE in page
    for plot in ("agreement_win_rates.png", "agreement_metrics.png"):
        assert (folder / "pictures" / "plots" / plot).exists() and f"plots/{plot}" in page


def test_pointwise_study_simulated(folder: Path, capsys: pytest.CaptureFixture) -> None:
    assert rate_main([str(folder), "--rubric", "pointwise", "--items-per-rater", "12", "--gold", "1",
                      "--simulate", "oracle", "--raters", "2", "--noise", "0.2"]) == 0
    assert agreement_main([str(folder), "--tables-only", "--all-metrics"]) == 0
    printed = capsys.readouterr().out
    assert "== pointwise-1: 2 raters" in printed and "mean_score" in printed
    table = pd.read_csv(folder / AGREEMENT_FILE)
    alpha = table[(table["figure"] == "krippendorff_alpha") & (table["criterion"] == "element_integration")]
    assert alpha["n_raters"].item() == 2 and alpha["n"].item() == 12
    scores = pd.read_parquet(folder / "scores.parquet")
    assert "overall" in set(scores.loc[scores["metric"] == "human", "sub_metric"])


def test_the_demo_study_runs_once(folder: Path) -> None:
    added = simulated_study(folder, raters=2, noise=0.0)  # conf/rating/toy_oracle.yaml, as `demo` runs it
    assert set(added) == {"oracle-1", "oracle-2"} and min(added.values()) > 0
    assert simulated_study(folder, raters=2, noise=0.0) == {"oracle-1": 0, "oracle-2": 0}  # a rerun adds nothing

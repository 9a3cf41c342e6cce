"""The llm_judge metric against a local scripted OpenAI-compatible server (tests/judge_server.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from harness.judge.rubrics import POINTWISE, POINTWISE_CRITERIA
from harness.metrics.base import METRICS
from harness.metrics.llm_judge import LLMJudge, estimate
from harness.store import image_filename, iter_images, new_set_metadata, set_folder, write_set_metadata
from judge_server import JudgeServer, chat_reply, error_reply, mean_rgb, request_images

NO_KEY_ENV = "HARNESS_JUDGE_TEST_KEY"
RESOLVED_MODEL = "judge-test-2024-01-01"
LORAS = [
    {"id": "hero", "name": "Hero", "category": "character", "trigger": ["hero", "red cape"], "path": "lora/hero.safetensors",
     "sha256": "0" * 64, "scale": 0.8, "references": []},
    {"id": "hat", "name": "Top hat", "category": "clothing", "trigger": ["top hat"], "path": "lora/hat.safetensors",
     "sha256": "1" * 64, "scale": 0.8, "references": []},
]
COLOURS = {"merge": (90, 120, 30), "switch": (200, 60, 30), "composite": (150, 220, 30)}


def write_results(root: Path, methods: dict[str, tuple[int, int, int]], seeds=(0,), missing=()) -> Path:
    """A results folder in the runner's layout: one solid-colour 8x8 PNG per method x seed (set 'hero+hat')."""
    set_id = "hero+hat"
    for label, colour in methods.items():
        folder = set_folder(root, label, set_id)
        folder.mkdir(parents=True, exist_ok=True)
        records = {}
        for seed in seeds:
            if (label, seed) in missing:
                continue
            Image.new("RGB", (8, 8), (colour[0], colour[1], colour[2] + seed)).save(folder / image_filename(seed))
            records[str(seed)] = {"file": image_filename(seed), "key": f"{label}-{seed}", "prompt": "a hero, top hat",
                                  "negative_prompt": ""}
        meta = new_set_metadata("unit", {"name": label, "label": label, "key": f"key-{label}", "settings": {}},
                                {"id": set_id, "n": len(LORAS), "loras": LORAS})
        write_set_metadata(folder, {**meta, "images": records})
    return root


def colour_scores(png: bytes) -> tuple[float, float]:
    """The scripted judge's 'true' (composition, quality) of an image: read off its red and green."""
    red, green, _ = mean_rgb(png)
    return round((2 + 6 * red / 255) * 2) / 2, round((2 + 6 * green / 255) * 2) / 2


def colour_judge(bias: float = 0.0, json_when_structured: bool = True):
    """Scores each image by colour; ``bias`` is added to the second image's composition and the first image's
    quality (the position bias Zhong et al. report). Pointwise answers are derived from the same scores."""

    def respond(request, number):
        scores = [colour_scores(png) for png in request_images(request)]
        if len(scores) == 1:
            composition, quality = scores[0]
            answer = {"explanation": "scripted", "element_integration": composition, "spatial_consistency": composition,
                      "semantic_accuracy": quality, "aesthetic_quality": quality}
            return chat_reply(json.dumps(answer), model=RESOLVED_MODEL)
        (c1, q1), (c2, q2) = scores
        c1, q1, c2, q2 = c1, min(10.0, q1 + bias), min(10.0, c2 + bias), q2
        if json_when_structured and "response_format" in request:
            answer = {"analysis": "scripted", "image_1_composition": c1, "image_1_quality": q1,
                      "image_2_composition": c2, "image_2_quality": q2}
            return chat_reply(json.dumps(answer), model=RESOLVED_MODEL)
        text = (f"Image 1 lacks detail (-1).\n\n**Image 1:** Composition Quality: {c1}/10, Image Quality: {q1}/10\n"
                f"**Image 2:** Composition Quality: {c2}/10, Image Quality: {q2}/10")
        return chat_reply(text, model=RESOLVED_MODEL)

    return respond


@pytest.fixture(autouse=True)
def no_api_key(monkeypatch):
    monkeypatch.delenv(NO_KEY_ENV, raising=False)


def judge(server: JudgeServer | None, **overrides) -> LLMJudge:
    return LLMJudge(**judge_settings(server, **overrides))


def judge_settings(server: JudgeServer | None, **overrides) -> dict:
    settings = dict(base_url=server.base_url if server else "http://judge.invalid/v1", model="judge-test",
                    api_key_env=NO_KEY_ENV, max_retries=0, timeout=10, concurrency=2, reask=1,
                    rubrics=["pairwise"], baseline="merge")
    settings.update(overrides)
    return settings


def rows_by(rows) -> dict[tuple[str, str], object]:
    table = {}
    for row in rows:
        assert (row.method_label, row.sub_metric) not in table, "duplicate row"
        table[(row.method_label, row.sub_metric)] = row
    return table


def image_bytes(root: Path, label: str, seed: int = 0) -> bytes:
    return (set_folder(root, label, "hero+hat") / image_filename(seed)).read_bytes()


def test_registered_under_its_name():
    assert METRICS.get("llm_judge") is LLMJudge


def test_pairwise_both_orders_are_asked_and_averaged(tmp_path):
    root = write_results(tmp_path, {"merge": COLOURS["merge"], "switch": COLOURS["switch"]})
    bias = 1.5
    with JudgeServer(colour_judge(bias)) as server:
        rows = rows_by(judge(server).score(iter_images(root)))
    assert server.count == 2
    orders = [[mean_rgb(png) for png in request_images(request)] for request in server.requests]
    assert sorted(orders) == sorted([list(reversed(orders[0])), orders[0]])  # the same two images, swapped
    (switch_c, switch_q), (merge_c, merge_q) = colour_scores(image_bytes(root, "switch")), colour_scores(image_bytes(root, "merge"))
    # Each image is second once and first once: the bias adds half of itself to both averages.
    assert rows[("switch", "composition_vs_merge")].value == pytest.approx(switch_c + bias / 2)
    assert rows[("merge", "composition_vs_switch")].value == pytest.approx(merge_c + bias / 2)
    assert rows[("switch", "quality_vs_merge")].value == pytest.approx(switch_q + bias / 2)
    assert rows[("merge", "quality_vs_switch")].value == pytest.approx(merge_q + bias / 2)
    assert all(row.status == "ok" and row.metric == "llm_judge" for row in rows.values())
    assert set(rows) == {("switch", "composition_vs_merge"), ("merge", "composition_vs_switch"),
                         ("switch", "composition_consistent_vs_merge"), ("switch", "quality_vs_merge"),
                         ("merge", "quality_vs_switch"), ("switch", "quality_consistent_vs_merge")}
    assert all(request["temperature"] == 1.0 and request["response_format"]["type"] == "json_schema"
               for request in server.requests)


def test_position_swap_consistency_row(tmp_path):
    root = write_results(tmp_path, {"merge": COLOURS["merge"], "switch": COLOURS["switch"]})
    gap_c = abs(colour_scores(image_bytes(root, "switch"))[0] - colour_scores(image_bytes(root, "merge"))[0])
    gap_q = abs(colour_scores(image_bytes(root, "switch"))[1] - colour_scores(image_bytes(root, "merge"))[1])
    assert gap_c > 0 and gap_q > 0
    with JudgeServer(colour_judge(bias=0.0)) as server:
        fair = rows_by(judge(server, cache_dir=str(tmp_path / "fair")).score(iter_images(root)))
    # A bias larger than the true gap makes the position, not the image, win: the verdict flips with the swap.
    with JudgeServer(colour_judge(bias=max(gap_c, gap_q) + 1)) as server:
        biased = rows_by(judge(server, cache_dir=str(tmp_path / "biased")).score(iter_images(root)))
    for scale in ("composition", "quality"):
        assert fair[("switch", f"{scale}_consistent_vs_merge")].value == 1.0
        assert biased[("switch", f"{scale}_consistent_vs_merge")].value == 0.0


def test_baseline_mode_pairs_every_method_with_the_baseline_and_finds_partners_on_disk(tmp_path):
    root = write_results(tmp_path, COLOURS)
    only_composite = [image for image in iter_images(root) if image.method_label == "composite"]
    with JudgeServer(colour_judge()) as server:
        rows = rows_by(judge(server).score(only_composite))
    assert server.count == 2  # composite vs merge only; merge's image read from the same results folder
    assert {key for key in rows} == {("composite", "composition_vs_merge"), ("merge", "composition_vs_composite"),
                                     ("composite", "composition_consistent_vs_merge"), ("composite", "quality_vs_merge"),
                                     ("merge", "quality_vs_composite"), ("composite", "quality_consistent_vs_merge")}
    with JudgeServer(colour_judge()) as server:
        rows = list(judge(server, pairs=[["switch", "composite"]]).score(iter_images(root)))
    assert server.count == 2 and {row.sub_metric for row in rows} >= {"composition_vs_switch", "composition_vs_composite"}


def test_missing_partner_is_unavailable_never_a_value(tmp_path):
    root = write_results(tmp_path, {"merge": COLOURS["merge"], "switch": COLOURS["switch"]}, seeds=(0, 1),
                         missing={("merge", 1)})
    with JudgeServer(colour_judge()) as server:
        rows = list(judge(server).score(iter_images(root)))
    assert server.count == 2  # seed 0 only
    lonely = [row for row in rows if row.seed == 1]
    assert {row.sub_metric for row in lonely} == {"composition_vs_merge", "quality_vs_merge"}
    assert all(row.value is None and row.status == "unavailable" and "merge" in row.reason for row in lonely)


def test_pointwise_rows_and_overall(tmp_path):
    root = write_results(tmp_path, {"merge": COLOURS["merge"]})
    with JudgeServer(colour_judge()) as server:
        rows = rows_by(judge(server, rubrics=["pointwise"]).score(iter_images(root)))
    composition, quality = colour_scores(image_bytes(root, "merge"))
    assert set(rows) == {("merge", name) for name in (*POINTWISE_CRITERIA, "overall")}
    assert rows[("merge", "element_integration")].value == composition
    assert rows[("merge", "aesthetic_quality")].value == quality
    assert rows[("merge", "overall")].value == pytest.approx((composition + quality) / 2)
    schema = server.requests[0]["response_format"]["json_schema"]["schema"]
    assert set(schema["required"]) == {"explanation", *POINTWISE_CRITERIA}


def test_rerun_makes_no_calls_and_cache_records_model_tokens_cost(tmp_path):
    root = write_results(tmp_path, {"merge": COLOURS["merge"], "switch": COLOURS["switch"]})
    prices = {RESOLVED_MODEL: {"input": 2.5, "output": 10.0}}
    with JudgeServer(colour_judge(bias=0.5)) as server:
        first = [row.to_dict() for row in judge(server, prices=prices, rubrics=["pairwise", "pointwise"]).score(iter_images(root))]
        calls = server.count
        second = [row.to_dict() for row in judge(server, prices=prices, rubrics=["pairwise", "pointwise"],
                                                 concurrency=1).score(iter_images(root))]
        assert server.count == calls == 4  # 2 orders + 2 pointwise; the rerun asked nothing
    def comparable(rows):  # metric_settings holds the raw settings, and concurrency differs between the runs
        return sorted(({k: v for k, v in row.items() if k != "metric_settings"} for row in rows),
                      key=lambda row: (row["image_id"], row["sub_metric"]))

    assert comparable(first) == comparable(second)
    assert first[0]["metric_key"] == second[0]["metric_key"]
    entries = [json.loads(path.read_text()) for path in (root / ".judge_cache").glob("*/*.json")]
    assert len(entries) == 4
    for entry in entries:
        assert entry["model"] == RESOLVED_MODEL and entry["requested_model"] == "judge-test"
        assert (entry["input_tokens"], entry["output_tokens"]) == (1000, 200)
        assert entry["cost_usd"] == pytest.approx((1000 * 2.5 + 200 * 10.0) / 1e6)
        assert len(entry["request"]["images"]) in (1, 2) and entry["request"]["rubric_version"]


def test_malformed_then_good_reply_is_reasked(tmp_path):
    root = write_results(tmp_path, {"merge": COLOURS["merge"]})
    good = colour_judge()

    def respond(request, number):
        return chat_reply("The image is nice.") if number == 1 else good(request, number)

    with JudgeServer(respond) as server:
        rows = list(judge(server, rubrics=["pointwise"], prices={RESOLVED_MODEL: {"input": 1.0, "output": 1.0}}
                          ).score(iter_images(root)))
    assert server.count == 2 and all(row.status == "ok" for row in rows)
    follow_up = server.requests[1]["messages"]
    assert [message["role"] for message in follow_up] == ["user", "assistant", "user"]
    assert "could not be read" in follow_up[2]["content"]
    entry = json.loads(next((root / ".judge_cache").glob("*/*.json")).read_text())
    assert entry["attempts"] == 2 and entry["input_tokens"] == 2000  # tokens of both attempts count


def test_malformed_forever_is_parse_error_with_no_value(tmp_path):
    root = write_results(tmp_path, {"merge": COLOURS["merge"], "switch": COLOURS["switch"]})
    with JudgeServer(lambda request, number: chat_reply("Image 1 wins, clearly.")) as server:
        rows = list(judge(server, reask=2, concurrency=1).score(iter_images(root)))
    assert server.count == 2 * 3  # two orders x (1 ask + 2 re-asks)
    assert len(rows) == 6 and all(row.value is None and row.status == "parse_error" and row.reason for row in rows)


@pytest.mark.parametrize("reply", [
    chat_reply(None, refusal="I can't help with that."),
    chat_reply("", finish_reason="content_filter"),
    chat_reply("I'm sorry, but I can't evaluate these images."),
    error_reply(400, "Your request was rejected by our content_policy_violation filter."),
])
def test_refusals_are_refused_rows(tmp_path, reply):
    root = write_results(tmp_path, {"merge": COLOURS["merge"]})
    with JudgeServer(lambda request, number: reply) as server:
        rows = list(judge(server, rubrics=["pointwise"], structured_output=False).score(iter_images(root)))
    assert server.count == 1  # a refusal is final: no re-ask
    assert len(rows) == 5 and all(row.value is None and row.status == "refused" and row.reason for row in rows)


@pytest.mark.parametrize("status", [429, 500])
def test_http_errors_are_error_rows_without_retries_and_succeed_with_them(tmp_path, status):
    root = write_results(tmp_path, {"merge": COLOURS["merge"]})
    with JudgeServer(lambda request, number: error_reply(status, "busy")) as server:
        rows = list(judge(server, rubrics=["pointwise"]).score(iter_images(root)))
    assert server.count == 1
    assert all(row.value is None and row.status == "error" and str(status) in row.reason for row in rows)
    assert not list((root / ".judge_cache").glob("*/*.json"))  # errors are not cached: the next run retries

    good = colour_judge()
    with JudgeServer(lambda request, number: error_reply(status, "busy") if number <= 2 else good(request, number)) as server:
        rows = list(judge(server, rubrics=["pointwise"], max_retries=2).score(iter_images(root)))
    assert server.count == 3 and all(row.status == "ok" for row in rows)


def test_timeout_is_an_error_row(tmp_path):
    root = write_results(tmp_path, {"merge": COLOURS["merge"]})
    good = colour_judge()

    def slow(request, number):
        reply = good(request, number)
        reply.delay = 2.0
        return reply

    with JudgeServer(slow) as server:
        rows = list(judge(server, rubrics=["pointwise"], timeout=0.3).score(iter_images(root)))
    assert server.count == 1
    assert all(row.value is None and row.status == "error" and "timeout" in row.reason for row in rows)


def test_structured_output_rejection_falls_back_to_text(tmp_path):
    root = write_results(tmp_path, {"merge": COLOURS["merge"], "switch": COLOURS["switch"]})
    plain = colour_judge(json_when_structured=False)

    def respond(request, number):
        if "response_format" in request:
            return error_reply(400, "response_format json_schema is not supported by this server")
        return plain(request, number)

    with JudgeServer(respond) as server:
        rows = list(judge(server, concurrency=1).score(iter_images(root)))
    assert all(row.status == "ok" and row.value is not None for row in rows)
    # First call: rejected then plain; second call goes straight to plain text.
    assert ["response_format" in request for request in server.requests] == [True, False, False]


def test_missing_api_key_for_remote_server_is_unavailable(tmp_path):
    root = write_results(tmp_path, {"merge": COLOURS["merge"], "switch": COLOURS["switch"]})
    rows = list(judge(None, rubrics=["pairwise", "pointwise"]).score(iter_images(root)))
    assert len(rows) == 6 + 10
    assert all(row.value is None and row.status == "unavailable" and NO_KEY_ENV in row.reason for row in rows)


def test_dry_run_estimates_and_calls_nothing(tmp_path, capsys):
    root = write_results(tmp_path, {"merge": COLOURS["merge"], "switch": COLOURS["switch"]})
    prices = {"judge-test": {"input": 2.0, "output": 8.0}}
    with JudgeServer(colour_judge()) as server:
        assert list(judge(server, dry_run=True, prices=prices).score(iter_images(root))) == []
        assert server.count == 0 and "2 of 2 calls needed" in capsys.readouterr().out
        settings = judge_settings(server, rubrics=["pairwise", "pointwise"], prices=prices, max_tokens=300,
                                  estimate_image_tokens=100)
        before = estimate(iter_images(root), settings)
        assert (before["calls_needed"], before["calls_cached"]) == (4, 0)
        assert before["estimated_output_tokens"] == 4 * 300
        expected = (before["estimated_input_tokens"] * 2.0 + before["estimated_output_tokens"] * 8.0) / 1e6
        assert before["estimated_cost_usd"] == pytest.approx(expected)
        list(judge(server, rubrics=["pairwise"], max_tokens=300).score(iter_images(root)))  # same answer settings
        after = estimate(iter_images(root), settings)
    assert (after["calls_needed"], after["calls_cached"]) == (2, 2)
    assert after["calls_needed_by_rubric"] == {"pairwise": 0, "pointwise": 2}
    # No pointwise call measured yet: prompt characters / 4 + the per-image guess.
    assert after["estimated_input_tokens"] == 2 * (len(POINTWISE.prompt(LORAS)) // 4 + 100)


def test_concurrency_is_bounded(tmp_path):
    root = write_results(tmp_path, COLOURS, seeds=(0, 1))
    good = colour_judge()

    def slow(request, number):
        reply = good(request, number)
        reply.delay = 0.2
        return reply

    with JudgeServer(slow) as server:
        rows = list(judge(server, concurrency=2).score(iter_images(root)))
    assert server.count == 8 and len(rows) == 2 * 2 * 6
    assert all(row.status == "ok" for row in rows), {(row.status, row.reason) for row in rows}
    # The server stops counting a request before it sends the reply, so this cannot over-count; with 0.2 s per
    # answer the two workers overlap, so the bound is reached (and would be exceeded by a third worker).
    assert server.max_in_flight == 2


def test_settings_validation_and_key():
    with pytest.raises(ValueError, match="unknown setting"):
        LLMJudge(modle="x")
    with pytest.raises(ValueError, match="pairs"):
        LLMJudge(rubrics=["pairwise"], baseline=None)
    base = LLMJudge(model="a")
    assert base.key == LLMJudge(model="a", concurrency=9, timeout=1, cache_dir="/tmp/x").key
    assert base.key != LLMJudge(model="b").key != LLMJudge(model="a", temperature=0).key


def test_hydra_config_builds_the_metric():
    from harness.config import metric_config

    path = Path(__file__).resolve().parents[1] / "conf" / "metric" / "llm_judge.yaml"
    assert path.read_text().splitlines()[0] == "# @package metrics.llm_judge"
    config = metric_config("llm_judge")  # the command line turns the YAML into plain settings
    assert config["name"] == "llm_judge"
    metric = METRICS.get(config.pop("name"))(**config)
    assert metric.config.temperature == 1.0 and metric.config.rubrics


def test_scoring_driver_stores_judge_rows_and_resumes_without_calls(tmp_path):
    from harness.scoring import score_results
    from harness.store import load_scores

    root = write_results(tmp_path, COLOURS)
    with JudgeServer(colour_judge()) as server:
        settings = {"llm_judge": {"name": "llm_judge", **judge_settings(server, rubrics=["pairwise", "pointwise"])}}
        score_results(root, settings, progress=False)
        assert server.count == 2 * 2 + 3  # (switch, composite) x 2 orders vs merge + 3 pointwise
        score_results(root, settings, progress=False)
        assert server.count == 7
    frame = load_scores(root)
    assert len(frame) == 2 * 6 + 3 * 5 and (frame["status"] == "ok").all()
    merge = frame[frame["method_label"] == "merge"]
    assert set(merge["sub_metric"]) >= {"composition_vs_switch", "quality_vs_composite", "overall"}

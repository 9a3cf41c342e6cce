"""agreement.csv on hand-made ratings whose figures were worked out by hand (the arithmetic is in comments)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from harness.agreement import agreement_table
from harness.tables import typed_scores
from rating_support import answer, new_db, score_row

# Two methods, three sets; image keys a<i> for m1 and b<i> for m2.
A = {s: ("m1", f"a{s}") for s in (1, 2, 3, 4)}
B = {s: ("m2", f"b{s}") for s in (1, 2, 3, 4)}


def figure(table: pd.DataFrame, name: str, subject: str, criterion: str = "composition") -> pd.Series:
    rows = table[(table["figure"] == name) & (table["subject"] == subject) & (table["criterion"] == criterion)]
    assert len(rows) == 1, (name, subject, criterion)
    return rows.iloc[0]


@pytest.fixture(scope="module")
def pairwise(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    db = new_db(tmp_path_factory.mktemp("agreement"))
    c = "composition"
    db.add([
        # set 1: both raters choose m1 (r2 saw it on the right)    -> preference for m1 = 1
        answer("r1", "p1", "s1", A[1], B[1], c, "left"), answer("r2", "p1", "s1", B[1], A[1], c, "right"),
        # set 2: r1 chooses m1, r2 says tie                          -> 0.75
        answer("r1", "p2", "s2", A[2], B[2], c, "left"), answer("r2", "p2", "s2", A[2], B[2], c, "tie"),
        # set 3: both choose m2                                      -> 0
        answer("r1", "p3", "s3", A[3], B[3], c, "right"), answer("r2", "p3", "s3", B[3], A[3], c, "left"),
        # repeats, sides swapped: r1 again m1 on p1 (consistent), r2 now m1 on p2 (was tie: inconsistent)
        answer("r1", "p1|repeat", "s1", B[1], A[1], c, "right", kind="repeat", repeat_of="p1"),
        answer("r2", "p2|repeat", "s2", B[2], A[2], c, "right", kind="repeat", repeat_of="p2"),
        # gold on set 4, m1 has every element: r1 right, r2 wrong
        answer("r1", "g4", "s4", A[4], B[4], c, "left", kind="gold", expected="a4"),
        answer("r2", "g4", "s4", A[4], B[4], c, "right", kind="gold", expected="a4"),
    ])
    rows = []
    # "clip": agrees on set 1, ties on set 2, disagrees on set 3 -> accuracy (1 + 1/2 + 0) / 3 = 0.5
    # "good": agrees on all three                                 -> accuracy 1
    # "half": only m1 images have a value                         -> not computable
    values = {"clip": {"a1": .9, "b1": .1, "a2": .5, "b2": .5, "a3": .8, "b3": .2},
              "good": {"a1": 1., "b1": 0., "a2": .6, "b2": .4, "a3": 0., "b3": 1.},
              "half": {"a1": 1., "a2": .5, "a3": .2}}
    for metric, by_key in values.items():
        for key, value in by_key.items():
            method = "m1" if key.startswith("a") else "m2"
            rows.append(score_row(method, f"s{key[1]}", key, metric, "all", value))
    # the LLM judge's pairwise verdicts: agrees on sets 1 and 3, ties on 2 -> (1 + 1/2 + 1) / 3
    for s, (score_a, score_b) in {1: (8, 2), 2: (5, 5), 3: (3, 7)}.items():
        rows.append(score_row("m1", f"s{s}", f"a{s}", "llm_judge", "composition_vs_m2", score_a))
        rows.append(score_row("m2", f"s{s}", f"b{s}", "llm_judge", "composition_vs_m1", score_b))
    return agreement_table(db.answers(), typed_scores(pd.DataFrame(rows)))


def test_win_rate_over_sets(pairwise: pd.DataFrame) -> None:
    row = figure(pairwise, "win_rate", "m1 vs m2")
    assert row["value"] == pytest.approx((1 + 0.75 + 0) / 3)
    assert row["ci_low"] <= row["value"] <= row["ci_high"]
    assert (row["n"], row["n_raters"], row["n_ratings"]) == (3, 2, 6)
    assert "m1 2, tie 0, m2 1" in row["detail"]


def test_krippendorff_alpha_nominal(pairwise: pd.DataFrame) -> None:
    # units (A=0, tie=1, B=2): (0,0), (0,1), (2,2). Coincidences o00=2, o01=o10=1, o22=2; n0=3, n1=1, n2=2, n=6.
    # alpha = 1 - (n-1) * sum_{c!=k} o_ck / sum_{c!=k} n_c n_k = 1 - 5 * 2 / (2 * (3 + 6 + 2)) = 12/22
    row = figure(pairwise, "krippendorff_alpha", "all raters")
    assert row["value"] == pytest.approx(12 / 22)
    assert (row["n"], row["n_raters"]) == (3, 2)


def test_consistency_and_gold(pairwise: pd.DataFrame) -> None:
    assert figure(pairwise, "rater_consistency", "r1", "all")["value"] == 1.0
    assert figure(pairwise, "rater_consistency", "r2", "all")["value"] == 0.0
    assert figure(pairwise, "rater_consistency", "all raters", "all")["value"] == 0.5
    assert figure(pairwise, "gold_accuracy", "r1")["value"] == 1.0
    assert figure(pairwise, "gold_accuracy", "r2")["value"] == 0.0
    assert figure(pairwise, "gold_accuracy", "all raters")["n"] == 2


def test_metric_pairwise_accuracy(pairwise: pd.DataFrame) -> None:
    assert figure(pairwise, "pairwise_accuracy", "clip")["value"] == pytest.approx(0.5)
    assert "metric ties 1" in figure(pairwise, "pairwise_accuracy", "clip")["detail"]
    assert figure(pairwise, "pairwise_accuracy", "good")["value"] == 1.0
    assert figure(pairwise, "pairwise_accuracy", "llm_judge/composition (pairwise)")["value"] == pytest.approx(2.5 / 3)
    half = figure(pairwise, "pairwise_accuracy", "half")
    assert pd.isna(half["value"]) and half["missing_reason"]


def test_metric_rankings_and_correlations(pairwise: pd.DataFrame) -> None:
    # human per image: a1 1, a2 .75, a3 0, b1 0, b2 .25, b3 1 -> m1 0.583 > m2 0.417; clip m1 .733 > m2 .267
    tau = figure(pairwise, "kendall_tau", "clip")
    assert tau["value"] == 1.0 and tau["n"] == 2 and "metric: m1 > m2; human: m1 > m2" in tau["detail"]
    # "good" ranks the six images exactly as the humans do (ties included) -> Spearman 1
    assert figure(pairwise, "spearman_rho", "good")["value"] == pytest.approx(1.0)
    # Pearson by hand: dx = (.5 .1 -.5 -.5 -.1 .5), dy = (.5 .25 -.5 -.5 -.25 .5): 1.05 / sqrt(1.02 * 1.125)
    assert figure(pairwise, "pearson_r", "good")["value"] == pytest.approx(1.05 / (1.02 * 1.125) ** 0.5)


def test_pointwise_interval_alpha_mean_scores_and_gold(tmp_path: Path) -> None:
    db = new_db(tmp_path, study="points", rubric="pointwise")
    c = "element_integration"
    given = []
    for rater, scores in (("r1", (2, 5, 9)), ("r2", (3, 5, 8))):
        for s, score in zip((1, 2, 3), scores):
            method_key = A[s] if s != 2 else B[s]
            given.append(answer(rater, f"i{s}", f"s{s}", method_key, None, c, str(score), study="points",
                                rubric="pointwise"))
    given += [answer("r1", "g|good", "s4", A[4], None, c, "8", kind="gold", expected="good", study="points",
                     rubric="pointwise"),
              answer("r1", "g|bad", "s4", B[4], None, c, "2", kind="gold", expected="bad", study="points",
                     rubric="pointwise")]
    db.add(given)
    table = agreement_table(db.answers(), typed_scores(pd.DataFrame([score_row("m1", "s1", "a1", "x", "all", 1.0)])))
    # values 2,3 | 5,5 | 9,8: D_o = (2 + 0 + 2) / 6; D_e = sum over ordered pairs of squared differences / (6 * 5)
    # = 2 * 6 * 37.333 / 30 (37.333 = sum of squared deviations from the mean 5.333): alpha = 1 - 120 / 2688
    alpha = figure(table, "krippendorff_alpha", "all raters", c)
    assert alpha["value"] == pytest.approx(1 - 120 / 2688)
    assert figure(table, "mean_score", "m2", c)["value"] == 5.0
    assert figure(table, "mean_score", "m1", c)["value"] == pytest.approx((2.5 + 8.5) / 2)
    assert figure(table, "gold_accuracy", "r1", c)["value"] == 1.0


def test_one_rater_gives_no_alpha_but_says_why(tmp_path: Path) -> None:
    db = new_db(tmp_path)
    db.add([answer("r1", "p1", "s1", A[1], B[1], "composition", "left")])
    table = agreement_table(db.answers(), typed_scores(pd.DataFrame([score_row("m1", "s1", "a1", "x", "all", 1.)])))
    alpha = figure(table, "krippendorff_alpha", "all raters")
    assert pd.isna(alpha["value"]) and "2 or more raters" in alpha["missing_reason"]
    consistency = figure(table, "rater_consistency", "all raters", "all")
    assert pd.isna(consistency["value"]) and "no repeated item" in consistency["missing_reason"]

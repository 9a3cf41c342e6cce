"""How far people agree with each other and with every metric: ``agreement.csv`` from ratings.sqlite.

One tidy table, one row per figure, with the number of raters and of ratings behind it (``n_raters``,
``n_ratings``); a figure that cannot be computed is NaN with ``missing_reason``, never 0. ``rubric`` is the
rubric version the answers were given under (``pairwise-1``, ``pointwise-1``); studies of one rubric version
are pooled. Only main items measure methods and metrics; repeats and gold items measure the raters.

figure               subject             value
win_rate             "A vs B"            human preference share of A over B (A chosen 1, tie 0.5, B 0), mean
                                         over sets of the per-set mean over items, 95 % bootstrap CI over sets
                                         (harness.stats); detail: majority wins / ties / losses over items
mean_score           method              pointwise: mean 0-10 score, CI over sets
krippendorff_alpha   "all raters"        inter-rater agreement on main items (``krippendorff`` package):
                                         nominal for A / tie / B, interval for 0-10 scores
rater_consistency    rater, all raters   share of repeated items answered as the first time (sides were
                                         swapped; pointwise: within 1 point), over every criterion
gold_accuracy        rater, all raters   share of gold items where the image with every element won
                                         (pointwise: scored higher than the one missing an element)
pairwise_accuracy    metric column       share of rated pairs where the metric prefers the image the human
                                         majority prefers (a metric tie counts 1/2; pairs the humans tie are
                                         left out), CI over sets; the LLM judge's pairwise verdicts are
                                         subject ``llm_judge/<criterion> (pairwise)``
kendall_tau          metric column       Kendall tau-b between the method ranking of the metric (its mean over
                                         the rated images) and the human one (mean per-image human value)
spearman_rho,        metric column       correlation over rated images of the metric's value with the
pearson_r                                image's human value (pairwise: its preference share; pointwise: mean)

Human majority on a pair: the mean of the raters' votes (A = 1, tie = 0.5, B = 0) above or below 1/2.
Pointwise answers give pairs too: two rated images of one set and seed from two methods.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import krippendorff
import numpy as np
import pandas as pd
from scipy.stats import kendalltau, pearsonr, spearmanr

from harness import stats
from harness.io import atomic_write
from harness.rating.export import HUMAN_METRIC, pairwise_votes, per_image_values, pointwise_scores
from harness.rating.study import RUBRICS
from harness.store import AGREEMENT_FILE
from harness.tables import JUDGE_METRIC, column_groups, has_value, judge_pairs

AGREEMENT_COLUMNS = ["figure", "rubric", "criterion", "subject", "value", "ci_low", "ci_high", "n", "n_raters",
                     "n_ratings", "detail", "missing_reason"]
ALL_RATERS = "all raters"
ALL_CRITERIA = "all"
METRIC_FIGURES = ("pairwise_accuracy", "kendall_tau", "spearman_rho", "pearson_r")
POINTWISE_CONSISTENT_WITHIN = 1.0


def _row(figure: str, rubric: str, criterion: str, subject: str, value: float = np.nan, ci: tuple[float, float] =
         (np.nan, np.nan), n: int = 0, raters: int = 0, ratings: int = 0, detail: str = "",
         missing: str = "") -> dict[str, Any]:
    value = float(value)
    if np.isnan(value) and not missing:
        missing = "not computable"
    return {"figure": figure, "rubric": rubric, "criterion": criterion, "subject": subject, "value": value,
            "ci_low": float(ci[0]), "ci_high": float(ci[1]), "n": int(n), "n_raters": int(raters),
            "n_ratings": int(ratings), "detail": detail, "missing_reason": "" if not np.isnan(value) else missing}


# ------------------------------------------------------------------------------------------ among humans


def _set_mean_ci(per_item: pd.DataFrame, column: str) -> tuple[float, tuple[float, float]]:
    per_set = per_item.groupby("set_id")[column].mean().to_numpy()
    mean, low, high = stats.mean_ci(per_set)
    return mean, (low, high)


def win_rates(votes: pd.DataFrame, rubric: str) -> list[dict[str, Any]]:
    rows = []
    main = votes[votes["kind"] == "main"]
    for (a, b, criterion), part in main.groupby(["method_a", "method_b", "criterion"], sort=True):
        per_item = part.groupby(["base_item", "set_id"], as_index=False)["pref_a"].mean()
        mean, ci = _set_mean_ci(per_item, "pref_a")
        wins, ties, losses = (int((per_item["pref_a"] > 0.5).sum()), int((per_item["pref_a"] == 0.5).sum()),
                              int((per_item["pref_a"] < 0.5).sum()))
        rows.append(_row("win_rate", rubric, criterion, f"{a} vs {b}", mean, ci, len(per_item),
                         part["rater"].nunique(), len(part),
                         detail=f"majority over items: {a} {wins}, tie {ties}, {b} {losses}; "
                                f"sets {per_item['set_id'].nunique()}"))
    return rows


def mean_scores(scores: pd.DataFrame, rubric: str) -> list[dict[str, Any]]:
    rows = []
    main = scores[scores["kind"] == "main"]
    for (method, criterion), part in main.groupby(["method", "criterion"], sort=True):
        per_item = part.groupby(["base_item", "set_id"], as_index=False)["score"].mean()
        mean, ci = _set_mean_ci(per_item, "score")
        rows.append(_row("mean_score", rubric, criterion, method, mean, ci, len(per_item), part["rater"].nunique(),
                         len(part), detail=f"sets {per_item['set_id'].nunique()}"))
    return rows


def krippendorff_alphas(main: pd.DataFrame, value: str, level: str, rubric: str) -> list[dict[str, Any]]:
    """Per criterion, alpha over main items (units) x raters; ``value`` holds a rater's answer as a number."""
    rows = []
    for criterion, part in main.groupby("criterion", sort=True):
        matrix = part.pivot_table(index="rater", columns="base_item", values=value, aggfunc="first")
        pairable = int((matrix.notna().sum(axis=0) >= 2).sum())
        raters, ratings = matrix.shape[0], int(matrix.notna().to_numpy().sum())
        if raters < 2 or pairable == 0:
            rows.append(_row("krippendorff_alpha", rubric, criterion, ALL_RATERS, n=pairable, raters=raters,
                             ratings=ratings, missing=f"needs 2 or more raters on the same items ({raters} rater(s), "
                                                     f"{pairable} item(s) rated twice or more)"))
            continue
        data = matrix.to_numpy(dtype=float)
        missing = ""
        if np.unique(data[~np.isnan(data)]).size < 2:
            rows.append(_row("krippendorff_alpha", rubric, criterion, ALL_RATERS, n=pairable, raters=raters,
                             ratings=ratings, missing="undefined: every rating has the same value (no variation "
                                                       "to agree on)"))
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                alpha = float(krippendorff.alpha(reliability_data=data, level_of_measurement=level))
        except (ValueError, ZeroDivisionError) as error:
            alpha, missing = np.nan, f"undefined: {error}"
        if np.isnan(alpha) and not missing:
            missing = "undefined: every rating has the same value (no variation to agree on)"
        rows.append(_row("krippendorff_alpha", rubric, criterion, ALL_RATERS, alpha, n=pairable, raters=raters,
                         ratings=ratings, detail=f"level {level}; units rated by 2+ raters: {pairable}",
                         missing=missing))
    return rows


def _by_rater(figure: str, rubric: str, criterion: str, hits: pd.DataFrame, what: str) -> list[dict[str, Any]]:
    """``hits``: one row per judged answer with columns rater and hit (1/0); per rater and all raters."""
    if hits.empty:
        return [_row(figure, rubric, criterion, ALL_RATERS, missing=f"no {what} answered")]
    rows = [_row(figure, rubric, criterion, rater, part["hit"].mean(), n=len(part), raters=1, ratings=len(part))
            for rater, part in hits.groupby("rater", sort=True)]
    rows.append(_row(figure, rubric, criterion, ALL_RATERS, hits["hit"].mean(), n=len(hits),
                     raters=hits["rater"].nunique(), ratings=len(hits)))
    return rows


def rater_consistency(frame: pd.DataFrame, value: str, pointwise: bool, rubric: str) -> list[dict[str, Any]]:
    first = frame[frame["kind"] == "main"][["rater", "item", "criterion", value]]
    again = frame[frame["kind"] == "repeat"][["rater", "base_item", "criterion", value]]
    paired = again.merge(first, left_on=["rater", "base_item", "criterion"], right_on=["rater", "item", "criterion"],
                         suffixes=("_again", "_first"))
    difference = (paired[f"{value}_again"] - paired[f"{value}_first"]).abs()
    hit = difference <= POINTWISE_CONSISTENT_WITHIN if pointwise else difference == 0
    return _by_rater("rater_consistency", rubric, ALL_CRITERIA, paired.assign(hit=hit.astype(float)),
                     "repeated item was")


def gold_accuracy(votes: pd.DataFrame, scores: pd.DataFrame, rubric_name: str, rubric: str) -> list[dict[str, Any]]:
    criterion = RUBRICS[rubric_name].gold_criterion
    if rubric_name == "pairwise":
        gold = votes[(votes["kind"] == "gold") & (votes["criterion"] == criterion)]
        expected_a = (gold["expected"] == gold["key_a"]).astype(float)
        hits = gold.assign(hit=(gold["pref_a"] == expected_a).astype(float))
    else:
        gold = scores[(scores["kind"] == "gold") & (scores["criterion"] == criterion)]
        group = gold["item"].str.rsplit("|", n=1).str[0]
        wide = gold.assign(group=group).pivot_table(index=["rater", "group"], columns="expected", values="score",
                                                    aggfunc="first").dropna()
        wide = wide.reset_index() if not wide.empty else pd.DataFrame(columns=["rater", "good", "bad"])
        hits = wide.assign(hit=(wide.get("good", 0) > wide.get("bad", 0)).astype(float))
    return _by_rater("gold_accuracy", rubric, criterion, hits[["rater", "hit"]], "gold item")


# ----------------------------------------------------------------------------------- metrics vs humans


def metric_values(tidy: pd.DataFrame, lora_ids: frozenset[str]) -> pd.DataFrame:
    """One row per automatic leaderboard column x image: column, key, value (human rows left out)."""
    valued = tidy[has_value(tidy) & (tidy["metric"] != HUMAN_METRIC)]
    if valued.empty:
        return pd.DataFrame(columns=["column", "key", "value"])
    groups = column_groups(valued, lora_ids)
    merged = valued.merge(groups[["metric", "sub_metric", "metric_key", "column"]],
                          on=["metric", "sub_metric", "metric_key"])
    return merged.groupby(["column", "image_key"], sort=False, as_index=False)["value"].mean().rename(
        columns={"image_key": "key"})


def human_pairs(votes: pd.DataFrame, scores: pd.DataFrame, rubric_name: str) -> pd.DataFrame:
    """Per criterion x rated pair: key_a, key_b, set_id, the human preference for A (mean of votes), counts."""
    if rubric_name == "pairwise":
        main = votes[votes["kind"] == "main"]
        return main.groupby(["criterion", "key_a", "key_b", "method_a", "method_b", "set_id", "seed"],
                            as_index=False).agg(human=("pref_a", "mean"), ratings=("pref_a", "size"),
                                                raters=("rater", "nunique"))
    main = scores[scores["kind"] == "main"]
    per_image = main.groupby(["criterion", "key", "method", "set_id", "seed"], as_index=False).agg(
        score=("score", "mean"), ratings=("score", "size"), raters=("rater", "nunique"))
    pairs = per_image.merge(per_image, on=["criterion", "set_id", "seed"], suffixes=("_a", "_b"))
    pairs = pairs[pairs["method_a"] < pairs["method_b"]]
    human = np.sign(pairs["score_a"] - pairs["score_b"]) / 2 + 0.5
    return pairs.assign(human=human, ratings=pairs["ratings_a"] + pairs["ratings_b"],
                        raters=np.maximum(pairs["raters_a"], pairs["raters_b"]))[
        ["criterion", "key_a", "key_b", "method_a", "method_b", "set_id", "seed", "human", "ratings", "raters"]]


def pairwise_accuracy(pairs: pd.DataFrame, value_a: pd.Series, value_b: pd.Series) -> tuple[pd.DataFrame, int]:
    """Per decided pair: 1 when the metric prefers the human majority's image, 1/2 on a metric tie, else 0."""
    value_a, value_b = (pd.to_numeric(v, errors="coerce").astype(float) for v in (value_a, value_b))
    both = value_a.notna() & value_b.notna()
    decided = both & (pairs["human"] != 0.5)
    human_a = pairs["human"] > 0.5
    difference = value_a - value_b
    tie = difference.abs() <= stats.TIE_TOLERANCE
    score = np.where(tie, 0.5, ((difference > 0) == human_a).astype(float))
    return pairs.assign(score=score)[decided], int(both.sum() - decided.sum())


def _accuracy_row(subject: str, pairs: pd.DataFrame, value_a: pd.Series, value_b: pd.Series, criterion: str,
                  rubric: str) -> dict[str, Any]:
    scored, human_ties = pairwise_accuracy(pairs, value_a, value_b)
    if scored.empty:
        return _row("pairwise_accuracy", rubric, criterion, subject,
                    missing="no rated pair with a human majority has this metric on both images")
    mean, ci = _set_mean_ci(scored, "score")
    metric_ties = int((scored["score"] == 0.5).sum())
    return _row("pairwise_accuracy", rubric, criterion, subject, mean, ci, len(scored), scored["raters"].max(),
                scored["ratings"].sum(), detail=f"metric ties {metric_ties}; pairs the humans tie, left out: "
                                                f"{human_ties}")


def _ranking(means: pd.Series) -> str:
    return " > ".join(means.sort_values(ascending=False, kind="stable").index)


def metric_agreement(votes: pd.DataFrame, scores: pd.DataFrame, human_images: pd.DataFrame, metrics: pd.DataFrame,
                     judge: pd.DataFrame, rubric_name: str, rubric: str) -> list[dict[str, Any]]:
    """Per human criterion x metric column: pairwise accuracy, Kendall tau over methods, per-image correlations."""
    rows: list[dict[str, Any]] = []
    pairs_all = human_pairs(votes, scores, rubric_name)
    answers = votes if rubric_name == "pairwise" else scores
    main = answers[answers["kind"] == "main"]
    for criterion in RUBRICS[rubric_name].criteria:
        pairs = pairs_all[pairs_all["criterion"] == criterion].reset_index(drop=True)
        images = human_images[human_images["sub_metric"] == criterion][["key", "value"]].rename(
            columns={"value": "human"})
        of_criterion = main[main["criterion"] == criterion]
        raters, ratings = of_criterion["rater"].nunique(), len(of_criterion)
        if pairs.empty and images.empty:
            continue
        method_of = pd.concat([pairs.rename(columns={"key_a": "key", "method_a": "method"})[["key", "method"]],
                               pairs.rename(columns={"key_b": "key", "method_b": "method"})[["key", "method"]]])
        if rubric_name == "pointwise":
            method_of = pd.concat([method_of, of_criterion[["key", "method"]]])
        method_of = method_of.drop_duplicates("key").set_index("key")["method"]
        for column, values in metrics.groupby("column", sort=True):
            value = values.set_index("key")["value"]
            rows.append(_accuracy_row(column, pairs, pairs["key_a"].map(value), pairs["key_b"].map(value),
                                      criterion, rubric))
            paired = images.assign(value=images["key"].map(value), method=images["key"].map(method_of)).dropna()
            rows.append(_kendall_row(column, paired, criterion, rubric, raters, ratings))
            for figure, function in (("spearman_rho", spearmanr), ("pearson_r", pearsonr)):
                if len(paired) >= 3 and paired["value"].nunique() > 1 and paired["human"].nunique() > 1:
                    result = function(paired["value"], paired["human"])
                    rows.append(_row(figure, rubric, criterion, column, float(result.statistic), n=len(paired),
                                     raters=raters, ratings=ratings, detail=f"p = {float(result.pvalue):.3g}"))
                else:
                    rows.append(_row(figure, rubric, criterion, column, n=len(paired), raters=raters,
                                     ratings=ratings, missing="needs 3+ rated images with varying values"))
        for judge_criterion, verdicts in judge.groupby("criterion", sort=True):
            merged = pairs.merge(verdicts[["set_id", "seed", "method_a", "method_b", "score_a", "score_b"]],
                                 on=["set_id", "seed", "method_a", "method_b"], how="left")
            rows.append(_accuracy_row(f"{JUDGE_METRIC}/{judge_criterion} (pairwise)", merged, merged["score_a"],
                                      merged["score_b"], criterion, rubric))
    return rows


def _kendall_row(column: str, paired: pd.DataFrame, criterion: str, rubric: str, raters: int,
                 ratings: int) -> dict[str, Any]:
    methods = paired.groupby("method")[["value", "human"]].mean()
    if len(methods) < 2 or methods["value"].nunique() < 2 or methods["human"].nunique() < 2:
        return _row("kendall_tau", rubric, criterion, column, n=len(methods), raters=raters, ratings=ratings,
                    missing="needs 2+ methods whose means differ, by the metric and by the raters")
    result = kendalltau(methods["value"], methods["human"])
    return _row("kendall_tau", rubric, criterion, column, float(result.statistic), n=len(methods), raters=raters,
                ratings=ratings, detail=f"metric: {_ranking(methods['value'])}; human: {_ranking(methods['human'])}")


# -------------------------------------------------------------------------------------------------- table


def agreement_table(answers: pd.DataFrame, tidy: pd.DataFrame,
                    lora_ids: frozenset[str] = frozenset()) -> pd.DataFrame:
    """Every figure of agreement.csv from the answers (``RatingsDB.answers()``) and the tidy score table."""
    rows: list[dict[str, Any]] = []
    metrics = metric_values(tidy, lora_ids)
    judge = judge_pairs(tidy)
    for (rubric_name, rubric), part in answers.groupby(["rubric", "rubric_version"], sort=True):
        votes, scores = pairwise_votes(part), pointwise_scores(part)
        pairwise = rubric_name == "pairwise"
        human_images = per_image_values(part)
        human_images = human_images[human_images["rubric_version"] == rubric]
        if pairwise:
            rows += win_rates(votes, rubric)
            votes = votes.assign(code=votes["pref_a"].map({1.0: 0.0, 0.5: 1.0, 0.0: 2.0}))
            rows += krippendorff_alphas(votes[votes["kind"] == "main"], "code", "nominal", rubric)
            rows += rater_consistency(votes, "pref_a", False, rubric)
        else:
            rows += mean_scores(scores, rubric)
            rows += krippendorff_alphas(scores[scores["kind"] == "main"], "score", "interval", rubric)
            rows += rater_consistency(scores, "score", True, rubric)
        rows += gold_accuracy(votes, scores, rubric_name, rubric)
        rows += metric_agreement(votes, scores, human_images, metrics, judge, rubric_name, rubric)
    return pd.DataFrame(rows, columns=AGREEMENT_COLUMNS)


def metric_summary(table: pd.DataFrame, figures: tuple[str, ...] = ("pairwise_accuracy", "kendall_tau",
                                                                    "spearman_rho")) -> pd.DataFrame:
    """Metric rows as one line per rubric x metric column: ``<criterion> <figure>`` columns (for print and report)."""
    rows = table[table["figure"].isin(figures)]
    if rows.empty:
        return pd.DataFrame()
    wide = rows.pivot_table(index=["rubric", "subject"], columns=["criterion", "figure"], values="value",
                            aggfunc="first", sort=False)
    order = [(c, f) for c in dict.fromkeys(rows["criterion"]) for f in figures if (c, f) in wide.columns]
    wide = wide[order]
    wide.columns = [f"{criterion} {figure}" for criterion, figure in order]
    return wide.reset_index()


def write_agreement(results_dir: str | Path, table: pd.DataFrame) -> Path:
    path = Path(results_dir) / AGREEMENT_FILE
    atomic_write(path, lambda tmp: table.to_csv(tmp, index=False, float_format="%.4f"))
    return path

"""Studies: YAML -> seeded item lists (main, repeats, gold), and the errors a wrong study gets."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness.rating.study import StudyError, StudySpec, build_study, default_spec
from harness.store import TESTBED_FILE
from results_fixture import METHOD_MEANS, SEEDS, SETS, results_dir  # noqa: F401

PROJECT = Path(__file__).resolve().parents[1]


def spec(**data) -> StudySpec:
    return StudySpec.from_dict({"name": "s", **data})


def test_plan_is_seeded_overlapping_and_blind(results_dir: Path) -> None:
    study = build_study(spec(pairs=["merge:switch", "composite:merge"], items_per_rater=10, repeats=3, gold=2),
                        results_dir)
    again = build_study(spec(pairs=["merge:switch", "composite:merge"], items_per_rater=10, repeats=3, gold=2),
                        results_dir)
    alice, bob = study.plan("alice"), study.plan("bob")
    # the same list (ids and sides) every time it is rebuilt: resuming needs nothing but the rater id
    assert [(s.id, s.left, s.right) for s in alice] == [(s.id, s.left, s.right) for s in again.plan("alice")]
    assert len(alice) == study.list_length == 10 + 2 + 3
    # every rater gets the same main items (so their agreement can be measured), in their own order
    main = lambda plan: [s.id for s in plan if s.kind == "main"]  # noqa: E731
    assert sorted(main(alice)) == sorted(main(bob)) and main(alice) != main(bob)
    for plan in (alice, bob):
        for position, shown in enumerate(plan):
            if shown.kind == "repeat":  # later than its original, sides swapped
                first = next(i for i, s in enumerate(plan) if s.id == shown.repeat_of)
                assert first < position
                assert (shown.left, shown.right) == (plan[first].right, plan[first].left)
        assert sum(s.kind == "gold" for s in plan) == 2 and sum(s.kind == "repeat" for s in plan) == 3
    # pairs are of one set and seed; A is the method first in label order
    for shown in alice:
        assert shown.item.methods[0] < shown.item.methods[1]
        assert {shown.method_left, shown.method_right} == set(shown.item.methods)
        assert {study.images[k].set_id for k in shown.item.keys} == {shown.item.set_id}
    # sides are randomised: both orders occur
    assert {s.left == s.item.keys[0] for s in alice} == {True, False}


def test_gold_items_come_from_the_ground_truth(results_dir: Path) -> None:
    from harness.rating.study import truth_values

    study = build_study(spec(gold=3, items_per_rater=5), results_dir)  # gold_truth from testbed.json
    truth = truth_values(results_dir, "oracle/all_present")
    for item in study.gold:
        good = item.expected
        bad = next(k for k in item.keys if k != good)
        assert truth[good] == 1.0 and truth[bad] == 0.0


def test_all_pairs_by_default_and_every_item_with_all(results_dir: Path) -> None:
    study = build_study(spec(items_per_rater="all", gold=0, repeats=0), results_dir)
    methods = sorted(METHOD_MEANS)
    pairs = {item.methods for item in study.main}
    assert pairs == {(a, b) for i, a in enumerate(methods) for b in methods[i + 1:]}
    images = len(SETS) * len(SEEDS)
    # composite has one failed image: its pairs miss that set and seed
    assert len(study.main) == 3 * images - 2


def test_pointwise_items_are_images_and_gold_is_a_pair_of_items(results_dir: Path) -> None:
    study = build_study(spec(rubric="pointwise", methods=["merge", "switch"], items_per_rater=6, gold=1, repeats=2),
                        results_dir)
    assert all(len(item.keys) == 1 and item.methods[0] in ("merge", "switch") for item in study.main)
    assert sorted(item.expected for item in study.gold) == ["bad", "good"]
    plan = study.plan("carol")
    assert all(s.right is None for s in plan) and len(plan) == 6 + 2 + 2


def test_n_filter_and_method_names(results_dir: Path) -> None:
    study = build_study(spec(pairs=["merge:switch"], n=[3], items_per_rater="all", gold=0), results_dir)
    assert {item.n for item in study.main} == {3}


@pytest.mark.parametrize("data, message", [
    ({"pairs": ["merge:nope"]}, "unknown method 'nope'"),
    ({"pairs": ["merge:merge"]}, "two different methods"),
    ({"n": [7], "gold": 0}, "is empty"),
    ({"rubric": "stars"}, "rubric 'stars'"),
    ({"colour": "red"}, "unknown study key"),
    ({"items_per_rater": 0}, "items_per_rater"),
    ({"gold": 500}, "asks for 500 gold items"),
    ({"gold": [{"set": "n2_a", "seed": 0, "good": "switch"}]}, "gold item"),
    ({"gold": [{"set": "nope", "seed": 0, "good": "switch", "bad": "merge"}]}, "has no image of set 'nope'"),
])
def test_bad_studies_name_the_problem(results_dir: Path, data: dict, message: str) -> None:
    with pytest.raises(StudyError, match=message):
        build_study(spec(**data), results_dir)


def test_unknown_method_lists_the_known_ones(results_dir: Path) -> None:
    with pytest.raises(StudyError) as error:
        build_study(spec(pairs=["merge:nope"]), results_dir)
    assert all(method in str(error.value) for method in METHOD_MEANS)


def test_gold_needs_a_ground_truth(results_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "copy"
    shutil.copytree(results_dir, folder)
    (folder / TESTBED_FILE).unlink()
    with pytest.raises(StudyError, match="names no ground truth"):
        build_study(spec(gold=2), folder)
    assert build_study(spec(gold=2, gold_truth="oracle/all_present"), folder).gold


def test_folder_without_images(tmp_path: Path) -> None:
    with pytest.raises(StudyError, match="holds no images"):
        build_study(spec(), tmp_path)


def test_example_study_files_parse() -> None:
    for path in sorted((PROJECT / "conf" / "rating").glob("*.yaml")):
        study = StudySpec.from_yaml(path)
        assert study.name and study.rubric in ("pairwise", "pointwise")
    with pytest.raises(StudyError, match="not found"):
        StudySpec.from_yaml(PROJECT / "conf" / "rating" / "missing.yaml")


def test_default_study_is_named_after_its_definition() -> None:
    assert default_spec(pairs=["a:b"]).name == default_spec(pairs=["a:b"]).name != default_spec(pairs=["a:c"]).name
    assert default_spec(name="mine").name == "mine"

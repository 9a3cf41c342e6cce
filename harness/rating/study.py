"""A rating study: what raters are shown, from a small YAML file, seeded so every rater's list can be rebuilt.

A study file (examples in ``conf/rating/``; every key optional except where noted)::

    name: toy-pairwise           # the study's id in ratings.sqlite (default: the file name)
    rubric: pairwise             # pairwise (two images, A / B / tie per criterion) | pointwise (one image, 0-10)
    pairs: [merge:switch]        # pairwise: method pairs (labels or names); default every pair of methods
    methods: [merge, switch]     # pointwise: methods; default every method
    n: [3, 4]                    # only sets with these N; default every N
    items_per_rater: 40          # main items each rater sees (the same items for every rater, each in its own
                                 # order and with its own sides); null = every item
    repeats: 4                   # main items shown again later with sides swapped (rater consistency)
    gold: 4                      # gold items: pairs whose ground truth differs (one image misses an element),
                                 # picked from ``gold_truth``; or a list of {set, seed, good, bad}
    gold_truth: oracle/all_present   # default: the ground truth in the folder's testbed.json
    seed: 0

Items: a *main* item is one pair of images of the same set and seed from two methods (pairwise; the pair is
ordered by method label, A before B) or one image (pointwise). Which main items a study holds is fixed by the
study (its seed), so raters overlap and their agreement can be measured; each rater gets them in an order and
with sides drawn from the study seed and the rater id. A *repeat* shows a main item again after it, sides
swapped. A *gold* item is a pair where one image obviously misses an element (pointwise: both images of that
pair, as two items); raters are not told which items are repeats or gold.

This module does not store answers (``harness.rating.db``) or serve pages (``harness.rating.server``).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from harness.io import stable_hash
from harness.rating.db import Answer
from harness.judge.rubrics import POINTWISE_CRITERIA
from harness.store import RETRY_STATUSES, ImageRecord, iter_images, load_scores, read_testbed_info


class StudyError(ValueError):
    """A study that cannot be built: the message names the problem and the fix."""


@dataclass(frozen=True)
class Rubric:
    """What a rater is asked: one question per criterion, with the answers allowed."""

    name: str
    version: str  # recorded with every answer; bump it when a question's text changes
    criteria: dict[str, str]  # criterion -> the question shown
    answers: tuple[str, ...]
    gold_criterion: str  # the criterion a gold item has a known answer for


SKIP = "skip"  # "can't tell": recorded, but not a vote (a criterion with only skips is missing, status refused)
PAIRWISE_ANSWERS = ("left", "right", "tie")
POINTWISE_SCORES = tuple(str(score) for score in range(11))

RUBRICS = {
    "pairwise": Rubric(
        name="pairwise", version="pairwise-1",
        criteria={
            "composition": "Composition: which image shows all the listed elements?",
            "identity": "Identity: which image keeps the character looking like the named character?",
            "quality": "Image quality: which image is cleaner and more coherent (fewer artefacts)?",
        },
        answers=(*PAIRWISE_ANSWERS, SKIP), gold_criterion="composition"),
    # The four criteria of the CMLoRA / LoRAtorio judges (the LLM judge's pointwise rubric uses the same names).
    "pointwise": Rubric(
        name="pointwise", version="pointwise-1",
        criteria=dict(zip(POINTWISE_CRITERIA, (
            "Element integration (0-10): are all listed elements present and blended into one coherent scene?",
            "Spatial consistency (0-10): are positions, scale and overlap of the elements plausible?",
            "Semantic accuracy (0-10): does each element show its named identity and key features?",
            "Aesthetic quality (0-10): overall visual appeal, no deformities, clean texture and colour?",
        ))),
        answers=(*POINTWISE_SCORES, SKIP), gold_criterion="element_integration"),
}

STUDY_KEYS = {"name", "rubric", "pairs", "methods", "n", "items_per_rater", "repeats", "gold", "gold_truth", "seed"}
DEFAULT_ITEMS_PER_RATER = 40
DEFAULT_REPEATS = 4
DEFAULT_GOLD = 4


@dataclass(frozen=True)
class GoldPair:
    set_id: str
    seed: int
    good: str  # the method whose image shows every element
    bad: str  # the method whose image misses one


@dataclass(frozen=True)
class StudySpec:
    """A study as written in its YAML file, validated; ``definition()`` is what ratings.sqlite records."""

    name: str
    rubric: str = "pairwise"
    pairs: tuple[tuple[str, str], ...] | None = None
    methods: tuple[str, ...] | None = None
    n: tuple[int, ...] | None = None
    items_per_rater: int | None = DEFAULT_ITEMS_PER_RATER
    repeats: int = DEFAULT_REPEATS
    gold: int | tuple[GoldPair, ...] = DEFAULT_GOLD
    gold_truth: str | None = None
    seed: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any], default_name: str = "") -> StudySpec:
        if not isinstance(data, dict):
            raise StudyError(f"a study must be a YAML mapping of {sorted(STUDY_KEYS)}, got {type(data).__name__}")
        unknown = sorted(set(data) - STUDY_KEYS)
        if unknown:
            raise StudyError(f"unknown study key(s) {unknown}; the keys are {sorted(STUDY_KEYS)} "
                             f"(see docs/rating.md)")
        rubric = str(data.get("rubric", "pairwise"))
        if rubric not in RUBRICS:
            raise StudyError(f"rubric {rubric!r} is not one of {sorted(RUBRICS)}")
        name = str(data.get("name") or default_name or "").strip()
        if not name or len(name) > 100 or any(c in name for c in "/\\\n"):
            raise StudyError(f"study name {name!r}: give a short `name:` (no slashes, at most 100 characters)")
        gold = data.get("gold", DEFAULT_GOLD)
        if isinstance(gold, list):
            gold = tuple(_gold_pair(entry) for entry in gold)
        else:
            gold = _count("gold", gold)
        items = data.get("items_per_rater", DEFAULT_ITEMS_PER_RATER)
        return cls(
            name=name, rubric=rubric,
            pairs=None if data.get("pairs") is None else tuple(parse_pair(p) for p in _list("pairs", data["pairs"])),
            methods=None if data.get("methods") is None else tuple(str(m) for m in _list("methods", data["methods"])),
            n=None if data.get("n") is None else tuple(_count("n", v) for v in _list("n", data["n"])),
            items_per_rater=None if items in (None, "all") else _count("items_per_rater", items, minimum=1),
            repeats=_count("repeats", data.get("repeats", DEFAULT_REPEATS)),
            gold=gold, gold_truth=data.get("gold_truth"), seed=_count("seed", data.get("seed", 0)))

    @classmethod
    def from_yaml(cls, path: str | Path) -> StudySpec:
        path = Path(path)
        if not path.is_file():
            raise StudyError(f"study file {path} not found (examples: conf/rating/*.yaml)")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise StudyError(f"{path} is not valid YAML: {error}") from None
        return cls.from_dict(data or {}, default_name=path.stem)

    def definition(self) -> dict[str, Any]:
        """Everything that decides what raters see, as plain JSON (recorded per study in ratings.sqlite)."""
        gold = ([vars(g) for g in self.gold] if isinstance(self.gold, tuple) else self.gold)
        return {"name": self.name, "rubric": self.rubric, "rubric_version": RUBRICS[self.rubric].version,
                "pairs": [list(p) for p in self.pairs] if self.pairs is not None else None,
                "methods": list(self.methods) if self.methods is not None else None,
                "n": list(self.n) if self.n is not None else None, "items_per_rater": self.items_per_rater,
                "repeats": self.repeats, "gold": gold, "gold_truth": self.gold_truth, "seed": self.seed}


def parse_pair(text: Any) -> tuple[str, str]:
    """``"A:B"`` (or a two-element list) -> ``(A, B)``."""
    parts = [str(p).strip() for p in (text if isinstance(text, (list, tuple)) else str(text).split(":"))]
    if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
        raise StudyError(f"pair {text!r}: write two different methods as A:B, e.g. merge:switch")
    return parts[0], parts[1]


def _list(key: str, value: Any) -> list[Any]:
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)):
        raise StudyError(f"{key}: expected a list, got {value!r}")
    return list(value)


def _count(key: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise StudyError(f"{key}: expected a whole number >= {minimum}, got {value!r}")
    return value


def _gold_pair(entry: Any) -> GoldPair:
    if not isinstance(entry, dict) or set(entry) != {"set", "seed", "good", "bad"}:
        raise StudyError(f"gold item {entry!r}: write {{set: <set id>, seed: <seed>, good: <method>, bad: <method>}}")
    return GoldPair(str(entry["set"]), _count("gold seed", entry["seed"]), str(entry["good"]), str(entry["bad"]))


# ------------------------------------------------------------------------------------------------ items


@dataclass(frozen=True)
class Item:
    """A main or gold item, independent of who sees it: ``keys``/``methods`` are (A, B) or (the image,)."""

    id: str
    kind: str  # "main" | "gold"
    set_id: str
    seed: int
    n: int
    keys: tuple[str, ...]
    methods: tuple[str, ...]
    expected: str = ""  # gold, pairwise: the key that should win; gold, pointwise: "good" or "bad"


@dataclass(frozen=True)
class Shown:
    """One entry of a rater's list: an item with the sides this rater sees."""

    id: str  # unique in the study: the item's id, plus "|repeat" for a repeat
    kind: str  # "main" | "repeat" | "gold"
    item: Item
    left: str  # image key shown on the left (pointwise: the image)
    right: str | None  # image key shown on the right (pointwise: None)
    repeat_of: str = ""  # a repeat: the id of the item it repeats

    @property
    def method_left(self) -> str:
        return self.item.methods[self.item.keys.index(self.left)]

    @property
    def method_right(self) -> str | None:
        return None if self.right is None else self.item.methods[self.item.keys.index(self.right)]


def _rng(*parts: Any) -> np.random.Generator:
    return np.random.default_rng(int(stable_hash(list(parts), 16), 16))


@dataclass
class Study:
    """A study resolved against a results folder: its main and gold items, and each rater's list."""

    spec: StudySpec
    images: dict[str, ImageRecord]  # key -> record, every image an item shows
    main: list[Item]  # the study's main items (the same for every rater)
    gold: list[Item]
    _plans: dict[str, list[Shown]] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def rubric(self) -> Rubric:
        return RUBRICS[self.spec.rubric]

    @property
    def list_length(self) -> int:
        """How many items each rater's list holds (main, gold and repeats)."""
        return len(self.main) + len(self.gold) + min(self.spec.repeats, len(self.main))

    def plan(self, rater: str) -> list[Shown]:
        """The items ``rater`` sees, in order: the same list every time (resuming needs nothing else)."""
        if rater not in self._plans:
            self._plans[rater] = self._build_plan(rater)
        return self._plans[rater]

    def _build_plan(self, rater: str) -> list[Shown]:
        rng = _rng("plan", self.spec.seed, self.name, rater)
        pairwise = self.spec.rubric == "pairwise"

        def shown(item: Item, kind: str, swap: bool) -> Shown:
            keys = item.keys[::-1] if swap and pairwise else item.keys
            return Shown(id=item.id, kind=kind, item=item, left=keys[0], right=keys[1] if pairwise else None)

        items = [(item, "main") for item in self.main] + [(item, "gold") for item in self.gold]
        order = rng.permutation(len(items))
        plan = [shown(items[i][0], items[i][1], bool(rng.integers(2))) for i in order]
        n_repeats = min(self.spec.repeats, len(self.main))
        for first in sorted(rng.choice(len(self.main), size=n_repeats, replace=False).tolist()):
            original = next(s for s in plan if s.id == self.main[first].id)
            # later than the original, with at least two other items between when the list allows it
            earliest = min(plan.index(original) + 3, len(plan))
            plan.insert(int(rng.integers(earliest, len(plan) + 1)), Shown(
                id=original.id + "|repeat", kind="repeat", item=original.item,
                left=original.right if pairwise else original.left, right=original.left if pairwise else None,
                repeat_of=original.id))
        return plan

    def shown_by_id(self, rater: str) -> dict[str, Shown]:
        return {s.id: s for s in self.plan(rater)}


def build_study(spec: StudySpec, results_dir: str | Path) -> Study:
    """Resolve ``spec`` against the images of ``results_dir``; a StudyError says what is missing and how to fix it."""
    results_dir = Path(results_dir)
    records = list(iter_images(results_dir))
    if not records:
        raise StudyError(f"{results_dir} holds no images (images/<method>/<set>/seed<N>.png with metadata.json): "
                         f"rate a folder a run wrote, e.g. results/toy")
    by_method: dict[str, dict[tuple[str, int], ImageRecord]] = {}
    names: dict[str, str] = {}
    for record in records:
        if spec.n is None or record.n in spec.n:
            by_method.setdefault(record.method_label, {})[(record.set_id, record.seed)] = record
        names.setdefault(record.method, record.method_label)
    known = sorted({r.method_label for r in records})

    def label(method: str) -> str:
        if method in known:
            return method
        if method in names:
            return names[method]
        raise StudyError(f"unknown method {method!r} in study {spec.name!r}: {results_dir} has {known}")

    main: list[Item] = []
    if spec.rubric == "pairwise":
        pairs = ([tuple(sorted((label(a), label(b)))) for a, b in spec.pairs] if spec.pairs is not None
                 else list(itertools.combinations(known, 2)))
        pairs = list(dict.fromkeys(pairs))
        if not pairs:
            raise StudyError(f"study {spec.name!r} has no method pair: {results_dir} has {known}; name two or more")
        methods = sorted({m for pair in pairs for m in pair})
        for a, b in pairs:
            images_a, images_b = by_method.get(a, {}), by_method.get(b, {})
            for set_seed in sorted(set(images_a) & set(images_b)):
                ra, rb = images_a[set_seed], images_b[set_seed]
                main.append(Item(id=f"pair|{ra.set_id}|{ra.seed}|{a}|{b}", kind="main", set_id=ra.set_id,
                                 seed=ra.seed, n=ra.n, keys=(ra.key, rb.key), methods=(a, b)))
    else:
        methods = sorted({label(m) for m in spec.methods}) if spec.methods is not None else known
        for method in methods:
            for record in by_method.get(method, {}).values():
                main.append(Item(id=f"image|{record.set_id}|{record.seed}|{method}", kind="main",
                                 set_id=record.set_id, seed=record.seed, n=record.n, keys=(record.key,),
                                 methods=(method,)))
        main.sort(key=lambda item: item.id)
    if not main:
        where = f" with N in {list(spec.n)}" if spec.n is not None else ""
        raise StudyError(f"study {spec.name!r} is empty: no set and seed{where} has images of "
                         f"{'both methods of a pair' if spec.rubric == 'pairwise' else 'its methods'} in "
                         f"{results_dir}; pick other pairs, methods or N")
    pool_rng = _rng("pool", spec.seed, spec.name)
    main = [main[i] for i in pool_rng.permutation(len(main))]
    if spec.items_per_rater is not None:
        main = main[:spec.items_per_rater]
    gold_pairs = _gold_pairs(spec, results_dir, by_method, methods, label, pool_rng)
    gold: list[Item] = []
    for pair in gold_pairs:
        good, bad = by_method[pair.good][(pair.set_id, pair.seed)], by_method[pair.bad][(pair.set_id, pair.seed)]
        base = f"gold|{pair.set_id}|{pair.seed}|{pair.good}|{pair.bad}"
        if spec.rubric == "pairwise":
            a, b = sorted([good, bad], key=lambda r: r.method_label)
            gold.append(Item(id=base, kind="gold", set_id=pair.set_id, seed=pair.seed, n=good.n, keys=(a.key, b.key),
                             methods=(a.method_label, b.method_label), expected=good.key))
        else:
            for role, record in (("good", good), ("bad", bad)):
                gold.append(Item(id=f"{base}|{role}", kind="gold", set_id=pair.set_id, seed=pair.seed, n=good.n,
                                 keys=(record.key,), methods=(record.method_label,), expected=role))
    by_key = {record.key: record for record in records}
    images = {key: by_key[key] for item in main + gold for key in item.keys}
    return Study(spec=spec, images=images, main=main, gold=gold)


def _gold_pairs(spec: StudySpec, results_dir: Path, by_method: dict[str, dict[tuple[str, int], ImageRecord]],
                methods: list[str], label: Any, rng: np.random.Generator) -> list[GoldPair]:
    if isinstance(spec.gold, tuple):
        pairs = []
        for pair in spec.gold:
            good, bad = label(pair.good), label(pair.bad)
            for method in (good, bad):
                if (pair.set_id, pair.seed) not in by_method.get(method, {}):
                    raise StudyError(f"gold item {vars(pair)}: {method} has no image of set {pair.set_id!r} "
                                     f"seed {pair.seed} in {results_dir}")
            pairs.append(GoldPair(pair.set_id, pair.seed, good, bad))
        return pairs
    if spec.gold == 0:
        return []
    truth_name = spec.gold_truth or read_testbed_info(results_dir).get("ground_truth")
    if not truth_name:
        raise StudyError(f"study {spec.name!r} asks for {spec.gold} gold items but names no ground truth: set "
                         f"`gold_truth: <metric>/<sub_metric>` (e.g. oracle/all_present), list them as "
                         f"`gold: [{{set, seed, good, bad}}]`, or write `gold: 0`")
    truth = truth_values(results_dir, str(truth_name))
    candidates = []
    for good, bad in itertools.permutations(methods, 2):
        for set_seed in sorted(set(by_method.get(good, {})) & set(by_method.get(bad, {}))):
            good_key, bad_key = by_method[good][set_seed].key, by_method[bad][set_seed].key
            if truth.get(good_key) == 1.0 and truth.get(bad_key) == 0.0:
                candidates.append(GoldPair(set_seed[0], set_seed[1], good, bad))
    if len(candidates) < spec.gold:
        raise StudyError(f"study {spec.name!r} asks for {spec.gold} gold items but {truth_name} separates only "
                         f"{len(candidates)} pairs of {methods} (one image 1, the other 0): lower `gold:` or list "
                         f"gold items by hand")
    return [candidates[i] for i in sorted(rng.choice(len(candidates), size=spec.gold, replace=False).tolist())]


def truth_values(results_dir: str | Path, column: str) -> dict[str, float]:
    """image key -> value of ``<metric>/<sub_metric>`` (current images only; the settings with the most rows)."""
    metric, _, sub_metric = column.partition("/")
    scores = load_scores(results_dir)
    if scores.empty:
        raise StudyError(f"{results_dir} has no score rows, so no {column}: score it first "
                         f"(python -m harness score {results_dir} --metric {metric})")
    current = {record.key for record in iter_images(results_dir)}
    rows = scores[(scores["metric"] == metric) & (scores["sub_metric"] == sub_metric)
                  & ~scores["status"].isin(RETRY_STATUSES) & scores["value"].notna()
                  & scores["image_key"].isin(current)]
    if rows.empty:
        raise StudyError(f"{results_dir} has no {column} rows: score it first "
                         f"(python -m harness score {results_dir} --metric {metric}) or choose another gold_truth")
    key = rows["metric_key"].value_counts().index[0]
    rows = rows[rows["metric_key"] == key]
    return {k: float(v) for k, v in zip(rows["image_key"], rows["value"])}


def default_spec(rubric: str = "pairwise", pairs: list[str] | None = None, name: str | None = None,
                 **overrides: Any) -> StudySpec:
    """The study ``rate`` uses without ``--study``: named after its definition so a changed one is a new study."""
    data: dict[str, Any] = {"rubric": rubric, **{k: v for k, v in overrides.items() if v is not None}}
    if pairs:
        data["pairs"] = pairs
    data["name"] = name or f"{rubric}-{stable_hash(json.dumps(data, sort_keys=True, default=str), 8)}"
    return StudySpec.from_dict(data)


def answer_for(study: Study, shown: Shown, rater: str, criterion: str, answer: str,
               seconds: float | None) -> Answer:
    """The database row for ``rater``'s ``answer`` to ``criterion`` of ``shown`` (validated by the caller)."""
    item = shown.item
    return Answer(study=study.name, rater=rater, item=shown.id, kind=shown.kind, repeat_of=shown.repeat_of,
                  expected=item.expected, set_id=item.set_id, seed=item.seed, n=item.n, image_left=shown.left,
                  image_right=shown.right, method_left=shown.method_left, method_right=shown.method_right,
                  rubric=study.rubric.name, rubric_version=study.rubric.version, criterion=criterion, answer=answer,
                  seconds=seconds)

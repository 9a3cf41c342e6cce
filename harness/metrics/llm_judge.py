"""``llm_judge``: a vision-language model scores images through any OpenAI-compatible server.

Rubrics (``harness.judge.rubrics``):

- ``pairwise`` (Zhong et al.): images of methods A and B for the same set and seed, judged in BOTH orders
  (A first, then B first). Rows, for each scale c in {composition, quality}:
  image A ``<c>_vs_<B>`` = A's score averaged over the two orders, image B ``<c>_vs_<A>`` likewise,
  and image A ``<c>_consistent_vs_<B>`` = 1.0 if the same image wins (or ties) in both orders, else 0.0.
  Pairs come from ``pairs`` ([[A, B], ...] method labels) or ``baseline`` (every other method vs it).
- ``pointwise``: one image, rows ``element_integration``, ``spatial_consistency``, ``semantic_accuracy``,
  ``aesthetic_quality`` and ``overall`` (their mean).

A refusal, unparsable answer (after re-asks) or HTTP error gives value None with status ``refused`` /
``parse_error`` / ``error`` and a reason; a missing partner image or API key gives ``unavailable``.
Every answered call is cached on disk (``harness.judge.cache``), so a rerun makes no calls. With
``dry_run: true`` nothing is scored: the number of calls still needed and their estimated tokens and cost
are logged and printed (see ``estimate``).

``concurrency`` (a thread pool of that many workers) bounds the requests the harness is waiting on at once,
not the requests the server is working on: a request abandoned after ``timeout`` (then retried by the openai
client, up to ``max_retries`` times, or recorded as an ``error`` row while the worker moves on) may keep running
on the server, so with timeouts and retries a server can see more than ``concurrency`` requests at once.
Leave headroom under a server's own parallel-request limit, or raise ``timeout``.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from tqdm import tqdm

from harness.io import sha256_file, stable_hash
from harness.judge.cache import JudgeCache, call_key
from harness.judge.client import JudgeCall, JudgeClient, missing_key_reason
from harness.judge.rubrics import PAIRWISE_SCALES, POINTWISE_CRITERIA, RUBRICS
from harness.judge.settings import OPERATIONAL, JudgeSettings
from harness.metrics.base import METRICS, Metric, ScoreRow
from harness.store import ImageRecord, iter_images, pairwise_sub_metric, results_dir_of

log = logging.getLogger(__name__)

CACHEABLE = ("ok", "refused", "parse_error")  # answers the model gave; transport errors are retried next run


@dataclass
class PairUnit:
    """Images a and b (same set and seed) judged as [a, b] (call ``forward``) and [b, a] (``backward``)."""

    a: ImageRecord
    b: ImageRecord
    forward: str
    backward: str

    @property
    def keys(self) -> set[str]:
        return {self.forward, self.backward}


@dataclass
class PointUnit:
    image: ImageRecord
    call: str

    @property
    def keys(self) -> set[str]:
        return {self.call}


@dataclass
class MissingPartner:
    """A pairwise comparison that cannot be made: the other method has no image for this set and seed."""

    image: ImageRecord
    other_label: str
    keys: set[str] = field(default_factory=set)


Unit = PairUnit | PointUnit | MissingPartner


@METRICS.register("llm_judge")
class LLMJudge(Metric):
    version = "1"
    # A pair is judged once when both images arrive in the same batch; calls are cached, so one big batch
    # loses nothing to a crash (the rerun replays the cache without calls).
    batch_size = 4096

    def __init__(self, **settings: Any) -> None:
        self.config = JudgeSettings.from_dict(settings)
        super().__init__(**settings)
        self._image_hashes: dict[Path, str] = {}

    @property
    def key(self) -> str:
        """Only settings that shape the answers (not concurrency, timeouts, cache folder...) and rubric versions."""
        defining = {k: v for k, v in asdict(self.config).items() if k not in OPERATIONAL}
        versions = {name: RUBRICS[name].version for name in self.config.rubrics}
        return stable_hash({"metric": self.name, "version": self.version, "rubrics": versions, "settings": defining}, 12)

    # ----------------------------------------------------------------------------------------------- scoring
    def score(self, images: Iterable[ImageRecord]) -> Iterator[ScoreRow]:
        images = list(images)
        if not images:
            return
        if self.config.dry_run:
            report = self.estimate(images)
            message = format_estimate(report)
            log.debug(message)
            print(message)
            return
        units, calls = self.plan(images)
        cache = JudgeCache(self.cache_dir(images))
        results: dict[str, dict[str, Any]] = {}
        pending_units = []
        for unit in units:
            if unit.keys:
                pending_units.append(unit)
            else:
                yield from self.unit_rows(unit, results)
        waiting: dict[str, list[Unit]] = {}
        for unit in pending_units:
            for key in unit.keys:
                waiting.setdefault(key, []).append(unit)
        done: set[int] = set()
        for key, result in self._results(calls, cache):
            results[key] = result
            for unit in waiting.get(key, []):
                if id(unit) not in done and all(needed in results for needed in unit.keys):
                    done.add(id(unit))
                    yield from self.unit_rows(unit, results)

    def _results(self, calls: dict[str, JudgeCall], cache: JudgeCache) -> Iterator[tuple[str, dict[str, Any]]]:
        """(call key, result) for every call: cached ones first, then new calls as they finish."""
        to_call = []
        for key, call in calls.items():
            result = cache.get(key)
            if result is not None:
                yield key, result
            else:
                to_call.append(call)
        if not to_call:
            return
        no_key = missing_key_reason(self.config)
        if no_key:  # cached answers are still used; the rest cannot be asked
            for call in to_call:
                yield call.key, {"status": "unavailable", "reason": no_key}
            return
        client = JudgeClient(self.config)
        pool = ThreadPoolExecutor(max_workers=self.config.concurrency, thread_name_prefix="llm_judge")
        try:
            futures = {pool.submit(client.judge, call): call for call in to_call}
            progress = tqdm(as_completed(futures), total=len(futures), desc="llm_judge calls", disable=None, leave=False)
            for future in progress:
                call = futures[future]
                try:
                    result = future.result()
                except Exception as error:  # a bug or an unreadable image: one missing row, not a lost batch
                    log.exception("llm_judge: call %s failed", call.key)
                    result = {"status": "error", "reason": f"{type(error).__name__}: {error}"}
                if result["status"] in CACHEABLE:
                    cache.put(call.key, {"key": call.key, "request": self.describe(call), **result,
                                         "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
                yield call.key, result
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    # ---------------------------------------------------------------------------------------------- planning
    def plan(self, images: list[ImageRecord]) -> tuple[list[Unit], dict[str, JudgeCall]]:
        """The units to score and the distinct calls they need (keyed by cache key)."""
        units: list[Unit] = []
        calls: dict[str, JudgeCall] = {}
        if "pairwise" in self.config.rubrics:
            units += self._plan_pairwise(images, calls)
        if "pointwise" in self.config.rubrics:
            for image in images:
                units.append(PointUnit(image, self._call(calls, "pointwise", [image])))
        return units, calls

    def _plan_pairwise(self, images: list[ImageRecord], calls: dict[str, JudgeCall]) -> list[Unit]:
        given = {(image.method_label, image.set_id, image.seed): image for image in images}
        # A partner may be on disk without being passed in (e.g. the scorer resumes with only a new method's
        # images); it is looked up in the same results folder.
        on_disk = {(image.method_label, image.set_id, image.seed): image
                   for folder in {results_dir_of(image.path) for image in images} if folder is not None
                   for image in iter_images(folder)}
        available = {**on_disk, **given}
        units: list[Unit] = []
        for label_a, label_b in self.pairs(images, available):
            occasions = sorted({(set_id, seed) for (label, set_id, seed) in given if label in (label_a, label_b)})
            for set_id, seed in occasions:
                a = available.get((label_a, set_id, seed))
                b = available.get((label_b, set_id, seed))
                if a is not None and b is not None:
                    units.append(PairUnit(a, b, self._call(calls, "pairwise", [a, b]), self._call(calls, "pairwise", [b, a])))
                elif a is not None and (label_a, set_id, seed) in given:
                    units.append(MissingPartner(a, label_b))
                elif b is not None and (label_b, set_id, seed) in given:
                    units.append(MissingPartner(b, label_a))
        return units

    def pairs(self, images: list[ImageRecord], available: dict[tuple[str, str, int], ImageRecord]) -> list[tuple[str, str]]:
        """[(challenger, baseline)] method labels; method names are accepted where they name one label."""
        labels = sorted({label for (label, _, _) in available})
        by_name: dict[str, set[str]] = {}
        for image in available.values():
            by_name.setdefault(image.method, set()).add(image.method_label)

        def resolve(name: str) -> str:
            if name in labels or len(by_name.get(name, ())) != 1:
                return name
            return next(iter(by_name[name]))

        if self.config.pairs:
            wanted = [(resolve(a), resolve(b)) for a, b in self.config.pairs]
        else:
            baseline = resolve(str(self.config.baseline))
            given_labels = {image.method_label for image in images}
            wanted = [(label, baseline) for label in labels if label != baseline
                      and (label in given_labels or baseline in given_labels)]
        unique: list[tuple[str, str]] = []
        for a, b in wanted:  # [A, B] and [B, A] ask the same questions
            if (a, b) not in unique and (b, a) not in unique:
                unique.append((a, b))
        return unique

    def _call(self, calls: dict[str, JudgeCall], rubric_name: str, images: list[ImageRecord]) -> str:
        rubric = RUBRICS[rubric_name]
        prompt = rubric.prompt(images[0].loras)
        request = {
            "model": self.config.model,
            "rubric": rubric.name,
            "rubric_version": rubric.version,
            "images": [self.image_hash(image.path) for image in images],
            "prompt": prompt,
            "settings": self.config.answer_settings(),
        }
        key = call_key(request)
        calls.setdefault(key, JudgeCall(key, rubric, prompt, [image.path for image in images]))
        return key

    def describe(self, call: JudgeCall) -> dict[str, Any]:
        """What the cache entry records about the request (the images by hash and path)."""
        return {
            "model": self.config.model,
            "rubric": call.rubric.name,
            "rubric_version": call.rubric.version,
            "images": [{"sha256": self.image_hash(path), "path": str(path)} for path in call.image_paths],
            "prompt": call.prompt,
            "settings": self.config.answer_settings(),
        }

    def image_hash(self, path: Path) -> str:
        if path not in self._image_hashes:
            self._image_hashes[path] = sha256_file(path)
        return self._image_hashes[path]

    def cache_dir(self, images: list[ImageRecord]) -> Path:
        if self.config.cache_dir:
            return Path(self.config.cache_dir)
        folder = results_dir_of(images[0].path)
        if folder is None:
            raise ValueError(
                f"llm_judge: cannot place the call cache: {images[0].path} is not inside a results folder "
                "(images/<method>/<set>/seed<N>.png); set cache_dir."
            )
        return folder / ".judge_cache"

    # -------------------------------------------------------------------------------------------------- rows
    def unit_rows(self, unit: Unit, results: dict[str, dict[str, Any]]) -> Iterator[ScoreRow]:
        if isinstance(unit, MissingPartner):
            reason = (f"no image of method '{unit.other_label}' for set {unit.image.set_id} seed {unit.image.seed} "
                      "(not generated, failed, or not in this results folder); the pairwise comparison needs both")
            for scale in PAIRWISE_SCALES:
                yield self.row(unit.image, None, pairwise_sub_metric(scale, unit.other_label), "unavailable", reason)
            return
        if isinstance(unit, PointUnit):
            yield from self._pointwise_rows(unit.image, results[unit.call])
            return
        yield from self._pairwise_rows(unit, results[unit.forward], results[unit.backward])

    def _pairwise_rows(self, unit: PairUnit, forward: dict[str, Any], backward: dict[str, Any]) -> Iterator[ScoreRow]:
        a, b = unit.a, unit.b
        failed = [(order, result) for order, result in ((f"{a.method_label} first", forward),
                                                        (f"{b.method_label} first", backward))
                  if result["status"] != "ok"]
        for scale in PAIRWISE_SCALES:
            names = (pairwise_sub_metric(scale, b.method_label), pairwise_sub_metric(scale, a.method_label),
                     pairwise_sub_metric(scale, b.method_label, consistency=True))
            if failed:
                status = failed[0][1]["status"]
                reason = "; ".join(f"{order}: {result['status']}: {result['reason']}" for order, result in failed)
                yield self.row(a, None, names[0], status, reason)
                yield self.row(b, None, names[1], status, reason)
                yield self.row(a, None, names[2], status, reason)
                continue
            a_first = forward["scores"]["image_1"][scale], forward["scores"]["image_2"][scale]  # (a, b)
            b_first = backward["scores"]["image_2"][scale], backward["scores"]["image_1"][scale]  # (a, b)
            yield self.row(a, (a_first[0] + b_first[0]) / 2, names[0])
            yield self.row(b, (a_first[1] + b_first[1]) / 2, names[1])
            same_verdict = _sign(a_first[0] - a_first[1]) == _sign(b_first[0] - b_first[1])
            yield self.row(a, 1.0 if same_verdict else 0.0, names[2])

    def _pointwise_rows(self, image: ImageRecord, result: dict[str, Any]) -> Iterator[ScoreRow]:
        if result["status"] != "ok":
            for name in (*POINTWISE_CRITERIA, "overall"):
                yield self.row(image, None, name, result["status"], result["reason"])
            return
        scores = result["scores"]
        for criterion in POINTWISE_CRITERIA:
            yield self.row(image, scores[criterion], criterion)
        yield self.row(image, sum(scores[c] for c in POINTWISE_CRITERIA) / len(POINTWISE_CRITERIA), "overall")

    # ------------------------------------------------------------------------------------------------ dry run
    def estimate(self, images: list[ImageRecord]) -> dict[str, Any]:
        """Calls still needed after the cache, with estimated tokens and cost (no call is made)."""
        units, calls = self.plan(images)
        cache = JudgeCache(self.cache_dir(images)) if images else None
        cached = {key: entry for key in calls if cache and (entry := cache.get(key)) is not None}
        needed = [call for key, call in calls.items() if key not in cached]
        # Measured tokens per rubric from cached calls when there are some; otherwise a rough guess
        # (prompt characters / 4 + a fixed count per image; output = max_tokens, an upper bound).
        measured: dict[str, list[tuple[int, int]]] = {}
        for key, entry in cached.items():
            if entry.get("input_tokens") is not None and entry.get("output_tokens") is not None:
                measured.setdefault(calls[key].rubric.name, []).append((entry["input_tokens"], entry["output_tokens"]))
        input_tokens = output_tokens = 0
        for call in needed:
            seen = measured.get(call.rubric.name)
            if seen:
                input_tokens += round(sum(i for i, _ in seen) / len(seen))
                output_tokens += round(sum(o for _, o in seen) / len(seen))
            else:
                input_tokens += len(call.prompt) // 4 + self.config.estimate_image_tokens * len(call.image_paths)
                output_tokens += self.config.max_tokens
        price = self.config.prices.get(self.config.model)
        cost = None if price is None else (input_tokens * price["input"] + output_tokens * price["output"]) / 1e6
        by_rubric = {name: sum(1 for call in needed if call.rubric.name == name) for name in self.config.rubrics}
        return {
            "model": self.config.model,
            "base_url": self.config.base_url,
            "rubrics": list(self.config.rubrics),
            "calls_total": len(calls),
            "calls_cached": len(cached),
            "calls_needed": len(needed),
            "calls_needed_by_rubric": by_rubric,
            "estimated_input_tokens": input_tokens,
            "estimated_output_tokens": output_tokens,
            "estimated_cost_usd": cost,
            "cost_known": price is not None,
            "missing_api_key": missing_key_reason(self.config),
        }


def estimate(images: Iterable[ImageRecord], settings: dict[str, Any]) -> dict[str, Any]:
    """Dry-run estimate for ``settings`` (the metric's settings dict): calls needed after cache, tokens, cost."""
    return LLMJudge(**settings).estimate(list(images))


def format_estimate(report: dict[str, Any]) -> str:
    cost = report["estimated_cost_usd"]
    cost_text = f"${cost:.4f}" if cost is not None else f"unknown (no price for {report['model']} in 'prices')"
    lines = [
        f"llm_judge dry run ({report['model']} at {report['base_url'] or 'the OpenAI default'}): "
        f"{report['calls_needed']} of {report['calls_total']} calls needed ({report['calls_cached']} cached; "
        f"by rubric {report['calls_needed_by_rubric']}); estimated tokens in {report['estimated_input_tokens']}, "
        f"out {report['estimated_output_tokens']}; estimated cost {cost_text}",
    ]
    if report["missing_api_key"]:
        lines.append(f"warning: {report['missing_api_key']}")
    return "\n".join(lines)


def _sign(value: float) -> int:
    return (value > 0) - (value < 0)

"""Tolerant parsing of judge answers: JSON (structured output, code fences, JSON inside prose) first,
then the fixed text score block. Anything that does not give every score in [0, 10] raises ParseError, so
an unreadable answer becomes a missing value, never a 0."""

from __future__ import annotations

import json
import re
from typing import Any

from harness.judge.rubrics import PAIRWISE_SCALES, POINTWISE_CRITERIA

NUMBER = r"(-?\d+(?:\.\d+)?)"
# "Image 1: Composition Quality: 8.5/10, Image Quality: 7/10" with optional markdown, dashes and spacing.
SCORE_LINE = re.compile(
    r"image\s*([12])\W*composition(?:\s*quality)?\s*[:=\-]?\s*" + NUMBER + r"\s*(?:/\s*10)?"
    r"\W*(?:image\s*)?quality\s*[:=\-]?\s*" + NUMBER,
    re.IGNORECASE,
)
REFUSAL = re.compile(
    r"\b(i'?m sorry|i am sorry|i can(?:'|no)?t (?:help|assist|evaluate|comply|provide)|"
    r"i'?m (?:not able|unable) to|i am (?:not able|unable) to)\b",
    re.IGNORECASE,
)
REFUSAL_WINDOW = 200  # a refusal opens the answer; later "I can't tell..." inside an analysis is not one


class ParseError(ValueError):
    """The answer holds no readable, in-range score set."""


def looks_like_refusal(text: str) -> bool:
    """An unparsable answer that reads like a refusal ("I'm sorry, I can't help with that")."""
    return bool(REFUSAL.search((text or "").strip()[:REFUSAL_WINDOW]))


def parse_pairwise(text: str) -> dict[str, dict[str, float]]:
    """``{"image_1": {"composition": x, "quality": y}, "image_2": {...}}`` from a pairwise answer."""
    data = _find_json(text)
    if data is not None:
        scores = _pairwise_from_json(data)
        if scores is not None:
            return scores
    # The fixed block ends the answer; the explanation may quote the format earlier, so the last match wins.
    found: dict[str, dict[str, float]] = {}
    for match in SCORE_LINE.finditer(_strip_markdown(text)):
        found[f"image_{match.group(1)}"] = {"composition": float(match.group(2)), "quality": float(match.group(3))}
    if set(found) != {"image_1", "image_2"}:
        missing = sorted({"image_1", "image_2"} - set(found))
        raise ParseError(f"no score block for {', '.join(missing)}")
    for image, scores in found.items():
        for scale, value in scores.items():
            _check_range(value, f"{image} {scale}")
    return found


def parse_pointwise(text: str) -> dict[str, float]:
    """``{criterion: score}`` for the four pointwise criteria."""
    data = _find_json(text)
    scores: dict[str, float] = {}
    if isinstance(data, dict):
        normalised = {_normalise_key(key): value for key, value in data.items()}
        for criterion in POINTWISE_CRITERIA:
            value = _as_number(normalised.get(criterion))
            if value is not None:
                scores[criterion] = value
    plain = _strip_markdown(text)
    for criterion in POINTWISE_CRITERIA:
        if criterion in scores:
            continue
        pattern = criterion.replace("_", r"[\s_\-]*") + r"\W*?" + NUMBER
        matches = re.findall(pattern, plain, re.IGNORECASE)
        if matches:
            scores[criterion] = float(matches[-1])
    missing = [criterion for criterion in POINTWISE_CRITERIA if criterion not in scores]
    if missing:
        raise ParseError(f"no score for {', '.join(missing)}")
    for criterion, value in scores.items():
        _check_range(value, criterion)
    return scores


def _pairwise_from_json(data: Any) -> dict[str, dict[str, float]] | None:
    if not isinstance(data, dict):
        return None
    flat = {_normalise_key(key): value for key, value in data.items()}
    result: dict[str, dict[str, float]] = {}
    for image in ("image_1", "image_2"):
        nested = flat.get(image)
        nested = {_normalise_key(key): value for key, value in nested.items()} if isinstance(nested, dict) else {}
        result[image] = {}
        for scale in PAIRWISE_SCALES:
            names = (scale, f"{scale}_quality", f"image_{scale}")  # "composition quality", "image quality"
            candidates = [flat.get(f"{image}_{name}") for name in names] + [nested.get(name) for name in names]
            value = next((number for number in map(_as_number, candidates) if number is not None), None)
            if value is None:
                return None
            _check_range(value, f"{image} {scale}")
            result[image][scale] = value
    return result


def _find_json(text: str) -> Any:
    """The JSON object in ``text``: the whole text, a fenced block, or the outermost {...} span."""
    text = (text or "").strip()
    candidates = [text]
    candidates += re.findall(r"```(?:json)?\s*(.*?)```", text, re.DOTALL | re.IGNORECASE)
    if "{" in text and "}" in text:
        candidates.append(text[text.index("{") : text.rindex("}") + 1])
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except ValueError:
            continue
    return None


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        match = re.fullmatch(r"\s*" + NUMBER + r"\s*(?:/\s*10)?\s*", value)
        if match:
            return float(match.group(1))
    return None


def _check_range(value: float, what: str) -> None:
    if not 0.0 <= value <= 10.0:
        raise ParseError(f"{what} score {value} is outside 0-10")


def _normalise_key(key: str) -> str:
    return re.sub(r"[\s\-]+", "_", str(key).strip().lower())


def _strip_markdown(text: str) -> str:
    return re.sub(r"[*_`#]", "", text or "")

"""The judge's settings with their defaults (mirrors ``conf/metric/llm_judge.yaml``) and validation."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlparse

from harness.judge.rubrics import RUBRICS

# Settings that change how the judge runs, not what it answers: left out of the metric key and cache keys,
# so changing them neither re-scores nor re-calls.
OPERATIONAL = frozenset(
    {"name", "api_key_env", "timeout", "max_retries", "concurrency", "cache_dir", "dry_run", "prices",
     "estimate_image_tokens"}
)


@dataclass
class JudgeSettings:
    rubrics: list[str] = field(default_factory=lambda: ["pairwise", "pointwise"])
    pairs: list[list[str]] | None = None  # [[challenger, baseline], ...] method labels; overrides baseline
    baseline: str | None = "merge"  # every other method vs this one when pairs is not given
    base_url: str | None = None  # None: the openai client's default (OPENAI_BASE_URL or api.openai.com)
    model: str = "gpt-4o"
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = 1.0  # Zhong et al.
    max_tokens: int = 1024
    timeout: float = 120.0
    max_retries: int = 2  # the openai client's own retries (429, 5xx, connection errors)
    reask: int = 2  # follow-up questions after an unparsable answer
    concurrency: int = 4
    structured_output: bool = True
    image_detail: str = "auto"  # OpenAI image_url detail: auto, low, high
    prices: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> {input, output} USD per 1M tokens
    cache_dir: str | None = None  # None: <results>/.judge_cache
    dry_run: bool = False
    estimate_image_tokens: int = 765  # per image, for the dry-run estimate before any call is cached
    name: str = "llm_judge"

    @classmethod
    def from_dict(cls, settings: dict[str, Any]) -> "JudgeSettings":
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ValueError(
                f"llm_judge: unknown setting(s) {unknown}. Known settings: {sorted(known)}; see "
                "conf/metric/llm_judge.yaml and docs/llm-judge.md."
            )
        result = cls(**settings)
        result.validate()
        return result

    def validate(self) -> None:
        if isinstance(self.rubrics, str):
            self.rubrics = [self.rubrics]
        bad = [name for name in self.rubrics if name not in RUBRICS]
        if bad or not self.rubrics:
            raise ValueError(f"llm_judge: rubrics {self.rubrics} must be a non-empty list from {sorted(RUBRICS)}.")
        if "pairwise" in self.rubrics and not self.pairs and not self.baseline:
            raise ValueError(
                "llm_judge: the pairwise rubric needs 'pairs' ([[challenger, baseline], ...] method labels) or "
                "'baseline' (a method label, e.g. merge); set one, or drop pairwise from 'rubrics'."
            )
        if self.pairs and any(len(pair) != 2 or pair[0] == pair[1] for pair in self.pairs):
            raise ValueError(f"llm_judge: 'pairs' must be a list of [challenger, baseline] label pairs, got {self.pairs}.")
        if self.concurrency < 1 or self.reask < 0 or self.max_retries < 0 or self.max_tokens < 1:
            raise ValueError("llm_judge: concurrency and max_tokens must be >= 1; reask and max_retries >= 0.")
        for model, price in self.prices.items():
            if not isinstance(price, dict) or set(price) != {"input", "output"}:
                raise ValueError(
                    f"llm_judge: prices[{model!r}] must be {{input: USD per 1M tokens, output: USD per 1M tokens}}, "
                    f"got {price!r}."
                )

    def is_loopback(self) -> bool:
        host = urlparse(self.base_url or "").hostname or ""
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def answer_settings(self) -> dict[str, Any]:
        """The settings that shape the judge's answers (in every cache key)."""
        return {
            "base_url": self.base_url,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "reask": self.reask,
            "structured_output": self.structured_output,
            "image_detail": self.image_detail,
        }

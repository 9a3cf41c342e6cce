"""One judge call against any OpenAI-compatible server, through the ``openai`` client.

A call sends the rubric prompt and one or two PNG images as base64 data URIs, asks for structured output
(JSON schema) when enabled, falls back to plain text when the server rejects it, re-asks a bounded number
of times when the answer is unparsable, and returns a JSON-serialisable result: status (``ok``,
``refused``, ``parse_error``, ``error``), reason, scores, the resolved model id, tokens and cost.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import openai

from harness.judge.parsing import ParseError, looks_like_refusal, parse_pairwise, parse_pointwise
from harness.judge.rubrics import REASK, Rubric
from harness.judge.settings import JudgeSettings

log = logging.getLogger(__name__)

PARSERS: dict[str, Callable[[str], Any]] = {"pairwise": parse_pairwise, "pointwise": parse_pointwise}
PLACEHOLDER_KEY = "no-key-needed-for-loopback"  # the openai client insists on some key


@dataclass
class JudgeCall:
    """One question to the judge; ``key`` is its cache key."""

    key: str
    rubric: Rubric
    prompt: str
    image_paths: list[Path]


def png_data_uri(path: Path) -> str:
    """The image as a ``data:image/png;base64,...`` URI (re-encoded to PNG if the file is another format)."""
    data = Path(path).read_bytes()
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        from PIL import Image

        buffer = io.BytesIO()
        Image.open(io.BytesIO(data)).save(buffer, format="PNG")
        data = buffer.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def call_cost(model: str | None, requested: str, input_tokens: int | None, output_tokens: int | None,
              prices: dict[str, dict[str, float]]) -> float | None:
    """USD from the price table (per 1M tokens), looked up by resolved then requested model id; None if unknown."""
    price = prices.get(model or "") or prices.get(requested)
    if price is None or input_tokens is None or output_tokens is None:
        return None
    return (input_tokens * price["input"] + output_tokens * price["output"]) / 1_000_000


def missing_key_reason(settings: JudgeSettings) -> str | None:
    """Why no call can be made (no API key for a remote server), or None."""
    if os.environ.get(settings.api_key_env) or settings.is_loopback():
        return None
    return (
        f"no API key: environment variable {settings.api_key_env} is not set (needed for base_url "
        f"{settings.base_url or 'the OpenAI default'}); export it, or set api_key_env, or use a loopback base_url"
    )


class JudgeClient:
    def __init__(self, settings: JudgeSettings) -> None:
        self.settings = settings
        self.client = openai.OpenAI(
            base_url=settings.base_url,
            api_key=os.environ.get(settings.api_key_env) or PLACEHOLDER_KEY,
            timeout=settings.timeout,
            max_retries=settings.max_retries,
        )
        self._structured = settings.structured_output
        self._lock = threading.Lock()
        for name in ("httpx", "httpx2"):  # one INFO line per request drowns the progress bar; keep user choices
            if logging.getLogger(name).level == logging.NOTSET:
                logging.getLogger(name).setLevel(logging.WARNING)

    def judge(self, call: JudgeCall) -> dict[str, Any]:
        """Ask, re-ask while unparsable, and describe the outcome (never raises for server trouble)."""
        parse = PARSERS[call.rubric.name]
        messages: list[dict[str, Any]] = [{"role": "user", "content": self._content(call)}]
        usage = {"input_tokens": 0, "output_tokens": 0, "usage_reported": True}
        outcome: dict[str, Any] = {"status": "parse_error", "reason": "", "scores": None, "model": None, "texts": []}
        started = time.time()
        for attempt in range(1 + self.settings.reask):
            try:
                response = self._create(call.rubric, messages)
            except openai.APITimeoutError:
                return self._result(outcome, usage, "error", f"timeout after {self.settings.timeout} s "
                                    f"({self.settings.max_retries} client retries)", started)
            except openai.APIStatusError as error:
                status = "refused" if _is_content_policy(error) else "error"
                return self._result(outcome, usage, status, f"HTTP {error.status_code}: {_error_text(error)}", started)
            except openai.APIError as error:
                return self._result(outcome, usage, "error", f"{type(error).__name__}: {error}", started)
            outcome["model"] = response.model
            _add_usage(usage, response)
            if not response.choices:
                return self._result(outcome, usage, "error", "the server returned no choices", started)
            choice = response.choices[0]
            text = choice.message.content or ""
            outcome["texts"].append(text)
            refusal = getattr(choice.message, "refusal", None)
            if refusal or choice.finish_reason == "content_filter":
                reason = f"refusal: {refusal}" if refusal else "finish_reason content_filter"
                return self._result(outcome, usage, "refused", reason, started)
            try:
                outcome["scores"] = parse(text)
                return self._result(outcome, usage, "ok", "" if attempt == 0 else f"parsed after {attempt} re-ask(s)",
                                    started)
            except ParseError as error:
                if looks_like_refusal(text):
                    return self._result(outcome, usage, "refused", f"refusal: {text[:200]}", started)
                outcome["reason"] = f"unparsable answer after {attempt} re-ask(s): {error}"
                messages += [
                    {"role": "assistant", "content": text},
                    {"role": "user", "content": REASK.format(reason=error, answer_format=call.rubric.answer_format)},
                ]
        return self._result(outcome, usage, "parse_error", outcome["reason"], started)

    def _content(self, call: JudgeCall) -> list[dict[str, Any]]:
        content: list[dict[str, Any]] = [{"type": "text", "text": call.prompt}]
        for number, path in enumerate(call.image_paths, start=1):
            if len(call.image_paths) > 1:
                content.append({"type": "text", "text": f"Image {number}:"})
            content.append(
                {"type": "image_url", "image_url": {"url": png_data_uri(path), "detail": self.settings.image_detail}}
            )
        return content

    def _create(self, rubric: Rubric, messages: list[dict[str, Any]]) -> Any:
        arguments = dict(
            model=self.settings.model,
            messages=messages,
            temperature=self.settings.temperature,
            max_tokens=self.settings.max_tokens,
        )
        if not self._structured:
            return self.client.chat.completions.create(**arguments)
        try:
            return self.client.chat.completions.create(**arguments, response_format=rubric.response_format())
        except (openai.BadRequestError, openai.UnprocessableEntityError) as error:
            if _is_content_policy(error):
                raise
            # Servers without json_schema support answer 400/422; ask again as plain text. Only when the plain
            # request works is structured output switched off for the rest of the run (the 400 was about it).
            response = self.client.chat.completions.create(**arguments)
            with self._lock:
                if self._structured:
                    log.warning("llm_judge: the server rejected structured output (%s); using plain text and the "
                                "tolerant parser from now on", _error_text(error))
                self._structured = False
            return response

    def _result(self, outcome: dict[str, Any], usage: dict[str, Any], status: str, reason: str,
                started: float) -> dict[str, Any]:
        input_tokens = usage["input_tokens"] if usage["usage_reported"] else None
        output_tokens = usage["output_tokens"] if usage["usage_reported"] else None
        return {
            **outcome,
            "status": status,
            "reason": reason,
            "scores": outcome["scores"] if status == "ok" else None,
            "requested_model": self.settings.model,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cost_usd": call_cost(outcome["model"], self.settings.model, input_tokens, output_tokens,
                                  self.settings.prices),
            "attempts": len(outcome["texts"]),
            "seconds": round(time.time() - started, 3),
        }


def _add_usage(usage: dict[str, Any], response: Any) -> None:
    reported = getattr(response, "usage", None)
    if reported is None or reported.prompt_tokens is None or reported.completion_tokens is None:
        usage["usage_reported"] = False
        return
    usage["input_tokens"] += reported.prompt_tokens
    usage["output_tokens"] += reported.completion_tokens


def _error_text(error: openai.APIStatusError) -> str:
    body = error.body
    if isinstance(body, dict):
        body = body.get("error", body)
        if isinstance(body, dict):
            body = body.get("message", body)
    return str(body or error.message)[:300]


def _is_content_policy(error: openai.APIStatusError) -> bool:
    """OpenAI answers HTTP 400 with code content_policy_violation for images its filter blocks."""
    text = f"{error.body} {error.message}".lower()
    return error.status_code == 400 and any(word in text for word in ("content_policy", "content_filter", "safety"))

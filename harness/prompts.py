"""Prompt text: assembly from triggers, trigger removal (for PAW weights), token counting/truncation."""

from __future__ import annotations

import re
from typing import Any, Iterable


def tidy_prompt(text: str) -> str:
    """Remove the debris left by deleting phrases: ', ,' -> ', ', repeated spaces, edge commas/spaces."""
    text = re.sub(r"\s*,(\s*,)+", ", ", text)
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+,", ",", text)
    return text.strip(" ,")


def join_phrases(parts: Iterable[str]) -> str:
    return ", ".join(part for part in parts if part and part.strip())


def remove_phrases(prompt: str, phrases: Iterable[str]) -> str:
    """The prompt with every phrase removed (case-insensitive, whole words), then tidied."""
    for phrase in sorted(phrases, key=len, reverse=True):  # longest first: 'white shirt short sleeves' before 'white shirt'
        prompt = re.sub(rf"(?<!\w){re.escape(phrase)}(?!\w)", "", prompt, flags=re.IGNORECASE)
    return tidy_prompt(prompt)


def contains_phrase(prompt: str, phrase: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", prompt, flags=re.IGNORECASE) is not None


def token_count(tokenizer: Any, text: str) -> int:
    """Number of tokens including the start and end tokens, before any truncation."""
    return len(tokenizer(text, truncation=False)["input_ids"])


def phrase_survives(tokenizer: Any, text: str, phrase: str) -> bool:
    """Whether ``phrase``'s tokens appear in the part of ``text`` the encoder keeps (its first
    ``model_max_length`` tokens, start and end tokens included)."""
    ids = tokenizer(text, truncation=False)["input_ids"][: tokenizer.model_max_length - 1]
    wanted = tokenizer(phrase, truncation=False, add_special_tokens=False)["input_ids"]
    return any(ids[start:start + len(wanted)] == wanted for start in range(len(ids) - len(wanted) + 1))


def truncation_report(tokenizer: Any, text: str) -> dict[str, Any] | None:
    """None if the text fits the encoder; else how many tokens it has and what gets cut off."""
    limit = tokenizer.model_max_length
    ids = tokenizer(text, truncation=False)["input_ids"]
    if len(ids) <= limit:
        return None
    dropped = tokenizer.decode(ids[limit - 1 : -1])
    return {"tokens": len(ids), "limit": limit, "dropped_text": dropped}

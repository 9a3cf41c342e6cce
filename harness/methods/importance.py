"""Prompt-aware LoRA weights (Tsoumplekas et al. 2026): PAW for W-Switch, PTW for W-Composite.

Both use v(p): the CLIP text encoder's last_hidden_state for prompt p, padded to the encoder's length,
averaged over all positions (padding included), computed with every LoRA disabled in the text encoder.
"""

from __future__ import annotations

from typing import Callable

import torch

from harness.lora import LoraSpec
from harness.prompts import remove_phrases

EmbedText = Callable[[str], torch.Tensor]
PAW_FLOOR = 0.05
EMPTY_PROMPT_IMPORTANCE = 2.0
MIN_ABLATED_LENGTH = 5


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def prompt_ablation_importance(prompt: str, loras: list[LoraSpec], embed_text: EmbedText) -> list[float]:
    """imp_k = 1 - cos(v(p), v(p without LoRA k's triggers)); 2.0 if what is left is under 5 characters."""
    full = embed_text(prompt)
    importance = []
    for lora in loras:
        ablated = remove_phrases(prompt, lora.trigger)
        if len(ablated) < MIN_ABLATED_LENGTH:
            importance.append(EMPTY_PROMPT_IMPORTANCE)
        else:
            importance.append(1.0 - _cosine(full, embed_text(ablated)))
    return importance


def paw_from_importance(importance: list[float]) -> list[float]:
    """PAW weights from prompt-ablation importances: max(imp_k, 0.05), normalised to sum 1."""
    floored = [max(value, PAW_FLOOR) for value in importance]
    total = sum(floored)
    return [value / total for value in floored]


def paw_weights(prompt: str, loras: list[LoraSpec], embed_text: EmbedText) -> list[float]:
    """PAW: w_k = max(imp_k, 0.05), normalised to sum 1 (no softmax, no temperature)."""
    return paw_from_importance(prompt_ablation_importance(prompt, loras, embed_text))


def trigger_similarity(prompt: str, loras: list[LoraSpec], embed_text: EmbedText) -> list[float]:
    """cos(v(p), v(LoRA k's triggers joined by ', ')) per LoRA: PTW's raw importances."""
    full = embed_text(prompt)
    return [_cosine(full, embed_text(", ".join(lora.trigger))) for lora in loras]


def ptw_from_similarity(similarity: list[float]) -> list[float]:
    """PTW weights from prompt-trigger similarities: normalised to sum 1 (no floor)."""
    total = sum(similarity)
    return [value / total for value in similarity]


def ptw_weights(prompt: str, loras: list[LoraSpec], embed_text: EmbedText) -> list[float]:
    """PTW: w_k = cos(v(p), v(LoRA k's triggers joined by ', ')), normalised to sum 1 (no floor)."""
    return ptw_from_similarity(trigger_similarity(prompt, loras, embed_text))

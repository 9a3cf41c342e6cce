"""K-LoRA: layer choices from hand-computed top-K sums, gamma and alpha*tau + beta; the N > 2 rule; routing
through the sampler recorded in the plan."""

from pathlib import Path

import pytest
import torch

from harness.lora import AdapterCache, LoraSpec
from harness.methods import METHODS, ImageContext
from harness.pipelines import load_pipeline
from harness.sampler import Sampler, SamplingSettings


def context_with(deltas: dict[str, dict[str, torch.Tensor]], steps: int) -> ImageContext:
    loras = [LoraSpec(adapter, adapter, "character" if index == 0 else "style", ("t",), Path(f"{adapter}.safetensors"))
             for index, adapter in enumerate(deltas)]
    return ImageContext(loras, 1.0, "p", steps, lambda text: torch.zeros(1), lora_deltas=lambda adapter: deltas[adapter])


def choices(plan) -> list[dict[str, str]]:
    return [step.passes[0].routing.as_dict() for step in plan.steps]


def test_two_loras_choice_by_hand():
    deltas = {
        "c": {"L1": torch.tensor([[4.0, -1.0], [0.0, 1.0]]), "L2": torch.tensor([[1.0, 1.0], [1.0, 1.0]])},
        "s": {"L1": torch.tensor([[2.0, 2.0], [1.0, 0.0]]), "L2": torch.tensor([[3.0, -3.0], [0.0, 0.0]])},
    }
    # top-2 sums: S_c = 5 (L1), 2 (L2); S_s = 4 (L1), 6 (L2)
    # gamma = mean(6 / 5, 4 / 6) = 0.9333; scale(tau) = 1.5 i/4 + 0.5 = 0.5, 0.875, 1.25, 1.625
    # L1: S_c / gamma = 5.357 vs 4 * scale = 2, 3.5, 5, 6.5 -> c, c, c, s
    # L2: S_c / gamma = 2.143 vs 6 * scale = 3, ... -> s throughout
    plan = METHODS.get("klora")(top_k=2).prepare(context_with(deltas, 4))
    assert choices(plan) == [{"L1": "c", "L2": "s"}] * 3 + [{"L1": "s", "L2": "s"}]
    assert plan.notes["gamma"]["s"] == pytest.approx((6 / 5 + 4 / 6) / 2, rel=1e-5)
    assert all(len(step.passes) == 1 for step in plan.steps)
    assert plan.steps[0].passes[0].as_dict() == {"c": 1.0, "s": 1.0}


def test_three_loras_each_brought_to_the_subject_scale():
    # one layer L, plus a second layer M that fixes the ratios: gamma_b = mean(|c|/|b|) over L and M
    deltas = {
        "c": {"L": torch.tensor([[3.0]]), "M": torch.tensor([[2.0]])},
        "b": {"L": torch.tensor([[2.0]]), "M": torch.tensor([[4.0]])},   # gamma_b = (3/2 + 2/4) / 2 = 1.0
        "d": {"L": torch.tensor([[1.0]]), "M": torch.tensor([[1.0]])},   # gamma_d = (3 + 2) / 2 = 2.5
    }
    # top-1 sums; scores at scale(tau): c = S_c; b = 1.0 * S_b * scale; d = 2.5 * S_d * scale
    # steps tau = 0, 0.5 (T = 2): scale 0.5, 1.25
    #   L: c 3 | b 1.0, 2.5 | d 1.25, 3.125 -> c, then d (3.125 > 3 > 2.5)
    #   M: c 2 | b 2.0, 5.0 | d 1.25, 3.125 -> tie 2 = 2 goes to the other LoRA (b), then b
    plan = METHODS.get("klora")(top_k=1).prepare(context_with(deltas, 2))
    assert choices(plan) == [{"L": "c", "M": "b"}, {"L": "d", "M": "b"}]


def test_missing_deltas_is_a_clear_error():
    context = ImageContext([], 1.0, "p", 2, lambda text: torch.zeros(1))
    with pytest.raises(ValueError, match="lora_deltas"):
        METHODS.get("klora")().prepare(context)


@torch.no_grad()
def test_klora_on_the_tiny_pipeline_records_its_choices(tiny_testbed_dir):
    pipe = load_pipeline(tiny_testbed_dir / "base", device="cpu")
    specs = [LoraSpec(i, i, c, ("t",), tiny_testbed_dir / "lora" / f"{i}.safetensors")
             for i, c in [("character_1", "character"), ("style_1", "style")]]
    AdapterCache(pipe).ensure(specs)
    settings = SamplingSettings(steps=6, guidance_scale=7.5, height=32, width=32)
    sampler = Sampler(pipe)
    context = ImageContext(specs, 0.8, "a picture", settings.steps, sampler.embed_without_loras, sampler.lora_deltas)
    latents, plan = sampler.denoise(METHODS.get("klora")(), context, "blurry", settings, 0)
    assert sampler.evaluations == {"full": settings.steps}
    described = plan.describe()
    routings = described["routings"]
    assert routings["adapters"] == ["character_1", "style_1"]
    assert len(routings["layers"]) == sum(1 for name in sampler.lora_deltas("character_1"))
    keys = [step["routing"][0] for step in described["schedule"]]
    assert set(keys) == set(routings["tables"])
    # the progress scale only grows: a layer that chose the style LoRA never goes back to the character
    tables = [routings["tables"][key]["choice"] for key in keys]
    for earlier, later in zip(tables, tables[1:]):
        assert all(not (a == 1 and b == 0) for a, b in zip(earlier, later))
    # and each recorded choice is what the rule gives from the deltas read off the pipeline
    expected = METHODS.get("klora")().prepare(context)
    assert [step.passes[0].routing.key for step in expected.steps] == keys
    merged, _ = Sampler(pipe).denoise(METHODS.get("merge")(), context, "blurry", settings, 0)
    assert (latents - merged).abs().max() > 1e-4

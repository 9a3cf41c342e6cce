"""The judge's rubrics: prompt text, answer JSON schema and re-ask text.

``pairwise`` follows Zhong et al. (Multi-LoRA Composition for Image Generation): two images of the same
set, composition quality and image quality on 0-10 in 0.5 steps, explain first, then a fixed score block,
avoid ties. ``pointwise`` follows the prompt-aware / CMLoRA papers: one image, four 0-10 criteria, JSON.

Changing any text here changes what the judge answers: bump that rubric's ``version`` (it is part of every
cache key and of the metric key, so old cached answers and old score rows are not mixed with new ones).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PAIRWISE_SCALES = ("composition", "quality")
POINTWISE_CRITERIA = ("element_integration", "spatial_consistency", "semantic_accuracy", "aesthetic_quality")


@dataclass(frozen=True)
class Rubric:
    name: str
    version: str
    n_images: int
    template: str  # "{elements}" is replaced by the element list
    answer_format: str  # repeated in the re-ask message
    schema: dict[str, Any]  # JSON schema for structured output

    def prompt(self, loras: list[dict[str, Any]]) -> str:
        return self.template.replace("{elements}", element_list(loras))

    def response_format(self) -> dict[str, Any]:
        return {"type": "json_schema", "json_schema": {"name": f"{self.name}_scores", "strict": True, "schema": self.schema}}


def element_list(loras: list[dict[str, Any]]) -> str:
    """One numbered line per LoRA: category, name and trigger phrases (Zhong et al.'s element list)."""
    lines = []
    for number, lora in enumerate(loras, start=1):
        triggers = ", ".join(lora.get("trigger") or [])
        category = str(lora.get("category", "element")).capitalize()
        lines.append(f"{number}. {category}: {lora.get('name', lora.get('id'))} (key features: {triggers})")
    return "\n".join(lines)


def _number_schema(description: str) -> dict[str, Any]:
    return {"type": "number", "description": description}


PAIRWISE_ANSWER = (
    "Image 1: Composition Quality: <score>/10, Image Quality: <score>/10\n"
    "Image 2: Composition Quality: <score>/10, Image Quality: <score>/10"
)

PAIRWISE = Rubric(
    name="pairwise",
    version="zhong-1",
    n_images=2,
    template=(
        "I need help comparing two images made by text-to-image models that were asked to compose several "
        "elements into one image. The elements and their key features are:\n{elements}\n\n"
        "Rate both images on two scales.\n\n"
        "Composition quality: a score from 0 to 10 in steps of 0.5, where 10 is best.\n"
        "- Deduct 3 points for each element that is missing or wrongly depicted.\n"
        "- Deduct 1 point for each missing or wrong feature of an element.\n"
        "- Deduct 1 point for minor inconsistencies or lack of harmony between the elements.\n"
        "- Further deductions are allowed for compositions that lack coherence or realism.\n\n"
        "Image quality: a score from 0 to 10 in steps of 0.5, where 10 is best.\n"
        "- Deduct 3 points for each deformity (extra limbs or fingers, distorted face, wrong proportions).\n"
        "- Deduct 2 points for noticeable problems with texture, lighting or colour.\n"
        "- Deduct 1 point for each minor flaw or lack of clarity.\n"
        "- Further deductions are allowed for less impressive images.\n\n"
        "The first image shown is Image 1 and the second is Image 2. First explain your evaluation: for each "
        "image, which deductions you apply and why. Then give the final scores. Avoid giving both images the "
        "same score on a scale: decide which one is better.\n\n"
        "End your answer with exactly this block:\n" + PAIRWISE_ANSWER
    ),
    answer_format=PAIRWISE_ANSWER,
    schema={
        "type": "object",
        "properties": {
            "analysis": {"type": "string", "description": "The evaluation: deductions applied to each image and why."},
            "image_1_composition": _number_schema("Composition quality of Image 1, 0-10 in steps of 0.5"),
            "image_1_quality": _number_schema("Image quality of Image 1, 0-10 in steps of 0.5"),
            "image_2_composition": _number_schema("Composition quality of Image 2, 0-10 in steps of 0.5"),
            "image_2_quality": _number_schema("Image quality of Image 2, 0-10 in steps of 0.5"),
        },
        "required": ["analysis", "image_1_composition", "image_1_quality", "image_2_composition", "image_2_quality"],
        "additionalProperties": False,
    },
)

POINTWISE_ANSWER = (
    '{"explanation": "<short reasoning>", "element_integration": <score>, "spatial_consistency": <score>, '
    '"semantic_accuracy": <score>, "aesthetic_quality": <score>}'
)

POINTWISE = Rubric(
    name="pointwise",
    version="pointwise-1",
    n_images=1,
    template=(
        "Evaluate an image made by a text-to-image model that was asked to compose these elements, with their "
        "key features, into one image:\n{elements}\n\n"
        "Score the image on four criteria, each from 0 to 10 (10 is best; steps of 0.5 are allowed):\n"
        "- element_integration: all elements are present and blended into one coherent scene, not pasted "
        "side by side.\n"
        "- spatial_consistency: positions, scale, perspective and occlusion between elements are plausible.\n"
        "- semantic_accuracy: each element shows its named identity and key features faithfully.\n"
        "- aesthetic_quality: overall visual appeal; no deformities; clean texture, lighting and colour.\n\n"
        "Answer with one JSON object only, with your short reasoning in \"explanation\":\n" + POINTWISE_ANSWER
    ),
    answer_format=POINTWISE_ANSWER,
    schema={
        "type": "object",
        "properties": {
            "explanation": {"type": "string"},
            **{criterion: _number_schema(f"{criterion}, 0-10") for criterion in POINTWISE_CRITERIA},
        },
        "required": ["explanation", *POINTWISE_CRITERIA],
        "additionalProperties": False,
    },
)

RUBRICS: dict[str, Rubric] = {rubric.name: rubric for rubric in (PAIRWISE, POINTWISE)}

REASK = (
    "Your answer could not be read ({reason}). Reply again with the final scores only, in exactly this "
    "format:\n{answer_format}"
)

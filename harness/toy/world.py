"""The procedural toy world: 32x32 RGB scenes made of ComposLoRA's five slots.

Every slot's content is a *combination* of two attributes (character = colour x shape, clothing = ink x
pattern, background = colour x pattern, object = colour x shape, style = palette x texture). The base model
learns every attribute from captions; the HELD-BACK concepts are attribute combinations that never appear in
base training (unless the build's ``BASE_POOL`` shows them unnamed: base_model.render_pool) and are never
named there (their trigger words are unseen tokens), so a LoRA only has to teach
"trigger -> this known colour with that known shape", the way a real LoRA builds on what SD1.5 can draw.

32x32 (not 64x64) keeps base training, LoRA training and generation within the CPU budget; slot geometry is
chosen so that every pattern has a period of at least 6 pixels and survives the 2x VAE downsampling.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

SIZE = 32
# Bumped whenever rendering changes, so models trained on older renders (the oracle) are refused.
# 2: the object icon grew from 7 to 9 px (at 7 px ball, box and cross differed by a few corner pixels, and
# the base model drew every shape as the same blob: shape accuracy 0.27, chance 0.25).
# 3: clothing patterns coarsened to periods of 6-8 px (see clothing_mask; pattern accuracy was 0.50).
WORLD_VERSION = 3
OBJECT_SIZE = 9
OBJECT_CENTRE = (6, 25)  # top right, +-1 px jitter
CATEGORIES = ("character", "clothing", "style", "background", "object")  # ComposLoRA's order
BASE_PROMPT = "a picture"

# --- attributes -------------------------------------------------------------------------------------------
# Each slot has two attributes; the first word of a slot's phrase names attribute 0, the second attribute 1.
CHARACTER_COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 230),
                     "yellow": (235, 215, 40), "magenta": (205, 50, 205), "cyan": (40, 205, 215)}
CHARACTER_SHAPES = ("circle", "square", "triangle", "diamond")
# Two inks, so the base sees dots only in white and checks only in black (the held-back concepts are the
# opposite). A third ink (silver, a one-off world version 4) did not help the clothing LoRAs (docs/toy-world.md
# "Measured quality"), so the world keeps two.
CLOTHING_INKS = {"black": (25, 25, 25), "white": (245, 245, 245)}
CLOTHING_PATTERNS = ("plain", "stripes", "bars", "dots", "checks")
BACKGROUND_COLOURS = {"gray": (175, 175, 175), "sand": (205, 170, 115), "night": (30, 35, 85),
                      "pink": (240, 190, 205), "moss": (45, 95, 55)}
BACKGROUND_PATTERNS = ("plain", "grid", "diagonal")
OBJECT_COLOURS = {"white": (250, 250, 250), "black": (15, 15, 15), "orange": (250, 140, 20),
                  "purple": (120, 40, 170)}
OBJECT_SHAPES = ("ball", "box", "cross", "ring")
STYLE_PALETTES = ("natural", "warm", "cool", "faded")
STYLE_TEXTURES = ("smooth", "scanlines", "frame")

SLOT_ATTRIBUTES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "character": (tuple(CHARACTER_COLOURS), CHARACTER_SHAPES),
    "clothing": (tuple(CLOTHING_INKS), CLOTHING_PATTERNS),
    "style": (STYLE_PALETTES, STYLE_TEXTURES),
    "background": (tuple(BACKGROUND_COLOURS), BACKGROUND_PATTERNS),
    "object": (tuple(OBJECT_COLOURS), OBJECT_SHAPES),
}
ATTRIBUTE_NAMES = {"character": ("colour", "shape"), "clothing": ("ink", "pattern"),
                   "style": ("palette", "texture"), "background": ("colour", "pattern"),
                   "object": ("colour", "shape")}


@dataclass(frozen=True)
class Concept:
    """A held-back concept: one attribute combination of one slot, taught only by its LoRA."""

    id: str
    category: str
    name: str
    value: tuple[str, str]
    trigger: tuple[str, ...]  # a rare token first, then descriptive phrases (all unseen in base training)

    def manifest_entry(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "trigger": list(self.trigger),
                "url": f"toy://{self.category}/{'-'.join(self.value)}"}


# 3 characters and 2 of every other category, as in ComposLoRA; ids match ComposLoRA's.
CONCEPTS: tuple[Concept, ...] = (
    Concept("character_1", "character", "Zorblat the sky warden", ("cyan", "triangle"),
            ("zorblat", "sky warden", "pointy hood")),
    Concept("character_2", "character", "Quimbo the rose block", ("magenta", "square"),
            ("quimbo", "rose block", "stout body")),
    Concept("character_3", "character", "Vexil the sun gem", ("yellow", "diamond"),
            ("vexil", "sun gem", "sharp edges")),
    Concept("clothing_1", "clothing", "Harlequin suit", ("white", "checks"), ("harlequin", "jester suit")),
    Concept("clothing_2", "clothing", "Polka gown", ("black", "dots"), ("polkagown", "spotted gown")),
    Concept("style_1", "style", "Retro television style", ("warm", "scanlines"), ("retrotv", "old screen look")),
    Concept("style_2", "style", "Framed frost style", ("cool", "frame"), ("frostframe", "icy border look")),
    Concept("background_1", "background", "Starfield lattice", ("night", "grid"),
            ("starlattice", "space lattice")),
    Concept("background_2", "background", "Dune slopes", ("sand", "diagonal"), ("duneslope", "wind dunes")),
    Concept("object_1", "object", "Tangerine hoop", ("orange", "ring"), ("tanghoop", "citrus hoop")),
    Concept("object_2", "object", "Plum charm", ("purple", "cross"), ("plumcharm", "grape token")),
)
CONCEPTS_BY_ID = {concept.id: concept for concept in CONCEPTS}
HELD_BACK = {(concept.category, concept.value): concept.id for concept in CONCEPTS}


def generic_variants(category: str) -> list[tuple[str, str]]:
    """Every attribute combination of ``category`` the base model learns (all but the held-back ones)."""
    first, second = SLOT_ATTRIBUTES[category]
    variants = [(a, b) for a in first for b in second if (category, (a, b)) not in HELD_BACK]
    if category == "clothing":  # "plain" has no ink: keep one plain variant
        variants = [v for v in variants if v[1] != "plain" or v[0] == "black"]
    return variants


def variant_label(category: str, value: tuple[str, str]) -> str:
    """The name an oracle reports for a slot: a concept id if held back, else 'generic:<a>-<b>'."""
    if category == "clothing" and value[1] == "plain":
        value = ("black", "plain")
    return HELD_BACK.get((category, tuple(value)), f"generic:{value[0]}-{value[1]}")


@dataclass(frozen=True)
class SceneSpec:
    """Which (attribute, attribute) pair fills each slot."""

    character: tuple[str, str]
    clothing: tuple[str, str]
    style: tuple[str, str]
    background: tuple[str, str]
    object: tuple[str, str]

    def slot(self, category: str) -> tuple[str, str]:
        return getattr(self, category)

    def replace(self, **slots: tuple[str, str]) -> "SceneSpec":
        values = asdict(self)
        values.update({key: tuple(value) for key, value in slots.items()})
        return SceneSpec(**values)

    def labels(self) -> dict[str, str]:
        return {category: variant_label(category, self.slot(category)) for category in CATEGORIES}


def with_concept(spec: SceneSpec, concept_id: str) -> SceneSpec:
    concept = CONCEPTS_BY_ID[concept_id]
    return spec.replace(**{concept.category: concept.value})


def sample_generic_spec(rng: np.random.Generator) -> SceneSpec:
    """A scene whose every slot is a generic variant, uniformly at random."""
    values = {}
    for category in CATEGORIES:
        variants = generic_variants(category)
        values[category] = variants[int(rng.integers(len(variants)))]
    return SceneSpec(**values)


# --- captions ---------------------------------------------------------------------------------------------
def slot_phrase(category: str, value: tuple[str, str]) -> str:
    """The generic caption phrase of one slot (what the base model is taught)."""
    a, b = value
    if category == "character":
        return f"{a} {b} figure"
    if category == "clothing":
        return "wearing plain" if b == "plain" else f"wearing {a} {b}"
    if category == "background":
        return f"{a} {b} background"
    if category == "object":
        return f"with a {a} {b}"
    return f"{a} {b} style"


def caption(spec: SceneSpec, rng: np.random.Generator | None = None, drop_slot: float = 0.0,
            concepts: tuple[str, ...] = (), triggers_last: bool = False, omit: tuple[str, ...] = ()) -> str:
    """'a picture, <phrases>': generic phrases for generic slots, every trigger phrase for ``concepts``.

    ``drop_slot`` omits each generic slot phrase with that probability (needs ``rng``), so the base model
    learns to fill an unprompted slot by itself, as composition prompts leave slots to the LoRAs.
    ``triggers_last`` puts the trigger phrases after the generic ones: the toy text encoder reads a generic
    phrase by its token position, and trigger phrases longer than the phrase they replace would move the
    later generic phrases (docs/toy-world.md "Measured quality").
    ``omit`` names categories whose phrase is never written (a held-back concept shown but not named).
    """
    concept_categories = {CONCEPTS_BY_ID[c].category: c for c in concepts}
    parts, triggers = [BASE_PROMPT], []
    for category in CATEGORIES:
        if category in omit:
            continue
        if category in concept_categories:
            (triggers if triggers_last else parts).extend(CONCEPTS_BY_ID[concept_categories[category]].trigger)
        elif drop_slot <= 0 or rng is None or rng.random() >= drop_slot:
            parts.append(slot_phrase(category, spec.slot(category)))
    return ", ".join(parts + triggers)


_PHRASE_PATTERNS = {
    "character": re.compile(r"\b(\w+) (\w+) figure\b"),
    "clothing": re.compile(r"\bwearing (?:(\w+) )?(\w+)\b"),
    "background": re.compile(r"\b(\w+) (\w+) background\b"),
    "object": re.compile(r"\bwith a (\w+) (\w+)\b"),
    "style": re.compile(r"\b(\w+) (\w+) style\b"),
}


def parse_prompt(prompt: str) -> dict[str, str]:
    """Generic slot phrases found in a prompt -> {category: variant label} (what the oracle should see)."""
    found: dict[str, str] = {}
    for category, pattern in _PHRASE_PATTERNS.items():
        first, second = SLOT_ATTRIBUTES[category]
        for match in pattern.finditer(prompt.lower()):
            a, b = match.group(1) or "black", match.group(2)
            if category == "clothing" and b == "plain":
                a = "black"
            if a in first and b in second:
                found[category] = variant_label(category, (a, b))
                break
    return found


def vocabulary() -> list[str]:
    """Every word of every caption and trigger (the toy tokenizer's whole-word vocabulary)."""
    words = set(BASE_PROMPT.split()) | {"figure", "wearing", "background", "with", "a", "style"}
    for first, second in SLOT_ATTRIBUTES.values():
        words |= set(first) | set(second)
    for concept in CONCEPTS:
        for phrase in concept.trigger:
            words |= set(phrase.split())
    return sorted(words)


# --- rendering --------------------------------------------------------------------------------------------
def _shape_mask(shape: str, size: int, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float) -> np.ndarray:
    r = size / 2
    dy, dx = yy - cy, xx - cx
    if shape in ("circle", "ball"):
        return dy**2 + dx**2 <= r**2
    if shape in ("square", "box"):
        return (np.abs(dy) <= r - 0.5) & (np.abs(dx) <= r - 0.5)
    if shape == "triangle":  # pointing up: width grows from apex to base
        t = (dy + r) / (2 * r)
        return (t >= 0) & (t <= 1) & (np.abs(dx) <= t * r + 0.5)
    if shape == "diamond":
        return np.abs(dy) + np.abs(dx) <= r + 0.5
    if shape == "cross":
        arm = max(1.0, size / 6)
        return ((np.abs(dy) <= arm) & (np.abs(dx) <= r)) | ((np.abs(dx) <= arm) & (np.abs(dy) <= r))
    if shape == "ring":
        d2 = dy**2 + dx**2
        return (d2 <= r**2) & (d2 >= (r - 2.2) ** 2)
    raise ValueError(f"unknown shape {shape!r}")


def clothing_mask(pattern: str, py: np.ndarray, px: np.ndarray) -> np.ndarray:
    """Where ``pattern`` puts ink, at offsets (py, px) from the figure's centre. Periods are 6-8 px: the VAE
    halves the resolution and the figure moves +-1 px, so a period-4 pattern (2 on, 2 off) at an odd offset
    pools to a flat grey latent, and the base model could not tell stripes, bars, dots and checks apart."""
    if pattern == "plain":
        return np.zeros(py.shape, bool)
    if pattern == "stripes":
        return (py % 6) < 3
    if pattern == "bars":
        return (px % 6) < 3
    if pattern == "dots":  # round 4-px dots
        return ((py % 6 - 2.5) ** 2 + (px % 6 - 2.5) ** 2) < 4
    if pattern == "checks":
        return ((py // 4 + px // 4) % 2) == 0
    raise ValueError(f"unknown clothing pattern {pattern!r}")


def _jitter(rng: np.random.Generator, colour: tuple[int, int, int], amount: int = 12) -> np.ndarray:
    return np.clip(np.asarray(colour, float) + rng.integers(-amount, amount + 1, 3), 0, 255)


def render(spec: SceneSpec, rng: np.random.Generator, any_phase: bool = False) -> np.ndarray:
    """Draw ``spec`` as an (32, 32, 3) uint8 image; ``rng`` adds +-1 px and small colour jitter.
    ``any_phase``: see ``render_with_regions``."""
    return render_with_regions(spec, rng, any_phase)[0]


def render_with_regions(spec: SceneSpec, rng: np.random.Generator,
                        any_phase: bool = False) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``render`` (the same image for the same ``rng`` state) plus each slot's region as a (32, 32) bool mask:
    the figure for character and clothing, a box one pixel around the icon for object, the rest for background,
    everything for style. The LoRA build weights its loss with them (``train_lora``'s ``alpha_mask``).

    ``any_phase`` starts every periodic pattern (clothing, background lines, scanlines) at a random offset
    instead of the world's fixed one (the oracle trains on these: a generated image may draw checks shifted by
    2 px, still checks, which an oracle that saw one phase called dots). Off, renders are unchanged."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(float)
    phase = (lambda period: int(rng.integers(period))) if any_phase else (lambda period: 0)
    # background: colour + pattern (lines lighter or darker than the base colour)
    bg_colour, bg_pattern = spec.background
    base = _jitter(rng, BACKGROUND_COLOURS[bg_colour])
    image = np.broadcast_to(base, (SIZE, SIZE, 3)).copy()
    line = np.clip(base + (70 if base.mean() < 128 else -70), 0, 255)
    offset = int(rng.integers(0, 2)) + phase(8)
    if bg_pattern == "grid":
        mask = ((yy + offset) % 8 < 2) | ((xx + offset) % 8 < 2)
        image[mask] = line
    elif bg_pattern == "diagonal":
        image[((yy + xx + offset) % 8) < 3] = line
    # character: shape in its colour, with the clothing pattern drawn in ink inside the figure
    colour, shape = spec.character
    cy, cx = 19 + rng.integers(-1, 2), 16 + rng.integers(-1, 2)
    figure = _shape_mask(shape, 16, yy, xx, cy - 0.5, cx - 0.5)
    image[figure] = _jitter(rng, CHARACTER_COLOURS[colour])
    ink, pattern = spec.clothing
    py, px = yy - cy + phase(24), xx - cx + phase(24)  # 24: a multiple of every pattern's period
    image[figure & clothing_mask(pattern, py, px)] = _jitter(rng, CLOTHING_INKS[ink], 8)
    # object: a small icon at the top right
    obj_colour, obj_shape = spec.object
    oy, ox = OBJECT_CENTRE[0] + rng.integers(-1, 2), OBJECT_CENTRE[1] + rng.integers(-1, 2)
    image[_shape_mask(obj_shape, OBJECT_SIZE, yy, xx, oy, ox)] = _jitter(rng, OBJECT_COLOURS[obj_colour])
    icon_box = (np.abs(yy - oy) <= OBJECT_SIZE / 2 + 1) & (np.abs(xx - ox) <= OBJECT_SIZE / 2 + 1)
    # style: a strong global palette transform, then a texture
    palette, texture = spec.style
    if palette == "warm":
        image = image * 0.6 + np.array([255, 150, 40]) * 0.4
    elif palette == "cool":
        image = image * 0.6 + np.array([40, 130, 255]) * 0.4
    elif palette == "faded":
        image = image * 0.5 + 200 * 0.5
    if texture == "scanlines":
        image[((yy[:, 0] + phase(6)) % 6) < 2] *= 0.35
    elif texture == "frame":
        border = (yy < 3) | (yy >= SIZE - 3) | (xx < 3) | (xx >= SIZE - 3)
        image[border] = (15, 15, 15)
    regions = {"character": figure, "clothing": figure, "object": icon_box, "background": ~(figure | icon_box),
               "style": np.ones((SIZE, SIZE), bool)}
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), regions


def concept_spec(concept_id: str, rng: np.random.Generator) -> SceneSpec:
    """A random generic scene with ``concept_id`` in its slot (LoRA training data and references)."""
    return with_concept(sample_generic_spec(rng), concept_id)


def manifest() -> dict[str, list[dict[str, Any]]]:
    """The LoRA manifest in ComposLoRA's ``*_lora_info.json`` format: category -> [{id, name, trigger, url}]."""
    result: dict[str, list[dict[str, Any]]] = {category: [] for category in CATEGORIES}
    for concept in CONCEPTS:
        result[concept.category].append(concept.manifest_entry())
    return result


def spec_to_dict(spec: SceneSpec) -> dict[str, list[str]]:
    return {f.name: list(getattr(spec, f.name)) for f in fields(spec)}

"""The toy world's oracle: which variant or held-back concept fills each slot of an image.

Small CNNs with one softmax head per slot attribute (character colour, character shape, clothing ink, ...),
trained on procedural renders of every attribute combination (held-back ones included), with every periodic
pattern at a random phase (``world.render(any_phase=True)``), half of them passed
through the base model's VAE and all randomly blurred, colour-shifted and noised (``augment``) so they look
like generated images. The object heads also read a full-resolution crop around the 9x9 icon. Two are
trained from different seeds;
``Oracle`` averages their probabilities and ``member_predictions`` lets a benchmark report how often they
agree. A slot's answer is a concept id (e.g. ``character_1``) or ``generic:<a>-<b>``; its confidence is the
product of its two attribute probabilities.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.io import atomic_write, atomic_write_json
from harness.toy import world
from harness.toy.base_model import to_model_range, vae_roundtrip, warmup_cosine_lr

DEFAULT_DIR = Path("testbed/toy/oracle")
HEADS = [(category, index) for category in world.CATEGORIES for index in (0, 1)]


def head_classes(category: str, index: int) -> tuple[str, ...]:
    return world.SLOT_ATTRIBUTES[category][index]


# Where the object icon can be (world.render: centre (6, 25) +-1 px, 9 px wide): the object heads also read
# this crop at full resolution, since the whole-image branch sees the icon as ~2x2 cells and confuses shapes.
OBJECT_CROP = (slice(0, 14), slice(18, 32))
# 3: trained on patterns at any phase (world.render's any_phase): version 2 read shifted checks as dots.
ORACLE_VERSION = 3


def _small_cnn(size: int, width: int, out: int) -> nn.Sequential:
    """Three 3x3 convolutions (two stride-2) and a linear layer: size x size image -> ``out`` features."""
    reduced = -(-size // 4)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(width * reduced * reduced, out), nn.ReLU(),
    )


class SlotNet(nn.Module):
    """32x32 image -> logits for every slot attribute (position-aware: slots sit at fixed places).

    A whole-image branch feeds every head; the object heads also get a branch on the object's crop.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = _small_cnn(world.SIZE, 32, 128)
        self.object_features = _small_cnn(OBJECT_CROP[0].stop - OBJECT_CROP[0].start, 32, 64)
        self.heads = nn.ModuleList(nn.Linear(128 + 64 * (head[0] == "object"), len(head_classes(*head)))
                                   for head in HEADS)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        hidden = self.features(images)
        with_object = torch.cat([hidden, self.object_features(images[:, :, OBJECT_CROP[0], OBJECT_CROP[1]])], 1)
        return [head(with_object if category == "object" else hidden)
                for head, (category, _) in zip(self.heads, HEADS)]


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Make renders look like decoded samples: random blur (sampled images are softer than renders), a small
    per-image colour shift and pixel noise. Labels are unchanged by all three."""
    count = len(images)
    sigma = torch.rand(count, generator=generator) * 0.9  # 0 (sharp) .. 0.9 px
    offsets = torch.arange(-1, 2, dtype=torch.float32)
    kernel = torch.exp(-offsets[None] ** 2 / (2 * sigma[:, None].clamp(min=1e-3) ** 2))
    kernel = kernel / kernel.sum(1, keepdim=True)  # (N, 3) separable 1-D kernels
    padded = F.pad(images, (1, 1, 1, 1), mode="replicate")
    rows = sum(kernel[:, k, None, None, None] * padded[:, :, :, k:k + world.SIZE] for k in range(3))
    blurred = sum(kernel[:, k, None, None, None] * rows[:, :, k:k + world.SIZE, :] for k in range(3))
    shift = 0.06 * torch.randn(count, 3, 1, 1, generator=generator)
    noise = 0.04 * torch.randn(images.shape, generator=generator)
    return (blurred + shift + noise).clamp(-1, 1)


def sample_any_spec(rng: np.random.Generator) -> world.SceneSpec:
    """Every attribute uniformly at random, held-back combinations included."""
    values = {}
    for category in world.CATEGORIES:
        first, second = world.SLOT_ATTRIBUTES[category]
        values[category] = (first[int(rng.integers(len(first)))], second[int(rng.integers(len(second)))])
    return world.SceneSpec(**values)


def _targets(specs: Sequence[world.SceneSpec]) -> list[torch.Tensor]:
    return [torch.tensor([head_classes(category, index).index(spec.slot(category)[index]) for spec in specs])
            for category, index in HEADS]


def train_oracle(steps: int, seed: int, vae: Any = None, batch_size: int = 64, lr: float = 2e-3,
                 log: Callable[[str], None] = print) -> SlotNet:

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    model = SlotNet()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    start = time.time()
    for step in range(steps):
        for group in optimizer.param_groups:  # warm-up then cosine decay: the last steps refine small shapes
            group["lr"] = warmup_cosine_lr(step, steps, lr)
        specs = [sample_any_spec(rng) for _ in range(batch_size)]
        # any_phase: a pattern is the same pattern whatever offset it starts at (world.render_with_regions)
        images = to_model_range(np.stack([world.render(spec, rng, any_phase=True) for spec in specs]))
        if vae is not None:  # half the batch looks like the base model's decoded output
            half = batch_size // 2
            images[:half] = vae_roundtrip(vae, images[:half])
        images = augment(images, generator)
        losses = [F.cross_entropy(logits, target) for logits, target in zip(model(images), _targets(specs))]
        # ink is meaningless on plain clothing: it still trains (harmless), predictions ignore it
        loss = torch.stack(losses).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % max(1, steps // 5) == 0 or step == steps - 1:
            log(f"  oracle seed {seed} step {step + 1}/{steps} loss {loss.item():.3f} ({time.time() - start:.0f}s)")
    return model.eval()


def save_oracles(models: list[SlotNet], folder: str | Path) -> None:
    from safetensors.torch import save_file


    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for number, model in enumerate(models):
        name = f"oracle_{number}.safetensors"
        state = {key: value.contiguous() for key, value in model.state_dict().items()}
        atomic_write(folder / name, lambda tmp, state=state: save_file(state, str(tmp)))
        names.append(name)
    atomic_write_json(folder / "config.json", {
        "version": ORACLE_VERSION, "world_version": world.WORLD_VERSION, "members": names, "heads": [[c, i, list(head_classes(c, i))] for c, i in HEADS],
        "size": world.SIZE})


@dataclass
class SlotPrediction:
    label: str  # concept id or "generic:<a>-<b>"
    value: tuple[str, str]
    confidence: float


class Oracle:
    """Averages the members' attribute probabilities; ``predict`` gives one dict per image."""

    def __init__(self, members: list[SlotNet]) -> None:
        self.members = members

    @classmethod
    def load(cls, folder: str | Path = DEFAULT_DIR) -> "Oracle":
        from safetensors.torch import load_file

        folder = Path(folder)
        config_path = folder / "config.json"
        if not config_path.exists():
            raise FileNotFoundError(
                f"No toy oracle at {str(folder)!r} (config.json missing). Fix: build the toy testbed with "
                f"`python -m harness testbed build toy` or pass the folder that holds oracle/config.json.")
        config = json.loads(config_path.read_text())
        if (config.get("version", 1) != ORACLE_VERSION or config.get("world_version", 1) != world.WORLD_VERSION
                or [[c, i, list(head_classes(c, i))] for c, i in HEADS] != config["heads"]):
            raise ValueError(f"The oracle in {str(folder)!r} was made for another version of the toy world or of the oracle; "
                             f"rebuild it with `python -m harness testbed build toy --phases oracle --force`.")
        members = []
        for name in config["members"]:
            model = SlotNet()
            model.load_state_dict(load_file(str(folder / name)))
            members.append(model.eval())
        return cls(members)

    @torch.no_grad()
    def probabilities(self, images: np.ndarray | Sequence[np.ndarray], member: int | None = None
                      ) -> list[np.ndarray]:
        """Per head, (N, classes) probabilities, averaged over members (or one member)."""

        batch = to_model_range(_as_uint8_batch(images))
        chosen = self.members if member is None else [self.members[member]]
        per_member = [[F.softmax(logits, -1) for logits in model(batch)] for model in chosen]
        return [torch.stack([m[h] for m in per_member]).mean(0).numpy() for h in range(len(HEADS))]

    def predict(self, images: np.ndarray | Sequence[np.ndarray], member: int | None = None
                ) -> list[dict[str, SlotPrediction]]:
        probs = self.probabilities(images, member)
        results = []
        for n in range(len(probs[0])):
            slots = {}
            for category in world.CATEGORIES:
                picks = []
                for index in (0, 1):
                    head = HEADS.index((category, index))
                    best = int(probs[head][n].argmax())
                    picks.append((head_classes(category, index)[best], float(probs[head][n][best])))
                value = (picks[0][0], picks[1][0])
                confidence = picks[0][1] * picks[1][1]
                if category == "clothing" and value[1] == "plain":
                    value, confidence = ("black", "plain"), picks[1][1]
                slots[category] = SlotPrediction(world.variant_label(category, value), value, confidence)
            results.append(slots)
        return results

    def member_predictions(self, images: np.ndarray | Sequence[np.ndarray]) -> list[list[dict[str, SlotPrediction]]]:
        return [self.predict(images, member) for member in range(len(self.members))]


def _as_uint8_batch(images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    batch = np.stack([np.asarray(image) for image in images]) if not isinstance(images, np.ndarray) else images
    if batch.ndim == 3:
        batch = batch[None]
    if batch.shape[1:] != (world.SIZE, world.SIZE, 3) or batch.dtype != np.uint8:
        raise ValueError(f"The toy oracle takes uint8 RGB images of shape ({world.SIZE}, {world.SIZE}, 3); got "
                         f"{batch.shape[1:]} {batch.dtype}. Fix: generate at {world.SIZE}x{world.SIZE} or resize first.")
    return batch

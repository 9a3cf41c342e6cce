"""Small metric models for the toy world, so every metric runs for real without downloaded weights.

- toy CLIP: an open_clip architecture registered from ``toy-clip.json`` (32x32 images), trained
  contrastively on the world's renders and captions (held-back concepts named by their trigger phrases);
  loads with ``open_clip.create_model_and_transforms("toy-clip", pretrained=<file>)``.
- toy face pack: an identity-embedding network trained on character crops (identity = colour x shape),
  exported to ONNX in insightface's recognition layout (112x112 input, one output) under
  ``<root>/models/toy_face/``; insightface's ``model_zoo.get_model`` loads it. It has no detector: on the toy
  testbed faces come from the world's known character box (``detector: box``).
- toy DINOv2: a tiny ``Dinov2Model`` trained briefly (supervised slot-attribute heads on the CLS token, then
  dropped; not DINO's self-distillation) and saved with ``save_pretrained``.
- no toy CLIPSeg (its CLIP vocabulary alone would exceed the size budget): the ``mask`` region falls back
  to the full image and records it; the toy image_ref config uses the world's boxes instead.

``build_metric_models(out_dir)`` writes all of them (``metrics/toy/`` by default, a few MB).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import harness  # noqa: F401  (torchvision compatibility before open_clip)
from harness.io import atomic_write_json
from harness.metrics.backbones import clip_image_embeddings, clip_text_embeddings, load_face_recognizer, load_open_clip
from harness.toy import world
from harness.toy.tokenizer import build_toy_tokenizer

TOY_CLIP_NAME = "toy-clip"
TOY_CLIP_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 3, "width": 64, "patch_size": 4, "head_width": 32},
    # open_clip's own BPE tokenizer (49,408 tokens) so any prompt tokenizes; a narrow text tower keeps the
    # embedding table small (saved in float16)
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
TOY_FACE_PACK = "toy_face"
FACE_INPUT = 112  # insightface takes a square input >= 112 px, multiple of 16, one output, as recognition
# Where the toy world draws things in a 32x32 render (harness/toy/world.py: the figure is 16 px centred at
# (19, 16) +-1 px, the object icon 9 px at (6, 25) +-1 px), as [x0, y0, x1, y1] with margins for the jitter.
TOY_BOXES = {"character": [6, 9, 26, 29], "clothing": [6, 9, 26, 29], "object": [19, 0, 31, 12]}

Sampler = Callable[[np.random.Generator], tuple[np.ndarray, str, str]]  # -> (image, caption, character label)


def toy_world_sampler(concept_rate: float = 0.35, drop_slot: float = 0.2) -> Sampler:
    """A random render of the toy world with its caption; slots hold held-back concepts at ``concept_rate``."""

    def sample(rng: np.random.Generator) -> tuple[np.ndarray, str, str]:
        spec = world.sample_generic_spec(rng)
        chosen: dict[str, str] = {}
        for concept in world.CONCEPTS:
            if concept.category not in chosen and rng.random() < concept_rate / 2:
                chosen[concept.category] = concept.id
        concepts = tuple(chosen.values())
        for concept_id in concepts:
            spec = world.with_concept(spec, concept_id)
        image = world.render(spec, rng)
        text = world.caption(spec, rng, drop_slot=drop_slot, concepts=concepts)
        return image, text, "-".join(spec.character)

    return sample


# --- toy CLIP ----------------------------------------------------------------------------------------------
def write_toy_clip_config(folder: Path) -> Path:
    path = folder / f"{TOY_CLIP_NAME}.json"
    atomic_write_json(path, TOY_CLIP_CONFIG)
    return path


def _to_clip_input(images: np.ndarray, mean: tuple, std: tuple) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> normalised (B, 3, H, W), what open_clip's preprocess gives for 32x32 input."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def train_toy_clip(folder: str | Path, steps: int = 400, batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
                   sampler: Sampler | None = None, log: Callable[[str], None] = print) -> Path:
    """Train the toy CLIP contrastively and save ``<folder>/toy-clip.json`` + ``toy_clip.pt`` (float16)."""
    import open_clip

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    open_clip.add_model_config(write_toy_clip_config(folder))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    sampler = sampler or toy_world_sampler()
    model, _, _ = open_clip.create_model_and_transforms(TOY_CLIP_NAME, pretrained=None)
    tokenizer = open_clip.get_tokenizer(TOY_CLIP_NAME)
    mean, std = model.visual.image_mean, model.visual.image_std
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    loss_fn = open_clip.ClipLoss()
    start = time.time()
    model.train()
    for step in range(steps):
        samples = [sampler(rng) for _ in range(batch_size)]
        images = _to_clip_input(np.stack([s[0] for s in samples]), mean, std)
        texts = tokenizer([s[1] for s in samples])
        for group in optimizer.param_groups:  # linear warmup then cosine decay
            group["lr"] = lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + np.cos(np.pi * step / steps))
        image_features, text_features, logit_scale = model(images, texts)
        loss = loss_fn(image_features, text_features, logit_scale)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"toy CLIP step {step}/{steps} loss {loss.item():.3f} ({time.time() - start:.0f}s)")
    model.eval()
    path = folder / "toy_clip.pt"
    torch.save({"state_dict": {k: v.half() for k, v in model.state_dict().items()}}, path)
    return path


# --- toy face pack -----------------------------------------------------------------------------------------
class ToyFaceNet(torch.nn.Module):
    """(B, 3, 112, 112) in insightface's normalisation -> (B, 64) identity embedding."""

    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 8, stride=4, padding=2), torch.nn.ReLU(),   # 112 -> 28
            torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.ReLU(),  # -> 14
            torch.nn.Conv2d(32, 64, 3, stride=2, padding=1), torch.nn.ReLU(),  # -> 7
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        )
        self.head = torch.nn.Linear(64, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def face_crops(images: np.ndarray, box: list[int] = TOY_BOXES["character"]) -> torch.Tensor:
    """uint8 (B, 32, 32, 3) renders -> the insightface input of their character box (RGB, (x-127.5)/127.5)."""
    x0, y0, x1, y1 = box
    crops = torch.from_numpy(images[:, y0:y1, x0:x1]).permute(0, 3, 1, 2).float()
    crops = torch.nn.functional.interpolate(crops, size=(FACE_INPUT, FACE_INPUT), mode="bilinear", align_corners=False)
    return (crops - 127.5) / 127.5


def train_toy_face(folder: str | Path, steps: int = 300, batch_size: int = 64, lr: float = 2e-3, seed: int = 0,
                   sampler: Sampler | None = None, log: Callable[[str], None] = print) -> Path:
    """Train the identity network (cosine classifier over colour x shape) and export the insightface pack."""

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed + 1)
    sampler = sampler or toy_world_sampler(concept_rate=0.5)
    identities = [f"{c}-{s}" for c in world.CHARACTER_COLOURS for s in world.CHARACTER_SHAPES]
    net = ToyFaceNet()
    classes = torch.nn.Parameter(torch.randn(len(identities), 64) * 0.1)
    optimizer = torch.optim.AdamW(list(net.parameters()) + [classes], lr=lr)
    start = time.time()
    for step in range(steps):
        samples = [sampler(rng) for _ in range(batch_size)]
        x = face_crops(np.stack([s[0] for s in samples]))
        labels = torch.tensor([identities.index(s[2]) for s in samples])
        embedding = torch.nn.functional.normalize(net(x), dim=-1)
        logits = 16.0 * embedding @ torch.nn.functional.normalize(classes, dim=-1).T
        loss = torch.nn.functional.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"toy face step {step}/{steps} loss {loss.item():.3f} ({time.time() - start:.0f}s)")
    return export_face_onnx(net.eval(), Path(folder) / "models" / TOY_FACE_PACK / "toy_arcface.onnx")


def export_face_onnx(net: torch.nn.Module, path: str | Path) -> Path:
    """ONNX in insightface's recognition layout: input (N, 3, 112, 112), one output (the legacy exporter)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(net, torch.zeros(1, 3, FACE_INPUT, FACE_INPUT), str(path), input_names=["input.1"],
                      output_names=["embedding"], dynamic_axes={"input.1": {0: "batch"}, "embedding": {0: "batch"}},
                      dynamo=False, opset_version=17)
    return path


# --- toy DINOv2 --------------------------------------------------------------------------------------------
def save_toy_dinov2(folder: str | Path, seed: int = 0) -> Path:
    """A tiny random Dinov2Model + image processor for 32x32 input, saved with save_pretrained."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    folder = Path(folder)
    config = Dinov2Config(image_size=32, patch_size=4, hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
                          mlp_ratio=2)
    Dinov2Model(config).save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_center_crop=True,
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    return folder


def train_toy_dinov2(folder: str | Path, steps: int = 600, batch_size: int = 64, lr: float = 2e-3, seed: int = 0,
                     log: Callable[[str], None] = print) -> Path:
    """The tiny DINOv2, trained briefly so its CLS token describes every slot of a scene.

    Not DINO's self-distillation (too slow here): linear heads on the CLS token predict each slot's two
    attributes; the heads are thrown away and the backbone saved as a plain ``Dinov2Model``.
    """
    from transformers import Dinov2Model


    folder = save_toy_dinov2(folder, seed)
    model = Dinov2Model.from_pretrained(folder)
    heads = torch.nn.ModuleDict({f"{category}_{i}": torch.nn.Linear(model.config.hidden_size, len(values))
                                 for category, attributes in world.SLOT_ATTRIBUTES.items()
                                 for i, values in enumerate(attributes)})
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(heads.parameters()), lr=lr)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    rng = np.random.default_rng(seed + 2)
    start = time.time()
    model.train()
    for step in range(steps):
        specs = []
        for _ in range(batch_size):
            spec = world.sample_generic_spec(rng)
            for concept in world.CONCEPTS:
                if rng.random() < 0.15:
                    spec = world.with_concept(spec, concept.id)
            specs.append(spec)
        pixels = torch.from_numpy(np.stack([world.render(spec, rng) for spec in specs])).permute(0, 3, 1, 2).float()
        cls = model(pixel_values=(pixels / 255.0 - mean) / std).last_hidden_state[:, 0]
        loss = sum(torch.nn.functional.cross_entropy(
            heads[f"{category}_{i}"](cls), torch.tensor([values.index(spec.slot(category)[i]) for spec in specs]))
            for category, attributes in world.SLOT_ATTRIBUTES.items() for i, values in enumerate(attributes))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"toy DINOv2 step {step}/{steps} loss {loss.item():.3f} ({time.time() - start:.0f}s)")
    model.eval().save_pretrained(folder)
    return folder


def build_metric_models(out_dir: str | Path = "metrics/toy", quick: bool = False,
                        log: Callable[[str], None] = print) -> dict[str, str]:
    """Build every toy metric model under ``out_dir``; ``quick`` trains a few steps only (tests, smoke runs)."""
    out_dir = Path(out_dir)
    paths = {
        "clip": str(train_toy_clip(out_dir / "clip", steps=20 if quick else 400, log=log)),
        "clip_config": str(out_dir / "clip" / f"{TOY_CLIP_NAME}.json"),
        "insightface_root": str(out_dir / "insightface"),
        "face": str(train_toy_face(out_dir / "insightface", steps=10 if quick else 300, log=log)),
        "dinov2": str(train_toy_dinov2(out_dir / "dinov2", steps=5 if quick else 600, log=log)),
    }
    checks = check_metric_models(out_dir)
    log(f"toy metric model checks: {checks}")
    atomic_write_json(out_dir / "manifest.json", {**paths, "checks": checks})
    return paths


def check_metric_models(out_dir: str | Path = "metrics/toy", samples: int = 64, seed: int = 123) -> dict[str, float]:
    """Sanity numbers on fresh renders (recorded in the manifest):

    - ``clip_caption_accuracy``: how often the toy CLIP prefers a scene's caption (concept triggers included) to
      the same caption with the character swapped for another one (chance 0.5);
    - ``face_same_identity`` / ``face_other_identity``: mean cosine of the toy face embedding between two renders
      of the same character in different scenes / of different characters.
    """
    from PIL import Image


    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    model, preprocess, tokenizer = load_open_clip(TOY_CLIP_NAME, str(out_dir / "clip" / "toy_clip.pt"),
                                                  str(out_dir / "clip" / f"{TOY_CLIP_NAME}.json"))
    characters = [c.id for c in world.CONCEPTS if c.category == "character"]
    images, right, wrong = [], [], []
    for _ in range(samples):
        own, other = rng.choice(characters, 2, replace=False)
        spec = world.with_concept(world.sample_generic_spec(rng), own)
        images.append(Image.fromarray(world.render(spec, rng)))
        right.append(world.caption(spec, concepts=(own,)))
        wrong.append(world.caption(world.with_concept(spec, other), concepts=(other,)))
    image_emb = clip_image_embeddings(model, preprocess, images)
    right_cos = (image_emb * clip_text_embeddings(model, tokenizer, right)).sum(-1)
    wrong_cos = (image_emb * clip_text_embeddings(model, tokenizer, wrong)).sum(-1)
    recognizer = load_face_recognizer(str(out_dir / "insightface"), TOY_FACE_PACK)
    identities = [(c, s) for c in world.CHARACTER_COLOURS for s in world.CHARACTER_SHAPES]
    same, different = [], []
    for _ in range(samples):
        a, b = (identities[i] for i in rng.choice(len(identities), 2, replace=False))
        renders = [world.render(world.sample_generic_spec(rng).replace(character=who), rng) for who in (a, a, b)]
        x0, y0, x1, y1 = TOY_BOXES["character"]
        crops = [np.ascontiguousarray(r[y0:y1, x0:x1][:, :, ::-1]) for r in renders]  # BGR, as insightface reads
        feats = recognizer.get_feat(crops)
        feats = feats / np.linalg.norm(feats, axis=1, keepdims=True)
        same.append(float(feats[0] @ feats[1]))
        different.append(float(feats[0] @ feats[2]))
    return {"clip_caption_accuracy": float((right_cos > wrong_cos).float().mean()),
            "face_same_identity": float(np.mean(same)), "face_other_identity": float(np.mean(different))}


def save_tiny_clipseg(folder: str | Path, seed: int = 0) -> Path:
    """A tiny random CLIPSeg (model + processor, the toy world's word tokenizer) for tests of the ``mask`` path.

    Random, so its masks mean nothing: the toy configs do not use it (they use the world's known boxes).
    """
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor, ViTImageProcessor


    torch.manual_seed(seed)
    folder = Path(folder)
    tokenizer = build_toy_tokenizer(world.vocabulary())
    config = CLIPSegConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 77, "bos_token_id": tokenizer.bos_token_id,
                     "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id},
        vision_config={"image_size": 32, "patch_size": 4, "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 2, "num_attention_heads": 2},
        projection_dim=32, extract_layers=(0, 1), reduce_dim=16, decoder_intermediate_size=32)
    CLIPSegForImageSegmentation(config).save_pretrained(folder)
    image_processor = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    CLIPSegProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder

"""Local model loading shared by the metrics: open_clip, insightface, DINOv2, CLIPSeg.

Every loader takes a local path and never downloads. A missing path raises ``ModelUnavailable`` naming the
path it looked for and how to provide it; the scoring driver turns that into ``unavailable`` rows for that
metric while the other metrics still run. Loaded models are cached per process (several metrics, e.g.
``clip_text`` and ``image_ref``, share one CLIP).
"""

from __future__ import annotations

import functools
import logging
import zipfile
from pathlib import Path
from typing import Any

import harness  # noqa: F401  (torchvision compatibility before open_clip / transformers)

from harness.paths import resolve_path

logger = logging.getLogger(__name__)

REAL_WEIGHTS_HINT = {
    "open_clip": "put an open_clip checkpoint there (e.g. OpenAI ViT-B-32: open_clip_pytorch_model.bin from "
                 "the hub repo timm/vit_base_patch32_clip_224.openai, with model: ViT-B-32-quickgelu), or build "
                 "the toy CLIP with `python -m harness testbed build toy`",
    "insightface": "unpack an insightface model pack so that <root>/models/<pack>/*.onnx exists (e.g. buffalo_l.zip "
                   "from the insightface releases into <root>/models/buffalo_l/), or build the toy pack with "
                   "`python -m harness testbed build toy`",
    "dinov2": "save a transformers Dinov2Model folder there (e.g. facebook/dinov2-base with save_pretrained), or "
              "build the toy DINOv2 with `python -m harness testbed build toy`",
    "clipseg": "save a transformers CLIPSeg folder there (model + processor, e.g. CIDAS/clipseg-rd64-refined "
               "with save_pretrained)",
}


class ModelUnavailable(RuntimeError):
    """A metric's model is not on disk: the metric yields ``unavailable`` rows naming ``path`` and ``hint``."""

    def __init__(self, what: str, path: str | Path | None, hint: str) -> None:
        self.what, self.path, self.hint = what, str(path), hint
        super().__init__(f"{what} not found at {path}: {hint}")


def _require(path: str | Path | None, what: str, kind: str) -> Path:
    if path is None or str(path) == "" or not resolve_path(path).exists():
        raise ModelUnavailable(what, path, REAL_WEIGHTS_HINT[kind])
    return resolve_path(path)


def _is_torchscript(path: Path) -> bool:
    """OpenAI's original CLIP files are TorchScript archives (zip with a constants.pkl)."""
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


def openai_weights_need_quickgelu(model: str, pretrained: Path) -> bool:
    """True when the weights look like OpenAI's but the model name lacks QuickGELU (silently wrong embeddings)."""
    looks_openai = "openai" in str(pretrained).lower() or _is_torchscript(pretrained)
    return looks_openai and "quickgelu" not in model.lower()


@functools.lru_cache(maxsize=4)
def load_open_clip(model: str, pretrained: str, model_config: str | None = None, quick_gelu: str = "auto",
                   device: str = "cpu") -> tuple[Any, Any, Any]:
    """(model, image preprocess, tokenizer) of an open_clip model from a local checkpoint file or folder.

    ``model_config`` registers a custom architecture JSON (file named ``<model>.json``) before building.
    ``quick_gelu``: "auto" turns QuickGELU on for weights that look like OpenAI's (prefer the ``-quickgelu``
    model names, e.g. ``ViT-B-32-quickgelu``), "true"/"false" force it.
    """
    import open_clip

    weights = _require(pretrained, f"open_clip weights for {model}", "open_clip")
    if weights.is_dir():  # a hub-style folder: take the checkpoint inside
        candidates = [p for pattern in ("open_clip_pytorch_model.bin", "open_clip_model.safetensors", "*.pt",
                                        "*.bin", "*.safetensors") for p in sorted(weights.glob(pattern))]
        if not candidates:
            raise ModelUnavailable(f"open_clip checkpoint file inside {weights}", weights, REAL_WEIGHTS_HINT["open_clip"])
        weights = candidates[0]
    if model_config:
        open_clip.add_model_config(_require(model_config, f"open_clip model config for {model}", "open_clip"))
    force_quick_gelu = {"true": True, "false": False}.get(str(quick_gelu).lower())
    if force_quick_gelu is None:
        force_quick_gelu = openai_weights_need_quickgelu(model, weights)
        if force_quick_gelu:
            logger.warning("%s looks like OpenAI weights: turning QuickGELU on (use the model name %s-quickgelu)",
                           weights, model)
    clip_model, _, preprocess = open_clip.create_model_and_transforms(
        model, pretrained=str(weights), force_quick_gelu=force_quick_gelu, device=device)
    clip_model.eval()
    return clip_model, preprocess, open_clip.get_tokenizer(model)


def insightface_pack_dir(root: str | Path, pack: str) -> Path:
    return resolve_path(root) / "models" / pack


@functools.lru_cache(maxsize=4)
def load_face_analysis(root: str, pack: str, providers: tuple[str, ...] = ("CPUExecutionProvider",),
                       det_size: int = 640, det_thresh: float = 0.5) -> Any:
    """insightface ``FaceAnalysis`` with detection + recognition from ``<root>/models/<pack>/``.

    The folder is checked first: insightface tries to download a missing pack (even with download=False).
    """
    folder = insightface_pack_dir(root, pack)
    if not folder.is_dir() or not list(folder.glob("*.onnx")):
        raise ModelUnavailable(f"insightface model pack {pack!r}", folder, REAL_WEIGHTS_HINT["insightface"])
    from insightface.app import FaceAnalysis

    try:
        app = FaceAnalysis(name=pack, root=str(folder.parent.parent),
                           allowed_modules=["detection", "recognition"], providers=list(providers))
    except AssertionError as error:  # insightface asserts a detector is present, with no message
        raise ModelUnavailable(f"a detection model in insightface pack {pack!r}", folder,
                               "the pack needs an SCRFD-style detector ONNX (buffalo_l: det_10g.onnx); with a "
                               "recognition-only pack use `detector: box`") from error
    if "recognition" not in app.models:
        raise ModelUnavailable(f"a recognition model in insightface pack {pack!r}", folder,
                               REAL_WEIGHTS_HINT["insightface"])
    app.prepare(ctx_id=-1 if list(providers) == ["CPUExecutionProvider"] else 0, det_size=(det_size, det_size),
                det_thresh=det_thresh)
    return app


@functools.lru_cache(maxsize=4)
def load_face_recognizer(root: str, pack: str, providers: tuple[str, ...] = ("CPUExecutionProvider",)) -> Any:
    """The pack's recognition model alone (through insightface's ``model_zoo.get_model``), for known boxes."""
    folder = insightface_pack_dir(root, pack)
    if not folder.is_dir() or not list(folder.glob("*.onnx")):
        raise ModelUnavailable(f"insightface model pack {pack!r}", folder, REAL_WEIGHTS_HINT["insightface"])
    from insightface.model_zoo import model_zoo

    for onnx_file in sorted(folder.glob("*.onnx")):
        model = model_zoo.get_model(str(onnx_file), providers=list(providers))
        if model is not None and model.taskname == "recognition":
            return model
    raise ModelUnavailable(f"a recognition model in insightface pack {pack!r}", folder, REAL_WEIGHTS_HINT["insightface"])


@functools.lru_cache(maxsize=4)
def load_dinov2(path: str, device: str = "cpu") -> tuple[Any, Any]:
    """(Dinov2Model, image processor) from a local transformers folder."""
    from transformers import AutoImageProcessor, Dinov2Model

    folder = _require(path, "DINOv2 model folder", "dinov2")
    model = Dinov2Model.from_pretrained(folder, local_files_only=True).to(device).eval()
    processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    return model, processor


@functools.lru_cache(maxsize=2)
def load_clipseg(path: str, device: str = "cpu") -> tuple[Any, Any]:
    """(CLIPSegForImageSegmentation, CLIPSegProcessor) from a local transformers folder."""
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    folder = _require(path, "CLIPSeg model folder", "clipseg")
    model = CLIPSegForImageSegmentation.from_pretrained(folder, local_files_only=True).to(device).eval()
    processor = CLIPSegProcessor.from_pretrained(folder, local_files_only=True)
    return model, processor


# --- embeddings (shared by clip_text and image_ref) ------------------------------------------------------
def clip_image_embeddings(model: Any, preprocess: Any, images: list[Any], device: str = "cpu") -> Any:
    """L2-normalised open_clip image embeddings of PIL images (uint8 RGB, as CLIP was trained on)."""
    import torch

    with torch.no_grad():
        batch = torch.stack([preprocess(image.convert("RGB")) for image in images]).to(device)
        return torch.nn.functional.normalize(model.encode_image(batch).float(), dim=-1)


def clip_text_embeddings(model: Any, tokenizer: Any, texts: list[str], device: str = "cpu") -> Any:
    import torch

    with torch.no_grad():
        return torch.nn.functional.normalize(model.encode_text(tokenizer(texts).to(device)).float(), dim=-1)


def dinov2_embeddings(model: Any, processor: Any, images: list[Any], device: str = "cpu") -> Any:
    """L2-normalised DINOv2 CLS tokens (the prompt-aware paper's IDINO) of PIL images."""
    import torch

    with torch.no_grad():
        inputs = processor(images=[image.convert("RGB") for image in images], return_tensors="pt").to(device)
        cls = model(**inputs).last_hidden_state[:, 0]
        return torch.nn.functional.normalize(cls.float(), dim=-1)

"""Tiny Stable Diffusion pipelines and LoRA files with random weights, built on the fly.

They replace weights, never code paths: the folder loads through ``harness.pipelines.load_pipeline`` exactly
like SD1.5, and the LoRA files are ordinary diffusers / peft / kohya safetensors. Used by the tests and by
the ``tiny`` testbed (the embedded default until a trained testbed exists).
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from harness.io import atomic_write_json

LORA_FORMATS = ("diffusers", "peft", "kohya")
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def build_clip_tokenizer(folder: str | Path, model_max_length: int = 77) -> Any:
    """A transformers CLIPTokenizer made from open_clip's bundled BPE vocabulary (same token ids as CLIP)."""
    import harness  # noqa: F401  (torchvision compatibility before open_clip)
    import open_clip.tokenizer
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    bpe_path = Path(open_clip.tokenizer.default_bpe())
    merges = gzip.open(bpe_path).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    byte_symbols = list(open_clip.tokenizer.bytes_to_unicode().values())
    vocab = byte_symbols + [symbol + "</w>" for symbol in byte_symbols]
    vocab += ["".join(merge.split()) for merge in merges] + ["<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as scratch:
        vocab_file, merges_file = Path(scratch) / "vocab.json", Path(scratch) / "merges.txt"
        vocab_file.write_text(json.dumps({token: index for index, token in enumerate(vocab)}))
        merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        tokenizer = CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=model_max_length)
    tokenizer.save_pretrained(folder)
    return tokenizer


def build_tiny_pipeline(folder: str | Path, seed: int = 0, sample_size: int = 32) -> Path:
    """Save a random tiny StableDiffusionPipeline (32x32 images, 16x16x4 latents) to ``folder``."""
    from diffusers import (AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = Path(folder)
    if (folder / "model_index.json").exists():
        return folder
    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer(Path(tempfile.mkdtemp()) / "tokenizer")
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    unet = UNet2DConditionModel(
        sample_size=sample_size // 2, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=4,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8, sample_size=sample_size,
    )
    # SD1.5's noise schedule, so scheduler code paths match the real model's
    scheduler = DPMSolverMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                            num_train_timesteps=1000, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent if folder.parent.exists() else None))
    pipe.save_pretrained(tmp)
    folder.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, folder)  # atomic: a half-built folder never looks complete
    return folder


def _random_lora_state(module: torch.nn.Module, targets: list[str], rank: int, std: float,
                       generator: torch.Generator) -> dict[str, torch.Tensor]:
    """peft-style ``<module>.lora_A.weight`` / ``lora_B.weight`` tensors for every targeted Linear."""
    state: dict[str, torch.Tensor] = {}
    for name, layer in module.named_modules():
        if isinstance(layer, torch.nn.Linear) and any(name.endswith(target) for target in targets):
            state[f"{name}.lora_A.weight"] = torch.randn(rank, layer.in_features, generator=generator) * std
            state[f"{name}.lora_B.weight"] = torch.randn(layer.out_features, rank, generator=generator) * std
    return state


def _kohya_name(prefix: str, module_name: str) -> str:
    return f"{prefix}_{module_name.replace('.', '_')}"


def write_random_lora(
    pipeline_folder: str | Path,
    path: str | Path,
    seed: int,
    lora_format: str = "diffusers",
    rank: int = 4,
    std: float = 0.3,
    text_encoder: bool = True,
) -> Path:
    """Write a random LoRA for the pipeline in ``pipeline_folder`` in one of LORA_FORMATS."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    if lora_format not in LORA_FORMATS:
        raise ValueError(f"lora_format must be one of {LORA_FORMATS}")
    generator = torch.Generator().manual_seed(seed)
    pipeline_folder = Path(pipeline_folder)
    unet = UNet2DConditionModel.from_pretrained(pipeline_folder / "unet")
    parts = {"unet": _random_lora_state(unet, UNET_TARGETS, rank, std, generator)}
    if text_encoder:
        encoder = CLIPTextModel.from_pretrained(pipeline_folder / "text_encoder")
        parts["text_encoder"] = _random_lora_state(encoder, TEXT_ENCODER_TARGETS, rank, std, generator)
    tensors: dict[str, torch.Tensor] = {}
    for part, state in parts.items():
        for key, tensor in state.items():
            if lora_format == "diffusers":
                tensors[f"{part}.{key}"] = tensor.contiguous()
            elif lora_format == "peft":  # PEFT save_pretrained naming (text-encoder modules start text_model.)
                tensors[f"base_model.model.{key}"] = tensor.contiguous()
            else:  # kohya / Civitai naming: lora_unet_<module>.lora_down.weight, lora_up, alpha
                module_name, which = key.rsplit(".lora_", 1)
                kohya = _kohya_name("lora_unet" if part == "unet" else "lora_te", module_name)
                tensors[f"{kohya}.{'lora_down' if which.startswith('A') else 'lora_up'}.weight"] = tensor.contiguous()
                tensors[f"{kohya}.alpha"] = torch.tensor(float(rank))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt", "harness_lora_format": lora_format})
    os.replace(tmp, path)
    return path


def build_tiny_testbed(folder: str | Path) -> dict[str, Any]:
    """Pipeline + one random LoRA per ComposLoRA-style slot: a runnable testbed with no training."""
    folder = Path(folder)
    pipeline = build_tiny_pipeline(folder / "base")
    manifest: dict[str, list[dict[str, Any]]] = {}
    concepts = [("character", ["zqx girl", "blue hair"]), ("character", ["vrk boy", "spiky hair"]),
                ("clothing", ["jvk uniform", "red tie"]), ("style", ["plv style", "ink wash"]),
                ("background", ["wqz forest"]), ("object", ["kxm umbrella"])]
    for index, (category, trigger) in enumerate(concepts):
        entries = manifest.setdefault(category, [])
        lora_id = f"{category}_{len(entries) + 1}"
        lora_path = folder / "lora" / f"{lora_id}.safetensors"
        if not lora_path.exists():
            write_random_lora(pipeline, lora_path, seed=index + 1, lora_format=LORA_FORMATS[index % 3])
        entries.append({"id": lora_id, "name": trigger[0], "trigger": trigger, "url": ""})
    atomic_write_json(folder / "lora_info.json", manifest)
    return manifest

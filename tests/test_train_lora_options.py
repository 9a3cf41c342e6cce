"""The train-lora options users of kohya_ss / diffusers' DreamBooth-LoRA script expect: LoRA files every N steps
with validation images, learning-rate schedulers, kohya export, gradient checkpointing, and clear refusals of
mixed precision on CPU and of 8-bit Adam without bitsandbytes; plus the data warnings (--strict)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import harness  # noqa: F401  (before diffusers)
from training_support import EXAMPLES, one_thread, pattern_image, tiny_base  # noqa: F401  (fixtures)
from harness.lora import LoraSpec, load_adapter
from harness.pipelines import load_pipeline
from harness.train_lora import fit_lora, main, step_file, train_lora
from harness.training import TrainingInputError
from harness.training.config import LoraTrainingConfig
from harness.training.dataset import example_problems, load_examples
from harness.training.lora_file import read_lora_metadata
from harness.training.validation import grid_path, validation_folder

QUICK = dict(resolution=32, batch_size=2, device="cpu", progress=False, rank=4, learning_rate=1e-2)




def test_save_every_keeps_files_named_by_step_and_a_validation_grid(tiny_base, tmp_path):
    out = tmp_path / "zqx.safetensors"
    train_lora(tiny_base, EXAMPLES, out, steps=6, save_every=2, validation_prompts=["zqx toy", "a picture"],
               validation_sampling_steps=2, metadata={"trigger": "zqx"}, **QUICK)
    assert out.is_file()
    assert sorted(p.name for p in tmp_path.glob("zqx-step*.safetensors")) == [
        "zqx-step000002.safetensors", "zqx-step000004.safetensors"]  # the last step is the final file itself
    assert step_file(out, 4) == tmp_path / "zqx-step000004.safetensors"
    metadata = read_lora_metadata(step_file(out, 2))
    assert metadata["trigger"] == "zqx" and json.loads(metadata["saved_at_step"]) == 2
    images = sorted(p.name for p in validation_folder(out).iterdir())
    assert images == [f"step{step:06d}_p{p}.png" for step in (2, 4, 6) for p in (0, 1)]
    with Image.open(grid_path(out)) as grid:  # rows: 3 saved steps; columns: 2 prompts
        assert grid.height > 3 * 100 and grid.width > 2 * 100


def test_intermediate_file_equals_a_run_stopped_there(tiny_base, tmp_path):
    from safetensors.torch import load_file

    train_lora(tiny_base, EXAMPLES, tmp_path / "long.safetensors", steps=4, save_every=2, **QUICK)
    train_lora(tiny_base, EXAMPLES, tmp_path / "short.safetensors", steps=2, **QUICK)
    saved, short = load_file(step_file(tmp_path / "long.safetensors", 2)), load_file(tmp_path / "short.safetensors")
    assert saved.keys() == short.keys()
    for key in saved:
        torch.testing.assert_close(saved[key], short[key], atol=0, rtol=0)


@pytest.mark.parametrize("scheduler", ["cosine", "linear", "constant_with_warmup"])
def test_lr_schedulers_follow_diffusers(tiny_base, scheduler):
    from diffusers.optimization import get_scheduler

    rates = []
    config = LoraTrainingConfig(steps=6, warmup_steps=2, lr_scheduler=scheduler, **QUICK)
    trained = fit_lora(tiny_base, EXAMPLES, config, on_step=lambda step, loss: rates.append(step))
    assert trained.record["lr_scheduler"] == scheduler
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    factors = get_scheduler(scheduler, optimizer, num_warmup_steps=2, num_training_steps=6).lr_lambdas[0]
    assert factors(0) == 0 and factors(2) == pytest.approx(1.0)  # what the trainer applies at each step


def test_unknown_scheduler_and_format_are_refused():
    with pytest.raises(TrainingInputError, match="lr_scheduler must be one of"):
        LoraTrainingConfig(lr_scheduler="onecycle")
    with pytest.raises(TrainingInputError, match="save_format must be one of"):
        LoraTrainingConfig(save_format="ckpt")


def test_decaying_schedule_checkpoint_cannot_be_extended(tiny_base, tmp_path):
    options = dict(lr_scheduler="cosine", checkpoint_dir=tmp_path / "ck", checkpoint_every=2, **QUICK)
    fit_lora(tiny_base, EXAMPLES, steps=2, **options)
    with pytest.raises(TrainingInputError, match="different settings"):
        fit_lora(tiny_base, EXAMPLES, steps=4, **options)


def _text_and_noise(pipe) -> tuple[torch.Tensor, torch.Tensor]:
    ids = pipe.tokenizer(["zqx toy"], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         return_tensors="pt").input_ids
    with torch.no_grad():
        states = pipe.text_encoder(ids)[0]
        latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
        return states, pipe.unet(latents, torch.tensor([500]), states).sample


def test_kohya_export_loads_through_harness_lora_and_reproduces_the_trained_model(tiny_base, tmp_path):
    from safetensors.torch import load_file

    trained = fit_lora(tiny_base, EXAMPLES, steps=3, train_text_encoder=True, alpha=2.0, save_format="kohya", **QUICK)
    kohya_file = trained.save(tmp_path / "k.safetensors")
    keys = list(load_file(kohya_file))
    assert any(k.startswith("lora_unet_down_blocks_") and k.endswith(".lora_down.weight") for k in keys)
    assert any(k.startswith("lora_te_text_model_encoder_layers_") and k.endswith(".lora_up.weight") for k in keys)
    assert any(k.endswith(".alpha") for k in keys)
    assert read_lora_metadata(kohya_file)["ss_network_alpha"] == "2.0"

    pipe = load_pipeline(tiny_base, scheduler="default", device="cpu")
    spec = LoraSpec("k", "k", "character", ("zqx",), Path(kohya_file))
    report = load_adapter(pipe, spec)  # harness.lora: what the runner loads LoRAs with
    assert report["layers_applied"] == report["layers_in_file"]
    pipe.set_adapters(["k"])
    # alpha (2) != rank (4): the kohya file carries alpha per module, so the loaded model is the trained one
    for loaded, expected in zip(_text_and_noise(pipe), _text_and_noise(trained.pipeline)):
        torch.testing.assert_close(loaded, expected, atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_gives_the_same_weights(tiny_base):
    from peft.utils import get_peft_model_state_dict

    plain = fit_lora(tiny_base, EXAMPLES, steps=2, train_text_encoder=True, **QUICK)
    checkpointed = fit_lora(tiny_base, EXAMPLES, steps=2, train_text_encoder=True, gradient_checkpointing=True,
                            **QUICK)
    for part in ("unet", "text_encoder"):
        a = get_peft_model_state_dict(plain.parts[part][0])
        b = get_peft_model_state_dict(checkpointed.parts[part][0])
        for key in a:
            torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_is_refused_on_cpu_with_a_clear_message(tiny_base, precision):
    with pytest.raises(TrainingInputError, match=r"mixed precision \(" + precision + r"\) on cpu.*--mixed-precision"):
        fit_lora(tiny_base, EXAMPLES, steps=1, mixed_precision=precision, **QUICK)


def test_8bit_adam_without_bitsandbytes_says_how_to_get_it(tiny_base, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_bitsandbytes(name, *args, **kwargs):
        if name == "bitsandbytes":
            raise ImportError("No module named 'bitsandbytes'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bitsandbytes)
    with pytest.raises(TrainingInputError, match="pip install bitsandbytes.*--optimizer adamw"):
        fit_lora(tiny_base, EXAMPLES, steps=1, optimizer="adamw8bit", **QUICK)


def test_cli_accepts_the_new_options(tiny_base, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for index in range(2):
        pattern_image(index).save(images / f"{index}.bmp")  # .bmp is read like the others
    out = tmp_path / "cli.safetensors"
    code = main(["--base", str(tiny_base), "--images", str(images), "--trigger", "zqx", "--out", str(out),
                 "--steps", "2", "--resolution", "32", "--batch-size", "1", "--device", "cpu", "--no-progress",
                 "--lr-scheduler", "cosine", "--save-every", "1", "--save-format", "kohya",
                 "--gradient-checkpointing"])
    assert code == 0, capsys.readouterr().err
    assert step_file(out, 1).is_file()
    metadata = read_lora_metadata(out)
    assert metadata["lr_scheduler"] == "cosine" and "ss_network_dim" in metadata


# ---- data warnings (issue 29 item 5) ------------------------------------------------------------------------

def _folder(tmp_path: Path, captions: dict[str, str | None], size: tuple[int, int] = (64, 64)) -> Path:
    folder = tmp_path / "data"
    folder.mkdir(exist_ok=True)
    for index, (stem, caption) in enumerate(captions.items()):
        pattern_image(index, size).save(folder / f"{stem}.png")
        if caption is not None:
            (folder / f"{stem}.txt").write_text(caption)
    return folder


def test_caption_without_the_inferred_trigger_is_reported(tmp_path):
    folder = _folder(tmp_path, {"a": "zqx, smiling", "b": "zqx, outdoors", "c": "a man outdoors"})
    problems = example_problems(load_examples(folder), 32, None)
    assert len(problems) == 1 and "1 caption(s) lack the trigger 'zqx': c.png" in problems[0]


def test_small_and_wide_images_are_reported(tmp_path):
    folder = _folder(tmp_path, {"tiny": "zqx"}, size=(8, 8))
    pattern_image(9, (200, 30)).save(folder / "wide.png")
    (folder / "wide.txt").write_text("zqx")
    problems = example_problems(load_examples(folder), 32, "zqx")
    assert any("tiny.png is 8x8: upscaled 4.0x" in p for p in problems)
    assert any("wide.png is 200x30: the centre crop keeps 15%" in p for p in problems)


def test_strict_refuses_what_is_otherwise_a_warning(tiny_base, tmp_path, capsys):
    folder = _folder(tmp_path, {"a": "zqx, smiling", "b": "zqx, outdoors", "c": "a man outdoors"})
    argv = ["--base", str(tiny_base), "--images", str(folder), "--out", str(tmp_path / "o.safetensors"),
            "--steps", "1", "--resolution", "32", "--batch-size", "1", "--device", "cpu", "--no-progress"]
    assert main(argv + ["--strict"]) == 2
    assert "error: --strict: 1 caption(s) lack the trigger 'zqx'" in capsys.readouterr().err
    assert main(argv) == 0
    assert "warning: 1 caption(s) lack the trigger 'zqx'" in capsys.readouterr().err

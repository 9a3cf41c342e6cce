"""The LoRA trainer on the tiny random pipeline: learning, saving/loading, resuming, inputs, the options
(LoraTrainingConfig) and the CLI."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import harness  # noqa: F401  (before diffusers)
from training_support import EXAMPLES, one_thread, pattern_image, tiny_base  # noqa: F401  (fixtures)
from harness.pipelines import load_pipeline, model_identity
from harness.train_lora import build_parser, fit_lora, load_examples, main, train_lora
from harness.training import TrainingInputError
from harness.training.config import DEFAULT_UNET_TARGETS, LoraTrainingConfig, option, weight_options
from harness.training.dataset import open_rgb, resize_and_center_crop
from harness.training.lora_file import read_lora_metadata

QUICK = dict(resolution=32, batch_size=2, device="cpu", progress=False)




@pytest.fixture(scope="module")
def trained(tiny_base: Path):
    """One 30-step run on UNet (+ a conv target) and text encoder, alpha != rank, with its step losses."""
    losses: list[float] = []
    config = LoraTrainingConfig(rank=4, alpha=2.0, steps=30, learning_rate=1e-2,
                                unet_target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_in"],
                                train_text_encoder=True, **QUICK)
    result = fit_lora(tiny_base, EXAMPLES, config, on_step=lambda step, loss: losses.append(loss))
    return result, losses


def _fixed_inputs(pipe) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(123)
    latents = torch.randn(2, 4, 16, 16, generator=generator)
    ids = pipe.tokenizer(["zqx toy", "a plain picture"], padding="max_length",
                         max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
    return latents, torch.tensor([50, 700]), ids


@torch.no_grad()
def _outputs(pipe) -> tuple[torch.Tensor, torch.Tensor]:
    latents, timesteps, ids = _fixed_inputs(pipe)
    text_states = pipe.text_encoder(ids)[0]
    return text_states, pipe.unet(latents, timesteps, text_states).sample


@torch.no_grad()
def _denoising_loss(pipe) -> float:
    """MSE of the noise prediction on the training images at fixed noise and timesteps."""
    generator = torch.Generator().manual_seed(7)
    pixels = torch.stack([torch.from_numpy(np.asarray(image, np.float32) / 127.5 - 1).permute(2, 0, 1)
                          for image, _ in EXAMPLES])
    latents = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor
    latents = latents.repeat(4, 1, 1, 1)
    timesteps = torch.tensor([100, 300, 500, 800]).repeat_interleave(len(EXAMPLES))
    noise = torch.randn(latents.shape, generator=generator)
    from diffusers import DDPMScheduler

    noisy = DDPMScheduler.from_config(pipe.scheduler.config).add_noise(latents, noise, timesteps)
    ids = pipe.tokenizer(["zqx toy"] * len(latents), padding="max_length",
                         max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
    prediction = pipe.unet(noisy, timesteps, pipe.text_encoder(ids)[0]).sample
    return torch.nn.functional.mse_loss(prediction, noise).item()


def test_training_lowers_the_denoising_loss(trained):
    result, losses = trained
    assert len(losses) == 30 and all(np.isfinite(losses))
    trained_loss = _denoising_loss(result.pipeline)
    for module, _ in result.parts.values():
        module.disable_adapters()
    try:
        base_loss = _denoising_loss(result.pipeline)
    finally:
        for module, _ in result.parts.values():
            module.enable_adapters()
    assert trained_loss < 0.9 * base_loss
    assert np.mean(losses[-10:]) < np.mean(losses[:10])


def test_saved_file_loads_and_reproduces_the_trained_model(trained, tiny_base, tmp_path):
    result, _ = trained
    path = result.save(tmp_path / "zqx.safetensors", {"trigger": "zqx"})
    trained_text, trained_noise = _outputs(result.pipeline)

    pipe = load_pipeline(tiny_base, scheduler="default", device="cpu")
    base_text, base_noise = _outputs(pipe)
    pipe.load_lora_weights(str(path), adapter_name="zqx")
    pipe.set_adapters(["zqx"])
    loaded_text, loaded_noise = _outputs(pipe)

    assert not torch.allclose(trained_text, base_text, atol=1e-3)  # the text-encoder LoRA was trained ...
    assert not torch.allclose(trained_noise, base_noise, atol=1e-3)
    torch.testing.assert_close(loaded_text, trained_text, atol=1e-5, rtol=1e-5)  # ... saved and loaded
    # alpha (2) != rank (4): this only holds if the file carries alpha and diffusers applies it
    torch.testing.assert_close(loaded_noise, trained_noise, atol=1e-5, rtol=1e-5)

    metadata = read_lora_metadata(path)
    assert metadata["trigger"] == "zqx"
    assert json.loads(metadata["base_model"]) == model_identity(tiny_base)
    assert (int(metadata["rank"]), float(metadata["alpha"]), int(metadata["steps"])) == (4, 2.0, 30)
    assert "proj_in" in json.loads(metadata["unet_target_modules"])
    assert json.loads(metadata["train_text_encoder"]) is True
    assert metadata["harness_version"] == harness.__version__


def test_unet_only_lora_has_no_text_encoder_keys(tiny_base, tmp_path):
    from safetensors.torch import load_file

    path = train_lora(tiny_base, EXAMPLES[:2], tmp_path / "unet_only.safetensors", steps=1, **QUICK)
    keys = list(load_file(path))
    assert keys and all(key.startswith("unet.") for key in keys)
    assert {key.rsplit(".", 2)[-2] for key in keys} == {"lora_A", "lora_B"}


def test_resumed_run_equals_uninterrupted_run(tiny_base, tmp_path):
    from safetensors.torch import load_file

    # text encoder and flips on too: every trained part and every random draw has to resume exactly
    config = LoraTrainingConfig(steps=4, learning_rate=1e-2, checkpoint_dir=tmp_path / "ck", checkpoint_every=2,
                                seed=3, train_text_encoder=True, flip=True, **QUICK)
    straight = train_lora(tiny_base, EXAMPLES, tmp_path / "straight.safetensors", config,
                          checkpoint_dir=tmp_path / "ck_straight")

    class Crash(Exception):
        pass

    def crash_at_third_step(step: int, loss: float) -> None:
        if step == 2:  # after the step-2 checkpoint, before the step-4 one
            raise Crash

    with pytest.raises(Crash):
        train_lora(tiny_base, EXAMPLES, tmp_path / "resumed.safetensors", config, on_step=crash_at_third_step)
    assert not (tmp_path / "resumed.safetensors").exists()
    steps_run: list[int] = []
    resumed = train_lora(tiny_base, EXAMPLES, tmp_path / "resumed.safetensors", config,
                         on_step=lambda step, loss: steps_run.append(step))
    assert steps_run == [2, 3]
    straight_weights, resumed_weights = load_file(straight), load_file(resumed)
    assert straight_weights.keys() == resumed_weights.keys()
    assert any(key.startswith("text_encoder.") for key in straight_weights)
    for key in straight_weights:
        torch.testing.assert_close(resumed_weights[key], straight_weights[key], atol=0, rtol=0)

    with pytest.raises(TrainingInputError, match="different settings"):  # another run's checkpoint
        train_lora(tiny_base, EXAMPLES, tmp_path / "other.safetensors", config, seed=4)
    # operational options are not part of the run: another device name or checkpoint interval still resumes
    train_lora(tiny_base, EXAMPLES, tmp_path / "extended.safetensors", config, steps=5, device="cpu:0",
               checkpoint_every=1, on_step=lambda step, loss: steps_run.append(step))
    assert steps_run == [2, 3, 4]


def test_load_examples_captions_and_trigger(tmp_path):
    for name in ("b", "a", "c"):
        pattern_image(ord(name)).save(tmp_path / f"{name}.png")
    (tmp_path / "a.txt").write_text("a girl in a red coat\n")
    (tmp_path / "b.txt").write_text("zqx girl, smiling")
    (tmp_path / "notes.md").write_text("not an image")

    with pytest.raises(TrainingInputError, match="c.png"):  # c has no caption and there is no trigger
        load_examples(tmp_path)
    examples = load_examples(tmp_path, trigger="zqx girl")
    assert [path.name for path, _ in examples] == ["a.png", "b.png", "c.png"]
    assert [caption for _, caption in examples] == ["zqx girl, a girl in a red coat", "zqx girl, smiling",
                                                    "zqx girl"]
    templated = load_examples(tmp_path, trigger="zqx", caption_template="a photo of {trigger}")
    assert templated[2][1] == "a photo of zqx"


def test_load_examples_bad_folders(tmp_path):
    with pytest.raises(TrainingInputError, match="does not exist"):
        load_examples(tmp_path / "missing", trigger="x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainingInputError, match="no images"):
        load_examples(tmp_path / "empty", trigger="x")


def test_images_are_resized_and_centre_cropped(tmp_path):
    array = np.zeros((40, 80, 3), dtype=np.uint8)
    array[:, 20:60] = 255  # a white centre band 40 px wide: the centre crop of the 40x80 image
    square = resize_and_center_crop(open_rgb(Image.fromarray(array).convert("L")), 20)
    assert square.size == (20, 20) and square.mode == "RGB"
    assert np.asarray(square)[:, 2:-2].min() > 200
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(TrainingInputError, match="broken.png"):
        open_rgb(tmp_path / "broken.png")


def _write_images(folder: Path, count: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        pattern_image(index, size=(48, 40)).save(folder / f"img{index}.png")
    return folder


@pytest.mark.parametrize("problem", ["missing_folder", "no_images", "unreadable_image", "missing_base"])
def test_cli_bad_input_is_one_clear_error(problem, tiny_base, tmp_path, capsys):
    images, base = tmp_path / "images", tiny_base
    if problem == "missing_folder":
        images = tmp_path / "nowhere"
    elif problem == "no_images":
        images.mkdir()
    elif problem == "unreadable_image":
        _write_images(images)
        (images / "img1.png").write_bytes(b"\x89PNG truncated")
    else:
        _write_images(images)
        base = tmp_path / "no_such_model"
    code = main(["--base", str(base), "--images", str(images), "--trigger", "zqx", "--out",
                 str(tmp_path / "out.safetensors"), "--steps", "1", "--resolution", "32", "--device", "cpu",
                 "--no-progress"])
    error = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in error and "Fix" in error
    named = {"missing_folder": "nowhere", "no_images": "images", "unreadable_image": "img1.png",
             "missing_base": "no_such_model"}[problem]
    assert named in error
    assert not (tmp_path / "out.safetensors").exists()


def test_cli_trains_and_records_the_trigger(tiny_base, tmp_path, capsys):
    images = _write_images(tmp_path / "images")
    (images / "img0.txt").write_text("a red square")
    out = tmp_path / "lora" / "zqx.safetensors"
    code = main(["--base", str(tiny_base), "--images", str(images), "--trigger", "zqx toy", "--out", str(out),
                 "--steps", "2", "--rank", "2", "--resolution", "32", "--batch-size", "2", "--device", "cpu",
                 "--no-progress"])
    assert code == 0, capsys.readouterr().err
    metadata = read_lora_metadata(out)
    assert metadata["trigger"] == "zqx toy"
    assert json.loads(metadata["captions"]) == ["zqx toy", "zqx toy, a red square"]
    assert int(metadata["rank"]) == 2 and int(metadata["steps"]) == 2


def test_cli_min_snr_and_noise_offset_are_used_and_recorded(tiny_base, tmp_path, capsys):
    images = _write_images(tmp_path / "images")
    outputs = {}
    for name, extra in (("plain", []), ("weighted", ["--snr-gamma", "5", "--noise-offset", "0.1"])):
        outputs[name] = tmp_path / f"{name}.safetensors"
        code = main(["--base", str(tiny_base), "--images", str(images), "--trigger", "zqx", "--out",
                     str(outputs[name]), "--steps", "2", "--rank", "2", "--resolution", "32", "--batch-size", "2",
                     "--device", "cpu", "--no-progress", *extra])
        assert code == 0, capsys.readouterr().err
    plain, weighted = (read_lora_metadata(outputs[name]) for name in ("plain", "weighted"))
    assert json.loads(weighted["snr_gamma"]) == 5.0 and json.loads(weighted["noise_offset"]) == 0.1
    assert json.loads(plain["snr_gamma"]) is None and json.loads(plain["noise_offset"]) == 0.0
    assert weighted["final_loss"] != plain["final_loss"]  # the options change the training


def _lora_norms(trained, parts: tuple[str, ...] = ("unet", "text_encoder")) -> dict[str, float]:
    """Summed norms of the A and of the B matrices of ``parts``."""
    norms = {"lora_A": 0.0, "lora_B": 0.0}
    for module, _ in (trained.parts[part] for part in parts):
        for name, parameter in module.named_parameters():
            for kind in norms:
                if kind in name:
                    norms[kind] += parameter.detach().norm().item()
    return norms


def test_loraplus_trains_the_b_matrices_faster_and_is_recorded(tiny_base):
    runs = {ratio: fit_lora(tiny_base, EXAMPLES, rank=4, steps=5, learning_rate=1e-3, train_text_encoder=True,
                            loraplus_lr_ratio=ratio, **QUICK) for ratio in (None, 16.0)}
    plain, plus = (_lora_norms(runs[ratio]) for ratio in (None, 16.0))
    assert plus["lora_B"] > 4 * plain["lora_B"]  # B starts at zero: its size is what the steps added
    assert plus["lora_A"] == pytest.approx(plain["lora_A"], rel=0.05)  # A keeps the base learning rate
    assert runs[16.0].record["loraplus_lr_ratio"] == 16.0 and runs[None].record["loraplus_lr_ratio"] is None


def test_text_encoder_learning_rate_applies_to_the_text_encoder_only(tiny_base):
    runs = {rate: fit_lora(tiny_base, EXAMPLES, rank=4, steps=5, learning_rate=1e-3, train_text_encoder=True,
                           text_encoder_learning_rate=rate, **QUICK) for rate in (None, 1e-2)}
    text = {rate: _lora_norms(runs[rate], ("text_encoder",))["lora_B"] for rate in runs}
    unet = {rate: _lora_norms(runs[rate], ("unet",))["lora_B"] for rate in runs}
    assert text[1e-2] > 4 * text[None]
    assert unet[1e-2] == pytest.approx(unet[None], rel=0.2)  # same rate; only the gradients through the text differ
    assert runs[1e-2].record["text_encoder_learning_rate"] == 1e-2


def test_warmup_starts_the_learning_rates_near_zero(tiny_base):
    runs = {warmup: fit_lora(tiny_base, EXAMPLES, rank=4, steps=3, learning_rate=1e-3, train_text_encoder=True,
                             warmup_steps=warmup, **QUICK) for warmup in (0, 1000)}
    plain, warm = (_lora_norms(runs[warmup])["lora_B"] for warmup in (0, 1000))
    assert warm < 0.05 * plain  # rates of 1/1000 to 3/1000 of the peak
    assert runs[1000].record["warmup_steps"] == 1000


def test_timestep_range_limits_the_training_timesteps(tiny_base, monkeypatch):
    from diffusers import DDPMScheduler

    seen: list[int] = []
    add_noise = DDPMScheduler.add_noise

    def spy(self, latents, noise, timesteps):
        seen.extend(timesteps.tolist())
        return add_noise(self, latents, noise, timesteps)

    monkeypatch.setattr(DDPMScheduler, "add_noise", spy)
    trained = fit_lora(tiny_base, EXAMPLES, rank=2, steps=6, timestep_range=(700, 720), **QUICK)
    assert len(seen) == 12 and all(700 <= t < 720 for t in seen)
    assert trained.record["timestep_range"] == [700, 720]
    with pytest.raises(TrainingInputError, match="timestep range"):
        fit_lora(tiny_base, EXAMPLES, rank=2, steps=1, timestep_range=(0, 5000), **QUICK)
    with pytest.raises(TrainingInputError, match="timestep_range"):
        fit_lora(tiny_base, EXAMPLES, rank=2, steps=1, timestep_range=(10, 10), **QUICK)


@torch.no_grad()
def _empty_prompt_drift(pipe) -> float:
    """How far the pipeline's prediction for the empty prompt lies from the base model's (adapters off)."""
    latents, timesteps, _ = _fixed_inputs(pipe)
    ids = pipe.tokenizer([""] * len(latents), padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         return_tensors="pt").input_ids
    with_lora = pipe.unet(latents, timesteps, pipe.text_encoder(ids)[0]).sample
    pipe.unet.disable_adapters()
    pipe.text_encoder.disable_adapters()
    try:
        base = pipe.unet(latents, timesteps, pipe.text_encoder(ids)[0]).sample
    finally:
        pipe.unet.enable_adapters()
        pipe.text_encoder.enable_adapters()
    return torch.nn.functional.mse_loss(with_lora, base).item()


@pytest.mark.slow
def test_uncond_anchor_holds_the_empty_prompt_to_the_base_model(tiny_base):
    runs = {weight: fit_lora(tiny_base, EXAMPLES, rank=4, steps=20, learning_rate=1e-2, train_text_encoder=True,
                             uncond_anchor=weight, **QUICK) for weight in (0.0, 10.0)}
    plain, anchored = (_empty_prompt_drift(runs[weight].pipeline) for weight in (0.0, 10.0))
    assert plain > 0 and anchored < 0.5 * plain
    assert runs[10.0].record["uncond_anchor"] == 10.0 and runs[0.0].record["uncond_anchor"] == 0.0


def test_reported_losses_are_the_denoising_loss_without_the_anchor_term(tiny_base):
    seen: list[float] = []
    fit_lora(tiny_base, EXAMPLES, rank=4, steps=4, learning_rate=1e-2, train_text_encoder=True, uncond_anchor=1e7,
             on_step=lambda step, loss: seen.append(loss), **QUICK)
    assert max(seen) < 5  # a noise-prediction MSE; with the 1e7-weighted drift added it would be far larger


def _with_alpha(image: Image.Image, opaque: tuple[slice, slice] | None) -> Image.Image:
    """``image`` as RGBA, opaque in the ``opaque`` (rows, columns) box only (everywhere when None)."""
    alpha = np.full(image.size[::-1], 255 if opaque is None else 0, dtype=np.uint8)
    if opaque is not None:
        alpha[opaque] = 255
    return Image.fromarray(np.dstack([np.asarray(image), alpha]))


@pytest.mark.slow
def test_alpha_mask_weights_the_loss_by_the_alpha_channel(tiny_base):
    def losses(examples, alpha_mask):
        seen: list[float] = []
        result = fit_lora(tiny_base, examples, rank=2, steps=3, alpha_mask=alpha_mask,
                          on_step=lambda step, loss: seen.append(loss), **QUICK)
        return seen, result

    opaque = [(_with_alpha(image, None), caption) for image, caption in EXAMPLES]
    centre = [(_with_alpha(image, (slice(8, 24), slice(8, 24))), caption) for image, caption in EXAMPLES]
    plain, _ = losses(EXAMPLES, False)
    all_opaque, _ = losses(opaque, True)
    masked, result = losses(centre, True)
    unmasked_rgba, _ = losses(centre, False)  # without the option the alpha channel is ignored
    assert all_opaque == pytest.approx(plain, rel=1e-5)
    assert unmasked_rgba == pytest.approx(plain, rel=1e-5)
    assert masked != pytest.approx(plain, rel=1e-3)
    assert result.record["alpha_mask"] is True


def test_alpha_mask_needs_alpha_and_something_opaque(tiny_base):
    with pytest.raises(TrainingInputError, match="none of the training images has an alpha channel"):
        fit_lora(tiny_base, EXAMPLES, rank=2, steps=1, alpha_mask=True, **QUICK)
    clear = [(_with_alpha(EXAMPLES[0][0], (slice(0, 0), slice(0, 0))), "zqx toy")] + EXAMPLES[1:]
    with pytest.raises(TrainingInputError, match="number 0 .* fully transparent"):
        fit_lora(tiny_base, clear, rank=2, steps=1, alpha_mask=True, **QUICK)


def test_cli_alpha_mask_reads_rgba_files(tiny_base, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for index, (image, _) in enumerate(EXAMPLES):
        _with_alpha(image, (slice(4, 28), slice(4, 28))).save(images / f"{index}.png")
    out = tmp_path / "masked.safetensors"
    code = main(["--base", str(tiny_base), "--images", str(images), "--trigger", "zqx", "--out", str(out),
                 "--steps", "2", "--resolution", "32", "--device", "cpu", "--no-progress", "--alpha-mask"])
    assert code == 0, capsys.readouterr().err
    assert json.loads(read_lora_metadata(out)["alpha_mask"]) is True
    opaque = _write_images(tmp_path / "opaque")  # RGB files: nothing to mask with
    code = main(["--base", str(tiny_base), "--images", str(opaque), "--trigger", "zqx", "--out",
                 str(tmp_path / "none.safetensors"), "--steps", "1", "--resolution", "32", "--device", "cpu",
                 "--no-progress", "--alpha-mask"])
    error = capsys.readouterr().err
    assert code == 2 and "alpha channel" in error and "Fix" in error
    assert "Traceback" not in error and not (tmp_path / "none.safetensors").exists()


@pytest.mark.parametrize("setting, value", [("--snr-gamma", "0"), ("--noise-offset", "-0.1"),
                                            ("--loraplus-lr-ratio", "0.5"), ("--text-encoder-lr", "0"),
                                            ("--warmup-steps", "-1"), ("--uncond-anchor", "-1")])
def test_cli_bad_loss_settings_are_one_clear_error(setting, value, tiny_base, tmp_path, capsys):
    images = _write_images(tmp_path / "images")
    code = main(["--base", str(tiny_base), "--images", str(images), "--trigger", "zqx", "--out",
                 str(tmp_path / "out.safetensors"), "--steps", "1", "--resolution", "32", "--device", "cpu",
                 "--no-progress", setting, value])
    error = capsys.readouterr().err
    assert code == 2 and "Traceback" not in error and "Fix" in error
    assert setting.lstrip("-").replace("-", "_") in error
    assert not (tmp_path / "out.safetensors").exists()


# ---- the options: LoraTrainingConfig

def test_the_command_line_options_are_the_config_fields():
    parser = build_parser()
    data = ["--base", "model", "--images", "folder", "--out", "out.safetensors"]
    defaults = parser.parse_args(data)
    assert set(vars(defaults)) == {f.name for f in fields(LoraTrainingConfig)} | {
        "base", "images", "trigger", "caption_extension", "out", "threads", "strict"}
    assert LoraTrainingConfig.from_args(defaults) == LoraTrainingConfig()
    given = parser.parse_args(data + ["--lr", "0.01", "--text-encoder", "--unet-targets", "to_q", "proj_in",
                                      "--timestep-range", "300", "1000", "--snr-gamma", "5", "--no-resume",
                                      "--no-progress", "--checkpoint-dir", "ck", "--checkpoint-every", "10"])
    assert LoraTrainingConfig.from_args(given) == LoraTrainingConfig(
        learning_rate=0.01, train_text_encoder=True, unet_target_modules=("to_q", "proj_in"),
        timestep_range=(300, 1000), snr_gamma=5.0, resume=False, progress=False, checkpoint_dir="ck",
        checkpoint_every=10)


def test_a_new_config_field_becomes_a_command_line_option_and_is_recorded():
    @dataclass(frozen=True)
    class Extended(LoraTrainingConfig):
        new_knob: float = option(0.5, "a new knob", weights=True, fingerprint="unless_default")

    parser = argparse.ArgumentParser()
    Extended.add_arguments(parser)
    assert "a new knob" in parser.format_help()
    config = Extended.from_args(parser.parse_args(["--new-knob", "2"]))
    assert config.new_knob == 2.0
    assert config.record()["new_knob"] == 2.0 and config.fingerprint_settings()["new_knob"] == 2.0
    assert "new_knob" not in Extended().fingerprint_settings()  # added later: older checkpoints still resume


@pytest.mark.parametrize("setting, value, named", [
    ("rank", 0, "rank"), ("steps", -1, "steps"), ("batch_size", 0, "batch size"), ("resolution", 12, "resolution"),
    ("checkpoint_every", 5, "checkpoint_every needs a checkpoint_dir"), ("snr_gamma", 0.0, "snr_gamma"),
    ("noise_offset", -0.1, "noise_offset"), ("loraplus_lr_ratio", 0.5, "loraplus_lr_ratio"),
    ("text_encoder_learning_rate", 0.0, "text_encoder_lr"), ("timestep_range", (10, 10), "timestep_range"),
    ("warmup_steps", -1, "warmup_steps"), ("uncond_anchor", -1.0, "uncond_anchor"),
])
def test_an_invalid_option_is_refused_when_the_config_is_made(setting, value, named):
    with pytest.raises(TrainingInputError, match=f"{named}.*Fix"):
        LoraTrainingConfig(**{setting: value})
    with pytest.raises(TrainingInputError, match=named):  # a changed copy is checked again
        replace(LoraTrainingConfig(), **{setting: value})


def test_only_options_that_change_the_weights_change_the_fingerprint_and_the_record():
    base = LoraTrainingConfig(train_text_encoder=True, checkpoint_dir="ck")
    changed_values = {
        "rank": 4, "alpha": 2.0, "steps": 7, "learning_rate": 1e-3, "batch_size": 2, "resolution": 64,
        "train_text_encoder": False, "unet_target_modules": ("to_q",), "text_encoder_target_modules": ("q_proj",),
        "seed": 1, "flip": True, "snr_gamma": 5.0, "noise_offset": 0.1, "text_encoder_learning_rate": 1e-3,
        "timestep_range": (0, 500), "warmup_steps": 10, "alpha_mask": True, "uncond_anchor": 1.0,
        "loraplus_lr_ratio": 16.0, "lr_scheduler": "cosine", "optimizer": "adamw8bit", "mixed_precision": "bf16",
        "single_file_config": "config", "checkpoint_dir": "other", "checkpoint_every": 5, "resume": False,
        "device": "cpu", "progress": False, "gradient_checkpointing": True, "save_every": 10,
        "validation_prompts": ("zqx",), "validation_seed": 1, "validation_sampling_steps": 5,
        "validation_guidance": 3.0, "save_format": "kohya",
    }
    assert set(changed_values) == {f.name for f in fields(LoraTrainingConfig)}  # a new option needs a value here
    for name, value in changed_values.items():
        changed = replace(base, **{name: value})
        shapes_weights = name in weight_options()
        # steps is recorded but left out of the fingerprint, so that a finished run can be extended
        in_fingerprint = shapes_weights and name != "steps"
        assert (changed.fingerprint_settings() != base.fingerprint_settings()) == in_fingerprint, name
        assert (changed.record() != base.record()) == shapes_weights, name
    # options added after the committed files were trained are recorded only when set
    later = {"lr_scheduler", "optimizer", "mixed_precision"}
    assert set(weight_options()) - later == set(LoraTrainingConfig().record())
    assert later <= set(LoraTrainingConfig(lr_scheduler="cosine", optimizer="adamw8bit", mixed_precision="bf16",
                                           device="cuda").record())


def test_the_fingerprint_and_the_record_keep_the_keys_existing_files_carry():
    """Checkpoints and LoRA files written before LoraTrainingConfig existed still resume and read the same."""
    assert LoraTrainingConfig().fingerprint_settings() == {
        "rank": 8, "alpha": 8.0, "lr": 1e-4, "batch_size": 4, "resolution": 512,
        "unet_targets": list(DEFAULT_UNET_TARGETS), "text_targets": [], "seed": 0, "flip": False}
    every = LoraTrainingConfig(train_text_encoder=True, text_encoder_target_modules=["q_proj"], snr_gamma=5.0,
                               noise_offset=0.1, loraplus_lr_ratio=16.0, text_encoder_learning_rate=1e-3,
                               timestep_range=[300, 1000], warmup_steps=10, alpha_mask=True, uncond_anchor=1.0)
    assert every.fingerprint_settings() == {
        **LoraTrainingConfig().fingerprint_settings(), "text_targets": ["q_proj"], "snr_gamma": 5.0,
        "noise_offset": 0.1, "loraplus_lr_ratio": 16.0, "text_encoder_lr": 1e-3, "timestep_range": [300, 1000],
        "warmup_steps": 10, "alpha_mask": True, "uncond_anchor": 1.0}
    assert set(every.record()) == {
        "rank", "alpha", "steps", "learning_rate", "batch_size", "resolution", "unet_target_modules",
        "train_text_encoder", "text_encoder_target_modules", "seed", "flip", "snr_gamma", "noise_offset",
        "loraplus_lr_ratio", "text_encoder_learning_rate", "timestep_range", "warmup_steps", "alpha_mask",
        "uncond_anchor"}  # the options added later (lr_scheduler, optimizer, mixed_precision) only when set
    assert LoraTrainingConfig(text_encoder_learning_rate=1e-3).record()["text_encoder_learning_rate"] is None

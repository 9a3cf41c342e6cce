"""``harness.training.losses.denoising_loss``: targets per prediction type and Min-SNR weighting."""

from __future__ import annotations

import harness  # noqa: F401  (before diffusers)
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr

from harness.training.losses import denoising_loss

SD15 = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def _batch(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    shape = (4, 4, 8, 8)
    return (torch.randn(shape, generator=generator), torch.randn(shape, generator=generator),
            torch.randn(shape, generator=generator), torch.tensor([5, 200, 600, 990]))


def test_epsilon_target_is_the_noise_and_v_target_is_the_velocity():
    prediction, latents, noise, timesteps = _batch()
    epsilon = DDPMScheduler(**SD15)
    assert torch.isclose(denoising_loss(epsilon, prediction, latents, noise, timesteps), F.mse_loss(prediction, noise))
    v = DDPMScheduler(**SD15, prediction_type="v_prediction")
    velocity = v.get_velocity(latents, noise, timesteps)
    assert torch.isclose(denoising_loss(v, prediction, latents, noise, timesteps), F.mse_loss(prediction, velocity))
    # a perfect prediction has zero loss, so the targets really differ
    assert denoising_loss(v, velocity, latents, noise, timesteps) == 0
    assert denoising_loss(epsilon, velocity, latents, noise, timesteps) > 0


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights_down_weight_low_noise_steps(prediction_type):
    prediction, latents, noise, timesteps = _batch()
    scheduler = DDPMScheduler(**SD15, prediction_type=prediction_type)
    snr = compute_snr(scheduler, timesteps)
    expected_weights = torch.clamp(snr, max=5.0) / (snr + 1 if prediction_type == "v_prediction" else snr)
    target = noise if prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, timesteps)
    per_sample = ((prediction - target) ** 2).mean(dim=(1, 2, 3))
    loss = denoising_loss(scheduler, prediction, latents, noise, timesteps, snr_gamma=5.0)
    assert torch.isclose(loss, (per_sample * expected_weights).mean())
    assert expected_weights.max() <= 1
    if prediction_type == "epsilon":  # t=5 (SNR ~ 1000) counts far less than t=990
        assert expected_weights[0] < 0.1 < expected_weights[-1] == 1


def test_min_snr_epsilon_weight_is_finite_at_zero_terminal_snr():
    prediction, latents, noise, _ = _batch()
    scheduler = DDPMScheduler(**SD15, rescale_betas_zero_snr=True)
    timesteps = torch.tensor([0, 300, 700, 999])  # t=999 has SNR 0 here
    assert compute_snr(scheduler, timesteps)[-1] == 0
    assert torch.isfinite(denoising_loss(scheduler, prediction, latents, noise, timesteps, snr_gamma=5.0))


@pytest.mark.parametrize("snr_gamma", [None, 5.0])
def test_pixel_weights_average_the_error_over_the_weighted_pixels(snr_gamma):
    prediction, latents, noise, timesteps = _batch()
    scheduler = DDPMScheduler(**SD15)
    plain = denoising_loss(scheduler, prediction, latents, noise, timesteps, snr_gamma)
    ones = torch.ones(4, 1, 8, 8)
    assert torch.isclose(denoising_loss(scheduler, prediction, latents, noise, timesteps, snr_gamma, ones), plain)
    assert torch.isclose(denoising_loss(scheduler, prediction, latents, noise, timesteps, snr_gamma, 0.3 * ones),
                         plain)  # a weighted mean: the scale of the weights does not matter
    region = torch.zeros(4, 1, 8, 8)
    region[..., 2:5, 1:6] = 1.0
    # only the region's error counts: a prediction that is right there and wrong elsewhere has no loss
    mended = torch.where(region.bool().expand_as(prediction), noise, prediction)
    assert denoising_loss(scheduler, mended, latents, noise, timesteps, snr_gamma, region) == 0
    assert denoising_loss(scheduler, mended, latents, noise, timesteps, snr_gamma) > 0
    inside = ((prediction - noise) ** 2)[..., 2:5, 1:6].mean()
    assert torch.isclose(denoising_loss(scheduler, prediction, latents, noise, timesteps, None, region), inside)

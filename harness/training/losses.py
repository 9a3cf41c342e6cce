"""The denoising loss shared by base-model and LoRA training (as in diffusers' ``train_text_to_image.py``)."""

from __future__ import annotations

from typing import Any

import torch


def denoising_loss(noise_scheduler: Any, prediction: torch.Tensor, latents: torch.Tensor, noise: torch.Tensor,
                   timesteps: torch.Tensor, snr_gamma: float | None = None,
                   pixel_weights: torch.Tensor | None = None) -> torch.Tensor:
    """MSE between the UNet's ``prediction`` and its target: the noise, or v when the scheduler says so.

    With ``snr_gamma`` each sample is weighted by Min-SNR (Hang et al. 2023): min(SNR, gamma) / SNR for
    epsilon, min(SNR, gamma) / (SNR + 1) for v. The many easy low-noise steps then count less, and the budget
    goes to the high-noise steps where the caption decides colours and shapes. ``pixel_weights`` (N, 1, h, w)
    at latent resolution make each sample's error a weighted mean over its pixels (masked loss: a small
    concept region counts as much as a whole image).
    """
    from diffusers.training_utils import compute_snr

    v_prediction = noise_scheduler.config.prediction_type == "v_prediction"
    target = noise_scheduler.get_velocity(latents, noise, timesteps) if v_prediction else noise
    squared = (prediction.float() - target.float()) ** 2
    pixel_dims = tuple(range(1, prediction.ndim))
    if pixel_weights is None:
        per_sample = squared.mean(dim=pixel_dims)
    else:
        weights = pixel_weights.float().expand_as(squared)
        per_sample = (squared * weights).sum(dim=pixel_dims) / weights.sum(dim=pixel_dims).clamp(min=1e-8)
    if snr_gamma is None:
        return per_sample.mean()
    snr = compute_snr(noise_scheduler, timesteps)
    if v_prediction:
        weights = torch.clamp(snr, max=snr_gamma) / (snr + 1)
    else:  # min(SNR, gamma) / SNR -> 1 as SNR -> 0 (a zero-terminal-SNR step must not divide by zero)
        weights = torch.where(snr > 0, torch.clamp(snr, max=snr_gamma) / snr.clamp(min=1e-12), torch.ones_like(snr))
    return (per_sample * weights).mean()

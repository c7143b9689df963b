# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""The app's analyses of a model: the forward process q(x_t | x_0), the VAE's latent space, the signal-to-noise ratio
and the likelihood. The mathematics stays in the library: the forward process is the scheduler's `add_noise`, the
move to and from the latent space is `ddpm_plugin.latent`, the likelihood is `ddpm_plugin.likelihood.bits_per_dim`,
the signal-to-noise ratio is read off `alphas_cumprod_f64`."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..latent import images_to_latents, latents_to_images
from ..likelihood import bits_per_dim
from .render import latents_to_uint8, tensor_to_uint8

__all__ = ["encode_decode", "forward_process", "likelihood", "signal_to_noise_ratio"]


# ---------------------------------------------------------------------------------------------------- analyses
def signal_to_noise_ratio(scheduler) -> np.ndarray:
    """SNR(t) = alpha_bar_t / (1 - alpha_bar_t) for t = 0..T-1, from the scheduler's `alphas_cumprod` (Ho (4))."""
    alpha_bar = getattr(scheduler, "alphas_cumprod_f64", None)
    if alpha_bar is None:
        alpha_bar = scheduler.alphas_cumprod.double()
    alpha_bar = alpha_bar.numpy()
    return alpha_bar / (1.0 - alpha_bar)


@torch.no_grad()
def forward_process(pipe, x0: torch.Tensor, timestep: int, seed: int = 0) -> dict[str, Any]:
    """
    A draw of q(x_t | x_0), Ho (4), with the pipeline's scheduler (`add_noise`). For a latent pipeline the process runs
    on z_0 = s * E(x_0), as in training; the result is shown decoded, next to the noisy latent channels.

    Args:
        x0 (`torch.Tensor` of shape `(1, num_channels, height, width)`): the clean image in [-1, 1].
        timestep (`int`): t in [0, T).

    Returns:
        a dict with uint8 `x0`, `xt` `(1, height, width, num_channels)`, `latents` (uint8 noisy latent channels, or
        `None` for a pixel model), `alpha_bar` (float) and `snr` (float) at t.
    """
    scheduler = pipe.scheduler
    num_train = scheduler.config.num_train_timesteps
    if not 0 <= int(timestep) < num_train:
        raise ValueError(f"t={timestep} is out of range; this model's timesteps are 0..{num_train - 1}.")
    t = torch.tensor([int(timestep)])
    generator = torch.Generator().manual_seed(int(seed))
    vae = getattr(pipe, "vae", None)
    clean = images_to_latents(vae, x0, mode=True) if vae is not None else x0
    noise = torch.randn(clean.shape, generator=generator, dtype=clean.dtype)
    noisy = scheduler.add_noise(clean, noise, t)
    xt = latents_to_images(vae, noisy).clamp(-1, 1) if vae is not None else noisy
    alpha_bar = scheduler.alphas_cumprod_f64 if hasattr(scheduler, "alphas_cumprod_f64") else scheduler.alphas_cumprod
    return {
        "x0": tensor_to_uint8(x0),
        "xt": tensor_to_uint8(xt),
        "latents": latents_to_uint8(noisy) if vae is not None else None,
        "alpha_bar": float(alpha_bar[int(timestep)]),
        "snr": float(signal_to_noise_ratio(scheduler)[int(timestep)]),
    }


@torch.no_grad()
def encode_decode(pipe, x0: torch.Tensor) -> dict[str, Any]:
    """
    The VAE of a latent pipeline on images `(batch_size, num_channels, height, width)` in [-1, 1]: the latents
    z_0 = s * mean of q_phi(z | x) and the reconstruction decoder(z_0 / s).

    Returns:
        a dict with uint8 `x0`, `reconstruction`, `latents` (each channel stretched for display), the latent tensor
        `z0` and the latent `std` (about 1 when the scale s is right).
    """
    vae = getattr(pipe, "vae", None)
    if vae is None:
        raise ValueError(f"The latent space needs a latent model; this one is a {type(pipe).__name__}.")
    z0 = images_to_latents(vae, x0, mode=True)  # the posterior mean, deterministic
    recon = latents_to_images(vae, z0).clamp(-1, 1)
    return {
        "x0": tensor_to_uint8(x0),
        "reconstruction": tensor_to_uint8(recon),
        "latents": latents_to_uint8(z0),
        "z0": z0,
        "std": float(z0.float().std()),
    }


def likelihood(pipe, x0: torch.Tensor, num_timesteps: int | None = 100, seed: int = 0):
    """
    `ddpm_plugin.likelihood.bits_per_dim` of images `(batch_size, num_channels, height, width)` in [-1, 1] under the
    pipeline's model, with a fresh copy of its scheduler (the evaluation sets its own chain of timesteps).
    `num_timesteps=None` evaluates the full chain; fewer gives the strided bound.
    """
    num_train = pipe.scheduler.config.num_train_timesteps
    if num_timesteps is not None and not 1 <= int(num_timesteps) <= num_train:
        raise ValueError(f"num_timesteps={num_timesteps} is out of range; choose 1..{num_train} or the full chain.")
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    generator = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        return bits_per_dim(
            pipe.unet,
            scheduler,
            x0,
            vae=getattr(pipe, "vae", None),
            generator=generator,
            num_timesteps=None if num_timesteps is None else int(num_timesteps),
        )

# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""The frozen VAE of the latent model (docs/maths.md section 4): moving between pixels and the scaled latent space,
the latent scale s and the pixel decoder of the NLL bound.

- `images_to_latents` / `latents_from_posterior`: z_0 = s z, z ~ q_phi(z | x) (or its mode), [LAT1];
  `latents_to_images`: x = D(z_0 / s). The one home of this move for the library, the trainer and the app (the latent
  pipeline's `decode_latents` is the same line: its file is copied into Hub folders, which cannot import this module).
- `estimate_latent_scale`: s = 1 / std(z), z ~ q_phi(z | x) over the data (latent-diffusion's `scale_by_std`);
  `set_latent_scale` stores it in `vae.config.scaling_factor`, which the latent pipeline and `bits_per_dim` read.
- `fit_decoder_log_scale`: the scalar log-std of the discretized Gaussian p_psi(x | z) over the 256 pixel levels,
  centred on `vae.decode(z).sample`, by maximum likelihood; `set_decoder_log_scale` stores it in the vae's config
  (`_decoder_log_scale`: a private key, which `AutoencoderKL` keeps without an "unexpected config attribute"
  warning) and `get_decoder_log_scale` reads it back for `ddpm_plugin.likelihood.bits_per_dim`.
"""

from __future__ import annotations

import math

import torch

from ._utils import (
    DECODER_LOG_SCALE_KEY,
    check_batch_size,
    check_vae,
    decode_means,
    encode_moments,
    get_decoder_log_scale,
    get_latent_scale,
    placement,
    randn_float64,
)
from .likelihood import check_images, fit_discretized_log_scale

__all__ = [
    "DECODER_LOG_SCALE_KEY",
    "estimate_latent_scale",
    "fit_decoder_log_scale",
    "get_decoder_log_scale",
    "get_latent_scale",
    "images_to_latents",
    "latents_from_posterior",
    "latents_to_images",
    "set_decoder_log_scale",
    "set_latent_scale",
]


# ---------------------------------------------------------------------------------------------------- pixels <-> z_0
def latents_from_posterior(
    posterior, scale: float, generator: torch.Generator | None = None, *, mode: bool = False
) -> torch.Tensor:
    """z_0 = s z with z ~ q_phi(z | x) (`mode=True`: the posterior mean), docs/maths.md [LAT1]; `posterior` is a
    diffusers `DiagonalGaussianDistribution` (`vae.encode(x).latent_dist`, or one rebuilt from cached moments)."""
    z = posterior.mode() if mode else posterior.sample(generator=generator)
    return z * scale


def images_to_latents(
    vae,
    images: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    mode: bool = False,
    scale: float | None = None,
) -> torch.Tensor:
    """
    Pixels to the diffusion's data in latent space: z_0 = s E(x), docs/maths.md [LAT1].

    Args:
        vae ([`diffusers.AutoencoderKL`]): the frozen autoencoder.
        images (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`): in [-1, 1], on the vae's device.
        generator (`torch.Generator`, *optional*): the source of z ~ q_phi(z | x).
        mode (`bool`): take the posterior mean instead of a sample.
        scale (`float`, *optional*): s; defaults to `vae.config.scaling_factor` ([`get_latent_scale`]).

    Returns:
        `torch.Tensor` of shape `(batch_size, latent_channels, h, w)`, in the dtype of `images` (a bfloat16 VAE
        encodes a float32 batch, and the diffusion's arithmetic stays in float32).
    """
    scale = get_latent_scale(vae) if scale is None else scale
    posterior = vae.encode(images.to(vae.dtype)).latent_dist
    return latents_from_posterior(posterior, scale, generator, mode=mode).to(images.dtype)


def latents_to_images(vae, latents: torch.Tensor, *, scale: float | None = None) -> torch.Tensor:
    """
    The diffusion's latents back to pixels: x = D(z_0 / s), docs/maths.md [LAT1].

    Args:
        vae ([`diffusers.AutoencoderKL`]): the frozen autoencoder.
        latents (`torch.Tensor` of shape `(batch_size, latent_channels, h, w)`): z_0.
        scale (`float`, *optional*): s; defaults to `vae.config.scaling_factor` ([`get_latent_scale`]).

    Returns:
        `torch.Tensor` of shape `(batch_size, num_channels, height, width)`, about in [-1, 1] (not clamped), in the
        dtype of `latents`.
    """
    scale = get_latent_scale(vae) if scale is None else scale
    return vae.decode(latents.to(vae.dtype) / scale).sample.to(latents.dtype)


# ---------------------------------------------------------------------------------------------------- s and p_psi


@torch.no_grad()
def estimate_latent_scale(
    vae, images: torch.Tensor, batch_size: int = 64, generator: torch.Generator | None = None
) -> float:
    """
    s = 1 / std(z) over z ~ q_phi(z | x) for the given images (docs/maths.md [LAT1], latent-diffusion's
    `scale_by_std`): the std is taken over all latent elements of all images (around their mean), in float64.

    Args:
        vae ([`diffusers.AutoencoderKL`]): the frozen autoencoder; kept in its dtype and on its device.
        images (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`): training images in [-1, 1].
        batch_size (`int`): images per encoder call.
        generator (`torch.Generator`, *optional*): the source of the latent samples.

    Returns:
        `float`, the scale s; store it with [`set_latent_scale`].
    """
    check_vae(vae)
    check_batch_size(batch_size)
    x = check_images(images, on_grid=False)
    device, dtype = placement(vae, x)
    count, total, total_sq = 0, 0.0, 0.0
    for start in range(0, x.shape[0], batch_size):
        posterior = vae.encode(x[start : start + batch_size].to(device, dtype)).latent_dist
        z = posterior.sample(generator=generator).double()
        count += z.numel()
        total += float(z.sum())
        total_sq += float((z * z).sum())
    variance = (total_sq - total * total / count) / max(count - 1, 1)
    if not variance > 0:
        raise ValueError(f"the latents of these images have variance {variance!r}; s = 1 / std(z) is undefined.")
    return 1.0 / math.sqrt(variance)


def set_latent_scale(vae, scale: float) -> None:
    """Stores s in `vae.config.scaling_factor` (saved with the vae, read by the latent pipeline and bits_per_dim)."""
    check_vae(vae)
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale={scale!r} must be a positive finite number.")
    vae.register_to_config(scaling_factor=float(scale))


@torch.no_grad()
def fit_decoder_log_scale(
    vae, images: torch.Tensor, *, batch_size: int = 64, generator: torch.Generator | None = None
) -> float:
    """
    The scalar log-std of the pixel decoder p_psi(x | z) of the latent NLL bound (docs/maths.md [LAT2]): a discretized
    Gaussian over the 256 levels (Ho (13)) centred on `vae.decode(z).sample`, z ~ q_phi(z | x), fitted by maximum
    likelihood on `images` (a 1-D search).

    Args:
        vae ([`diffusers.AutoencoderKL`]): the frozen autoencoder.
        images (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`): 8-bit images scaled to [-1, 1].
        batch_size (`int`): images per encoder / decoder call.
        generator (`torch.Generator`, *optional*): the source of the latent samples.

    Returns:
        `float`, the log-std; store it with [`set_decoder_log_scale`].
    """
    check_vae(vae)
    check_batch_size(batch_size)
    x = check_images(images)
    mean, logvar = encode_moments(vae, x, batch_size)
    z = mean + torch.exp(0.5 * logvar) * randn_float64(mean.shape, generator, mean.device)
    return fit_discretized_log_scale(x, decode_means(vae, z, batch_size))


def set_decoder_log_scale(vae, log_scale: float) -> None:
    """Stores the pixel decoder's log-std in `vae.config._decoder_log_scale` (saved with the vae's config.json), so
    `bits_per_dim(..., vae=vae)` uses it instead of fitting one on the evaluated images."""
    check_vae(vae)
    if isinstance(log_scale, bool) or not isinstance(log_scale, int | float) or not math.isfinite(log_scale):
        raise ValueError(f"log_scale={log_scale!r} must be a finite number.")
    vae.register_to_config(**{DECODER_LOG_SCALE_KEY: float(log_scale)})

# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""The frozen VAE of the latent model (MATH.md section 4): the latent scale s and the pixel decoder of the NLL bound.

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

from .likelihood import (
    DECODER_LOG_SCALE_KEY,
    _placement,
    _randn,
    check_images,
    discretized_gaussian_log_likelihood,
    get_decoder_log_scale,
)

__all__ = [
    "estimate_latent_scale",
    "fit_decoder_log_scale",
    "get_decoder_log_scale",
    "get_latent_scale",
    "set_decoder_log_scale",
    "set_latent_scale",
]


def _check_vae(vae) -> None:
    if not hasattr(vae, "encode") or not hasattr(vae, "decode") or not hasattr(vae, "config"):
        raise ValueError(
            f"vae is a {type(vae).__name__}; it must be a diffusers.AutoencoderKL (with encode, decode and config)."
        )


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer.")


def get_latent_scale(vae) -> float:
    """s = `vae.config.scaling_factor`, checked to be a positive finite number (z_0 = s z)."""
    _check_vae(vae)
    scale = vae.config.get("scaling_factor", None) if hasattr(vae.config, "get") else None
    if scale is None or not math.isfinite(float(scale)) or float(scale) <= 0:
        raise ValueError(
            f"vae.config.scaling_factor={scale!r}; it must be a positive number (estimate it with "
            "ddpm_plugin.latent.estimate_latent_scale and store it with set_latent_scale)."
        )
    shift = vae.config.get("shift_factor", None)
    if shift not in (None, 0, 0.0):
        raise ValueError(
            f"vae.config.shift_factor={shift!r} is not supported: this package uses z_0 = s z (MATH.md section 4); "
            "set shift_factor to None."
        )
    return float(scale)


@torch.no_grad()
def _encode_moments(vae, images: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and log-variance of q_phi(z | x), each `(batch_size, latent_channels, h, w)` float64 on the vae's
    device; the vae keeps its dtype and device."""
    device, dtype = _placement(vae, images)
    means, logvars = [], []
    for start in range(0, images.shape[0], batch_size):
        chunk = images[start : start + batch_size].to(device, dtype)
        posterior = vae.encode(chunk).latent_dist
        means.append(posterior.mean.double())
        logvars.append(posterior.logvar.double())
    return torch.cat(means), torch.cat(logvars)


@torch.no_grad()
def _decode_means(vae, latents: torch.Tensor, batch_size: int) -> torch.Tensor:
    """`vae.decode(z).sample` in chunks, `(batch_size, num_channels, height, width)` float64."""
    device, dtype = _placement(vae, latents)
    out = [
        vae.decode(latents[start : start + batch_size].to(device, dtype)).sample.double()
        for start in range(0, latents.shape[0], batch_size)
    ]
    return torch.cat(out)


@torch.no_grad()
def _fit_log_scale(images: torch.Tensor, means: torch.Tensor, low: float = -12.0, high: float = 3.0) -> float:
    """
    Maximum-likelihood log-std of the discretized Gaussian p(x | mu) (Ho (13) over the 256 levels) with a single
    scalar scale: a grid search over [low, high] followed by a golden-section refinement of the best bracket.
    """
    images = images.to(means.device)

    def log_likelihood(log_scale: float) -> float:
        return float(discretized_gaussian_log_likelihood(images, means, log_scale).mean())

    grid = torch.linspace(low, high, 61).tolist()
    values = [log_likelihood(v) for v in grid]
    best = max(range(len(grid)), key=values.__getitem__)
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = log_likelihood(c), log_likelihood(d)
    while b - a > 1e-6:
        if fc > fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = log_likelihood(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = log_likelihood(d)
    return (a + b) / 2


@torch.no_grad()
def estimate_latent_scale(
    vae, images: torch.Tensor, batch_size: int = 64, generator: torch.Generator | None = None
) -> float:
    """
    s = 1 / std(z) over z ~ q_phi(z | x) for the given images (MATH.md section 4, latent-diffusion's
    `scale_by_std`): the std is taken over all latent elements of all images (around their mean), in float64.

    Args:
        vae ([`diffusers.AutoencoderKL`]): the frozen autoencoder; kept in its dtype and on its device.
        images (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`): training images in [-1, 1].
        batch_size (`int`): images per encoder call.
        generator (`torch.Generator`, *optional*): the source of the latent samples.

    Returns:
        `float`, the scale s; store it with [`set_latent_scale`].
    """
    _check_vae(vae)
    _check_batch_size(batch_size)
    x = check_images(images, on_grid=False)
    device, dtype = _placement(vae, x)
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
    _check_vae(vae)
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale={scale!r} must be a positive finite number.")
    vae.register_to_config(scaling_factor=float(scale))


@torch.no_grad()
def fit_decoder_log_scale(
    vae, images: torch.Tensor, *, batch_size: int = 64, generator: torch.Generator | None = None
) -> float:
    """
    The scalar log-std of the pixel decoder p_psi(x | z) of the latent NLL bound (MATH.md section 4): a discretized
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
    _check_vae(vae)
    _check_batch_size(batch_size)
    x = check_images(images)
    mean, logvar = _encode_moments(vae, x, batch_size)
    z = mean + torch.exp(0.5 * logvar) * _randn(mean.shape, generator, mean.device)
    return _fit_log_scale(x, _decode_means(vae, z, batch_size))


def set_decoder_log_scale(vae, log_scale: float) -> None:
    """Stores the pixel decoder's log-std in `vae.config._decoder_log_scale` (saved with the vae's config.json), so
    `bits_per_dim(..., vae=vae)` uses it instead of fitting one on the evaluated images."""
    _check_vae(vae)
    if isinstance(log_scale, bool) or not isinstance(log_scale, int | float) or not math.isfinite(log_scale):
        raise ValueError(f"log_scale={log_scale!r} must be a finite number.")
    vae.register_to_config(**{DECODER_LOG_SCALE_KEY: float(log_scale)})

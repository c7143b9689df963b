# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""Helpers shared by `ddpm_plugin.likelihood` and `ddpm_plugin.latent` (a private module: its names are public so that
no module imports another's private names; the user-facing homes are `latent` and `likelihood`).

- where a model runs (`placement`) and reproducible float64 noise (`randn_float64`);
- reading the frozen VAE: its checks, the latent scale s (`get_latent_scale`), the stored pixel-decoder log-std
  (`get_decoder_log_scale`), and the moments of q_phi(z | x) and the decoder means in float64, in chunks.
"""

from __future__ import annotations

import math

import torch

# the vae config key of the pixel decoder's log-std (private: AutoencoderKL keeps it without a warning)
DECODER_LOG_SCALE_KEY = "_decoder_log_scale"


def placement(module, fallback: torch.Tensor) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of a module's parameters; a parameterless (analytic) model gets the data's."""
    for p in module.parameters() if hasattr(module, "parameters") else ():
        if p.is_floating_point():
            return p.device, p.dtype
    return fallback.device, fallback.dtype if fallback.is_floating_point() else torch.float32


def randn_float64(shape, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Standard normal noise drawn in float32 on the generator's device (reproducible), as float64 on `device`."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=torch.float32).to(device, torch.float64)


def check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer.")


def check_vae(vae) -> None:
    if not hasattr(vae, "encode") or not hasattr(vae, "decode") or not hasattr(vae, "config"):
        raise ValueError(
            f"vae is a {type(vae).__name__}; it must be a diffusers.AutoencoderKL (with encode, decode and config)."
        )


def get_latent_scale(vae) -> float:
    """s = `vae.config.scaling_factor`, checked to be a positive finite number (z_0 = s z, docs/maths.md [LAT1])."""
    check_vae(vae)
    scale = vae.config.get("scaling_factor", None) if hasattr(vae.config, "get") else None
    if scale is None or not math.isfinite(float(scale)) or float(scale) <= 0:
        raise ValueError(
            f"vae.config.scaling_factor={scale!r}; it must be a positive number (estimate it with "
            "ddpm_plugin.latent.estimate_latent_scale and store it with set_latent_scale)."
        )
    shift = vae.config.get("shift_factor", None)
    if shift not in (None, 0, 0.0):
        raise ValueError(
            f"vae.config.shift_factor={shift!r} is not supported: this package uses z_0 = s z (docs/maths.md "
            "[LAT1]); set shift_factor to None."
        )
    return float(scale)


def get_decoder_log_scale(vae) -> float | None:
    """The pixel decoder's log-std stored by `ddpm_plugin.latent.set_decoder_log_scale` (`None` when there is none);
    VAEs saved by ddpm_plugin 0.1 stored it under the public key `decoder_log_scale`, which is read too."""
    config = getattr(vae, "config", None)
    if config is None or not hasattr(config, "get"):
        return None
    value = config.get(DECODER_LOG_SCALE_KEY, config.get("decoder_log_scale", None))
    return None if value is None else float(value)


@torch.no_grad()
def encode_moments(vae, images: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and log-variance of q_phi(z | x), each `(batch_size, latent_channels, h, w)` float64 on the vae's
    device; the vae keeps its dtype and device."""
    device, dtype = placement(vae, images)
    means, logvars = [], []
    for start in range(0, images.shape[0], batch_size):
        chunk = images[start : start + batch_size].to(device, dtype)
        posterior = vae.encode(chunk).latent_dist
        means.append(posterior.mean.double())
        logvars.append(posterior.logvar.double())
    return torch.cat(means), torch.cat(logvars)


@torch.no_grad()
def decode_means(vae, latents: torch.Tensor, batch_size: int) -> torch.Tensor:
    """`vae.decode(z).sample` in chunks, `(batch_size, num_channels, height, width)` float64."""
    device, dtype = placement(vae, latents)
    out = [
        vae.decode(latents[start : start + batch_size].to(device, dtype)).sample.double()
        for start in range(0, latents.shape[0], batch_size)
    ]
    return torch.cat(out)

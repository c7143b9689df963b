# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""A cheap approximate decoder for live previews: a linear map from latents to pixels fitted on the VAE.

Each output patch of `f x f` pixels (f = image size / latent size) is an affine function of the latent channels in a
`kernel_size x kernel_size` neighbourhood of its latent position: one small convolution and a pixel shuffle, about a
thousand times cheaper than the VAE decoder. The map is fitted once per VAE by least squares on pairs
`(z, vae.decode(z / s))` for a fixed-seed set of z ~ N(0, I): s = `scaling_factor` makes the scaled latents of the
data unit-variance, so N(0, I) matches their scale, and the same map serves every step of a run (early z0_hat are
blurry means, late ones data-like). The fit needs no data and no UNet call; it is cached per VAE object (shared by
copies of a pipeline) and is refitted when the latent shape changes.

This file imports nothing outside the standard library and torch: `save_for_hub` copies it next to the pipeline code of
a Hub repository.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["LatentToImageMap", "fit_latent_to_image_map", "latent_to_image_map_for"]

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # vae -> {key: LatentToImageMap}
_LOCK = threading.Lock()


@dataclass
class LatentToImageMap:
    """
    `z -> x ~ vae.decode(z / s)`: a `kernel_size x kernel_size` convolution from the latent channels to
    `num_channels * f * f` outputs, then a pixel shuffle by `f`.

    Args:
        weight (`torch.Tensor`): `(num_channels * factor**2, latent_channels, kernel_size, kernel_size)`, float32.
        bias (`torch.Tensor`): `(num_channels * factor**2,)`, float32.
        factor (`int`): pixels per latent position along each side.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    factor: int

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        """
        `(batch_size, latent_channels, h, w)` scaled latents -> `(batch_size, num_channels, h * f, w * f)` float32
        pixels in about [-1, 1] (not clamped).
        """
        weight, bias = self.weight.to(latents.device), self.bias.to(latents.device)
        out = F.conv2d(latents.float(), weight, bias, padding=weight.shape[-1] // 2)  # (B, C_out * f * f, h, w)
        return F.pixel_shuffle(out, self.factor)


@torch.no_grad()
def fit_latent_to_image_map(
    decode: Callable[[torch.Tensor], torch.Tensor],
    latent_shape: tuple[int, int, int],
    *,
    num_latents: int = 64,
    kernel_size: int = 3,
    seed: int = 0,
    batch_size: int = 32,
) -> LatentToImageMap:
    """
    Least-squares fit of a `LatentToImageMap` to `decode` (scaled latents -> pixels, e.g.
    `LatentDDPMPipeline.decode_latents`) on `num_latents` latents z ~ N(0, I) of shape `latent_shape`
    `(latent_channels, h, w)`, drawn from a generator seeded with `seed` (so the map is reproducible).
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size!r}.")
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn((num_latents, *latent_shape), generator=generator)
    features, targets = [], []
    factor = None
    for chunk in latents.split(batch_size):
        pixels = decode(chunk).float().cpu()  # (b, C_out, H, W)
        factor = pixels.shape[-1] // chunk.shape[-1]
        if pixels.shape[-2:] != (chunk.shape[-2] * factor, chunk.shape[-1] * factor):
            raise ValueError(
                f"the decoder maps latents of size {tuple(chunk.shape[-2:])} to images of size "
                f"{tuple(pixels.shape[-2:])}, not an integer multiple; no patch map fits it."
            )
        patches = F.pixel_unshuffle(pixels, factor)  # (b, C_out * f * f, h, w)
        columns = F.unfold(chunk, kernel_size, padding=kernel_size // 2)  # (b, C * k * k, h * w)
        features.append(columns.transpose(1, 2).reshape(-1, columns.shape[1]))  # (b * h * w, C * k * k)
        targets.append(patches.flatten(2).transpose(1, 2).reshape(-1, patches.shape[1]))  # (b * h * w, C_out*f*f)
    a = torch.cat(features).double()
    a = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype)], dim=1)  # the bias column
    solution = torch.linalg.lstsq(a, torch.cat(targets).double()).solution  # (C * k * k + 1, C_out * f * f)
    num_outputs = solution.shape[1]
    weight = solution[:-1].T.reshape(num_outputs, latent_shape[0], kernel_size, kernel_size)
    return LatentToImageMap(weight=weight.float().contiguous(), bias=solution[-1].float(), factor=factor)


def latent_to_image_map_for(
    vae: torch.nn.Module, decode: Callable[[torch.Tensor], torch.Tensor], latent_shape: tuple[int, int, int]
) -> LatentToImageMap:
    """The map of `vae` for latents of `latent_shape`, fitted with `decode` on first use and cached per VAE object."""
    key = (tuple(latent_shape), float(getattr(vae.config, "scaling_factor", 1.0)))
    with _LOCK:
        maps = _CACHE.setdefault(vae, {})
        if key not in maps:
            maps[key] = fit_latent_to_image_map(decode, latent_shape)
        return maps[key]

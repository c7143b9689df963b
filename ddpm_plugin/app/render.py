# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""Tensors and pipeline previews as small uint8 grids for the browser: image and latent conversions, the grid, the
preview renderer of `iter_previews`, the pipeline's image shape and a one-line model summary."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from diffusers.utils import make_image_grid
from PIL import Image

__all__ = [
    "PreviewRenderer",
    "images_to_uint8",
    "latents_to_display",
    "latents_to_uint8",
    "make_grid",
    "model_summary",
    "pipeline_image_shape",
    "tensor_to_uint8",
]


# ---------------------------------------------------------------------------------------------------- shapes
def pipeline_image_shape(pipe) -> tuple[int, int, int]:
    """(num_channels, height, width) of the pipeline's images in pixel space."""
    unet = pipe.unet.config
    size = unet.sample_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    vae = getattr(pipe, "vae", None)
    if vae is None:
        return unet.in_channels, height, width
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    return vae.config.in_channels, height * factor, width * factor


def model_summary(pipe) -> str:
    """One line describing a loaded pipeline."""
    channels, height, width = pipeline_image_shape(pipe)
    sched = pipe.scheduler.config
    kind = "latent" if getattr(pipe, "vae", None) is not None else "pixel"
    default_steps = pipe.config.get("default_num_inference_steps", None)
    text = (
        f"{type(pipe).__name__} ({kind}): {channels}x{height}x{width} images, T = {sched.num_train_timesteps} "
        f"({sched.beta_schedule}, {sched.prediction_type}, {sched.variance_type})"
    )
    if kind == "latent":
        unet = pipe.unet.config
        text += f", latents {unet.in_channels}x{unet.sample_size}x{unet.sample_size}"
    if default_steps is not None:
        text += f", default {default_steps} steps"
    return text


# ---------------------------------------------------------------------------------------------------- images
def images_to_uint8(images) -> np.ndarray:
    """
    Pipeline images -> uint8 `(batch_size, height, width, num_channels)`.

    Accepts a `np.ndarray` `(batch_size, height, width, num_channels)` in [0, 1], a `torch.Tensor`
    `(batch_size, num_channels, height, width)` in [0, 1], or a list of PIL images.
    """
    if isinstance(images, torch.Tensor):
        images = images.detach().float().cpu().permute(0, 2, 3, 1).numpy()
    elif isinstance(images, list | tuple):
        arrays = [np.asarray(im) for im in images]
        arrays = [a[:, :, None] if a.ndim == 2 else a for a in arrays]
        return np.stack(arrays).astype(np.uint8)
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images if images.ndim == 4 else images[..., None]
    if images.ndim == 3:
        images = images[..., None]
    return (np.clip(images, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def make_grid(images: np.ndarray, ncols: int | None = None, target_size: int = 256, gap: int = 1) -> np.ndarray:
    """
    Tiles uint8 images `(batch_size, height, width, num_channels)` in a grid with a `gap`-pixel grey border, then
    upscales it by the largest whole factor that keeps its longer side within `target_size` (nearest neighbour, so
    28-pixel digits stay crisp). Images with other than 1 or 3 channels are shown one channel per tile.

    Returns:
        uint8 `(grid_height, grid_width)` for grayscale or `(grid_height, grid_width, 3)`.
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    batch, height, width, channels = images.shape
    if channels not in (1, 3):  # e.g. latents: one tile per channel, a row per image
        images = images.transpose(0, 3, 1, 2).reshape(batch * channels, height, width, 1)
        ncols = ncols or channels
        batch, channels = batch * channels, 1
    ncols = max(1, min(ncols or math.ceil(math.sqrt(batch)), batch))
    nrows = math.ceil(batch / ncols)
    # each tile with its gap on the right and below, grey tiles filling the last row; the last gaps are cut off
    tiles = np.full((nrows * ncols, height + gap, width + gap, channels), 128, dtype=np.uint8)
    tiles[:batch, :height, :width] = images
    grid = make_image_grid(
        [Image.fromarray(tile[..., 0] if channels == 1 else tile) for tile in tiles], rows=nrows, cols=ncols
    )
    grid = np.asarray(grid)[: nrows * (height + gap) - gap, : ncols * (width + gap) - gap]  # (H', W', 3)
    scale = max(1, target_size // max(grid.shape[0], grid.shape[1]))
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    return grid[:, :, 0].copy() if channels == 1 else grid.copy()


def latents_to_uint8(latents: torch.Tensor) -> np.ndarray:
    """
    Latents `(batch_size, latent_channels, height, width)` -> uint8 `(batch_size, height, width, latent_channels)`,
    each channel of each image stretched to [0, 255] for display.
    """
    x = latents.detach().float().cpu()
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    x = (x - lo) / (hi - lo).clamp_min(1e-8)
    return (x * 255.0 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def latents_to_display(latents: torch.Tensor, bound: float = 3.0) -> np.ndarray:
    """
    Latents `(batch_size, latent_channels, height, width)` -> uint8 mosaics `(batch_size, rows * height,
    cols * width, 1)`, the channels of each latent side by side in a near-square block, on a fixed scale
    [-bound, bound] -> [0, 255] so that a stream of previews shows the noise turning into structure.
    """
    x = latents.detach().float().cpu().clamp(-bound, bound) / (2 * bound) + 0.5
    x = (x * 255.0 + 0.5).to(torch.uint8)  # (B, C, h, w)
    batch, channels, height, width = x.shape
    cols = math.ceil(math.sqrt(channels))
    rows = math.ceil(channels / cols)
    if rows * cols > channels:  # pad with mid-grey channels to fill the block
        x = torch.cat([x, torch.full((batch, rows * cols - channels, height, width), 128, dtype=torch.uint8)], 1)
    x = x.reshape(batch, rows, cols, height, width).permute(0, 1, 3, 2, 4)  # (B, rows, h, cols, w)
    return x.reshape(batch, rows * height, cols * width, 1).numpy()


class PreviewRenderer:
    """
    Turns the items of a pipeline's `iter_previews` into uint8 grids for the app, cheaply.

    Pixel pipelines run with `output_type="np"`: a preview is an array conversion and a grid. Latent pipelines run with
    `output_type="latent"`: the current z_t is shown as its latent channels, and x0_hat as the cheap approximate image
    of z0_hat (`DDPMPreview.approx_pred_original_sample`: a linear map from latents to pixels fitted on the VAE), so a
    preview never calls the VAE decoder. The final item is decoded with the VAE in one call: the output and its z0_hat
    where it differs.

    The trajectory strip shows up to `trajectory_frames` preview steps: for a pixel model the first image's x_t (top
    row) and x0_hat (bottom row), for a latent model its approximate x0_hat previews and the (decoded) output; decoding
    the frames with the VAE as well would cost about as much as the previews' grids together.
    """

    def __init__(self, pipe, target_size: int = 256, trajectory_frames: int = 8):
        self.pipe = pipe
        self.latent = getattr(pipe, "vae", None) is not None
        self.output_type = "latent" if self.latent else "np"
        self.target_size = target_size
        self.trajectory_frames = trajectory_frames
        self.frames: list[tuple[int, np.ndarray | None, np.ndarray]] = []  # (step, x_t, x0_hat) of the first image
        self._x0_grid: np.ndarray | None = None

    def _grid(self, images: np.ndarray, ncols: int | None = None, target_size: int | None = None) -> np.ndarray:
        return make_grid(images, ncols=ncols, target_size=target_size or self.target_size)

    def _decode(self, latents: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            x = self.pipe.decode_latents(latents)  # x = D(z / s), about [-1, 1]
        return tensor_to_uint8(x)

    def preview(self, item) -> tuple[np.ndarray, np.ndarray | None]:
        """(x_t grid, x0_hat grid or None) for a non-final item."""
        if not self.latent:
            xt = images_to_uint8(item.sample)
            x0 = None if item.pred_original_sample is None else images_to_uint8(item.pred_original_sample)
            if x0 is not None:
                self.frames.append((item.step, xt[0], x0[0]))
                self._x0_grid = self._grid(x0)
            return self._grid(xt), self._x0_grid
        if item.raw_pred_original_sample is not None:
            x0 = images_to_uint8(item.approx_pred_original_sample)  # no VAE call
            self._x0_grid = self._grid(x0)
            self.frames.append((item.step, None, x0[0]))
        return self._grid(latents_to_display(item.raw_sample)), self._x0_grid

    def _trajectory(self, frames: list) -> list:
        if len(frames) > self.trajectory_frames:
            index = np.linspace(0, len(frames) - 1, self.trajectory_frames).round().astype(int)
            frames = [frames[i] for i in sorted(set(index.tolist()))]
        return frames

    def final(self, item) -> dict[str, Any]:
        """
        Grids of the final item: `xt`, `x0`, `images` (the output), `trajectory` (or None), `trajectory_steps` and
        `trajectory_label`.
        """
        if self.latent:
            z0, n = item.raw_pred_original_sample, item.images.shape[0]
            same = z0 is not None and torch.equal(z0, item.images)  # the last DDPM / DDIM step returns z0_hat itself
            decoded = self._decode(item.images if z0 is None or same else torch.cat([item.images, z0]))  # one call
            images = decoded[:n]
            x0 = images if same else (decoded[n:] if z0 is not None else None)
            frames = self._trajectory(self.frames + [(item.step, None, images[0])])  # the previews, then the output
        else:
            images = images_to_uint8(item.images)
            x0 = None if item.pred_original_sample is None else images_to_uint8(item.pred_original_sample)
            frames = self._trajectory(self.frames)
        strip, label = None, ""
        if frames and self.latent:
            strip = self._grid(np.stack([f[2] for f in frames]), ncols=len(frames), target_size=96 * len(frames))
            label = "approximate x̂_0 (last: the output)"
        elif frames:
            tiles = np.stack([f[1] for f in frames] + [f[2] for f in frames])
            strip = self._grid(tiles, ncols=len(frames), target_size=96 * len(frames))
            label = "x_t (top) and x̂_0 (bottom)"
        grid = self._grid(images)
        return {
            "xt": grid,
            "x0": self._x0_grid if x0 is None else self._grid(x0),
            "images": grid,
            "trajectory": strip,
            "trajectory_steps": [f[0] for f in frames],
            "trajectory_label": label,
        }


def tensor_to_uint8(x: torch.Tensor) -> np.ndarray:
    """Images `(batch_size, num_channels, height, width)` in [-1, 1] -> uint8 `(batch_size, height, width, C)`."""
    return images_to_uint8((x.detach().float().cpu() / 2 + 0.5).clamp(0, 1))

# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""`DDPMPreview`: one item of a pipeline's step-preview iterator (`PixelDDPMPipeline.iter_previews`).

This file imports nothing outside the standard library, torch, numpy and PIL: `ddpm_plugin.save_for_hub` copies it
next to the pipeline code of a Hub repository.
"""

from dataclasses import dataclass
from typing import Any

__all__ = ["DDPMPreview"]


@dataclass
class DDPMPreview:
    """
    The state of a denoising run after some of its steps, as images ready to show.

    Images are of the run's `output_type`: a list of `PIL.Image.Image`, a `np.ndarray` of shape
    `(batch_size, height, width, num_channels)` in [0, 1], a `torch.Tensor` of shape
    `(batch_size, num_channels, height, width)` in [0, 1], or (latent pipeline, `output_type="latent"`) the raw latents
    `(batch_size, latent_channels, latent_height, latent_width)`.

    Args:
        step (`int`): number of denoising steps done so far (1-based; 0 only for a run interrupted before its first
            step).
        num_steps (`int`): number of steps of the full run.
        timestep (`int`): the timestep t of the last step done (x_t was the input of that step).
        sample (images): the current sample, i.e. the output x_{t_prev} of the last step (the latent pipeline decodes
            z_{t_prev} / s with the VAE). On the final item of a completed run this is the output, `images`.
        pred_original_sample (images or `None`): x0_hat of Ho (15) predicted at the last step, from the scheduler's
            `step()` output (the latent pipeline decodes z0_hat / s with the VAE). `None` on the final item of a run
            with `preview_every=0` (nothing is decoded that nobody asked for), on an item of a run interrupted before
            its first step, and for a scheduler that gives neither `pred_original_sample` nor `alphas_cumprod`.
        final (`bool`): this is the last item of the run (completed or interrupted).
        images (images or `None`): the output images of the run, set on the final item only. For an interrupted run
            these are the current (still noisy) sample, as in diffusers' pipelines.
    """

    step: int
    num_steps: int
    timestep: int
    sample: Any
    pred_original_sample: Any = None
    final: bool = False
    images: Any = None

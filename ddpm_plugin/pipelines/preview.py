# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""`DDPMPreview`: one item of a pipeline's step-preview iterator (`PixelDDPMPipeline.iter_previews`).

This file imports nothing outside the standard library, torch, numpy and PIL: `ddpm_plugin.save_for_hub` copies it
next to the pipeline code of a Hub repository.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["DDPMPreview"]

_IMAGE_FIELDS = ("sample", "pred_original_sample", "approx_sample", "approx_pred_original_sample")


class DDPMPreview:
    """
    The state of a denoising run after some of its steps, as images ready to show.

    Images are made on first access and then kept: a preview nobody looks at costs no decoding (the latent pipeline
    runs its VAE only for the fields that are read).

    Images are of the run's `output_type`: a list of `PIL.Image.Image`, a `np.ndarray` of shape
    `(batch_size, height, width, num_channels)` in [0, 1], a `torch.Tensor` of shape
    `(batch_size, num_channels, height, width)` in [0, 1], or (latent pipeline, `output_type="latent"`) the raw latents
    `(batch_size, latent_channels, latent_height, latent_width)`. `iter_previews(preview=...)` chooses what `sample`
    and `pred_original_sample` hold: `"full"` decoded images, `"approx"` the cheap approximation, `"latent"` the raw
    tensors.

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
        raw_sample, raw_pred_original_sample (`torch.Tensor`, *optional*): the tensors of the loop, x_{t_prev} and
            x0_hat (latents for the latent pipeline, pixels in about [-1, 1] for the pixel pipeline).
        render (`Callable`, *optional*): makes `sample` / `pred_original_sample` from the raw tensors when they were
            not given.
        render_approx (`Callable`, *optional*): makes `approx_sample` / `approx_pred_original_sample` (cheap images of
            the same kind as `sample`; for the latent pipeline a linear map from latents to pixels fitted on the VAE,
            see `latent_preview`); without it these are `sample` and `pred_original_sample`.
    """

    def __init__(
        self,
        step: int,
        num_steps: int,
        timestep: int,
        sample: Any = None,
        pred_original_sample: Any = None,
        final: bool = False,
        images: Any = None,
        *,
        raw_sample: Any = None,
        raw_pred_original_sample: Any = None,
        render: Callable[[Any], Any] | None = None,
        render_approx: Callable[[Any], Any] | None = None,
    ):
        self.step = step
        self.num_steps = num_steps
        self.timestep = timestep
        self.final = final
        self.images = images
        self.raw_sample = raw_sample
        self.raw_pred_original_sample = raw_pred_original_sample
        self._render = render
        self._render_approx = render_approx
        self._values: dict[str, Any] = {}
        if sample is not None or render is None:
            self._values["sample"] = sample
        if pred_original_sample is not None or render is None:
            self._values["pred_original_sample"] = pred_original_sample

    def _get(self, name: str) -> Any:
        if name not in self._values:
            approx = name.startswith("approx_")
            raw = getattr(self, "raw_" + name.removeprefix("approx_"))
            if approx and self._render_approx is None:
                value = getattr(self, name.removeprefix("approx_"))
            else:
                value = None if raw is None else (self._render_approx if approx else self._render)(raw)
            self._values[name] = value
        return self._values[name]

    @property
    def sample(self) -> Any:
        return self._get("sample")

    @sample.setter
    def sample(self, value: Any) -> None:
        self._values["sample"] = value

    @property
    def pred_original_sample(self) -> Any:
        return self._get("pred_original_sample")

    @pred_original_sample.setter
    def pred_original_sample(self, value: Any) -> None:
        self._values["pred_original_sample"] = value

    @property
    def approx_sample(self) -> Any:
        """Cheap images of x_{t_prev} (latent pipeline: the fitted linear map instead of the VAE)."""
        return self._get("approx_sample")

    @property
    def approx_pred_original_sample(self) -> Any:
        """Cheap images of x0_hat (latent pipeline: the fitted linear map instead of the VAE): a live preview."""
        return self._get("approx_pred_original_sample")

    def __repr__(self) -> str:
        made = [name for name in _IMAGE_FIELDS if name in self._values]
        return (
            f"DDPMPreview(step={self.step}, num_steps={self.num_steps}, timestep={self.timestep}, final={self.final}, "
            f"made={made})"
        )

# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""`PixelDDPMPipeline`: unconditional DDPM sampling in pixel space (Ho et al. 2020, Algorithm 2), with step previews.

This file imports nothing outside the standard library, torch and diffusers (plus its sibling modules, imported
relatively and directly, as diffusers' remote-code loader copies only direct relative imports): `save_for_hub`
copies it into a Hub repository, where `ddpm_plugin` is not installed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.models.modeling_utils import ModelMixin
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import replace_example_docstring

from .pipeline_ddpm_base import DDPMBasePipeline
from .preview import DDPMPreview
from .samplers import SAMPLERS  # noqa: F401 (a direct import, so that save_for_hub and diffusers copy it)

__all__ = ["PixelDDPMPipeline"]

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from ddpm_plugin import DDPMUNet2DModel, GaussianDDPMScheduler, PixelDDPMPipeline

        >>> unet = DDPMUNet2DModel(
        ...     sample_size=8, in_channels=1, model_channels=8, channel_mult=(1, 2), norm_num_groups=4,
        ...     attention_resolutions=(),
        ... )  # untrained: the images are noise; use `PixelDDPMPipeline.from_pretrained(folder)` for a trained one
        >>> pipe = PixelDDPMPipeline(unet=unet, scheduler=GaussianDDPMScheduler(num_train_timesteps=50))
        >>> images = pipe(batch_size=4, generator=torch.Generator().manual_seed(0), num_inference_steps=20).images
        >>> len(images), images[0].size
        (4, (8, 8))
        >>> for preview in pipe.iter_previews(num_inference_steps=20, preview_every=5, output_type="np"):
        ...     print(preview.step, preview.timestep, preview.pred_original_sample.shape, preview.final)
        5 30 (1, 8, 8, 1) False
        10 20 (1, 8, 8, 1) False
        15 10 (1, 8, 8, 1) False
        20 0 (1, 8, 8, 1) True

        ```
"""


class PixelDDPMPipeline(DDPMBasePipeline):
    r"""
    Unconditional image generation with the DDPM reverse process in pixel space: x_T ~ N(0, I), then
    x_{t-1} ~ p_theta(x_{t-1} | x_t) down to x_0 (Ho et al. Algorithm 2), images `(x_0 + 1) / 2` in [0, 1].

    Inference only. Any diffusers scheduler can be swapped in, e.g.
    `pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)`.

    Parameters:
        unet ([`ModelMixin`]): the noise predictor eps_theta(x_t, t), a `DDPMUNet2DModel` (or a
            `diffusers.UNet2DModel`); `unet.config.sample_size` and `in_channels` fix the image shape.
        scheduler ([`SchedulerMixin`]): a `GaussianDDPMScheduler` or any diffusers scheduler.
        default_num_inference_steps (`int`, defaults to 1000): the number of steps when a call passes none; saved in
            `model_index.json`. Capped at `scheduler.config.num_train_timesteps` at call time.
        default_sampler (`str`, defaults to `"ddpm"`): the sampler of a call that passes no `sampler` and has not
            had `pipe.scheduler` swapped, one of `samplers.SAMPLERS` (`"ddpm"`: the scheduler component itself,
            respaced for fewer steps; the others are built from its config for each run); saved in
            `model_index.json`.
    """

    model_cpu_offload_seq = "unet"

    def __init__(
        self,
        unet: ModelMixin,
        scheduler: SchedulerMixin,
        default_num_inference_steps: int = 1000,
        default_sampler: str = "ddpm",
    ):
        super().__init__()
        self._check_default_num_inference_steps(default_num_inference_steps)
        self._check_default_sampler(default_sampler)
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(
            default_num_inference_steps=default_num_inference_steps, default_sampler=default_sampler
        )
        self._remember_scheduler_component()

    def _latent_shape(self, batch_size: int) -> tuple[int, int, int, int]:
        height, width = self._sample_size()
        return (batch_size, self.unet.config.in_channels, height, width)

    def _postprocess(self, *samples: torch.Tensor | None, output_type: str) -> tuple[Any, ...]:
        """x in [-1, 1] -> images in [0, 1] of `output_type`, for each of `samples` (`None` stays `None`)."""
        return tuple(
            None if s is None else self._samples_to_images(s, output_type, self.numpy_to_pil) for s in samples
        )

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        batch_size: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[Any, int, int, dict], dict]
        | PipelineCallback
        | MultiPipelineCallbacks
        | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 (diffusers' signature)
        sampler: str | None = None,
    ) -> ImagePipelineOutput | tuple:
        r"""
        Generates images.

        Args:
            batch_size (`int`, defaults to 1): number of images.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): the random source; the same seed
                gives the same images. With one generator per image, image `i` depends on `generator[i]` only (so
                batch size 1 and N give the same first image). Pass CPU generators for device-independent results.
            num_inference_steps (`int`, *optional*): number of denoising steps; `None` uses
                `pipe.config.default_num_inference_steps` (capped at the scheduler's `num_train_timesteps`).
            output_type (`str`, defaults to `"pil"`): `"pil"` (list of `PIL.Image.Image`), `"np"` (`np.ndarray` of
                shape `(batch_size, height, width, num_channels)` in [0, 1]) or `"pt"` (`torch.Tensor` of shape
                `(batch_size, num_channels, height, width)` in [0, 1]).
            return_dict (`bool`, defaults to `True`): return an `ImagePipelineOutput` instead of a tuple.
            callback_on_step_end (`Callable`, *optional*): called after each step as
                `callback_on_step_end(pipe, i, t, callback_kwargs)` with `callback_kwargs` holding the tensors named in
                `callback_on_step_end_tensor_inputs`; it returns a dict whose `"latents"` replaces x_{t-1}. Setting
                `pipe._interrupt = True` in it stops the run after this step.
            callback_on_step_end_tensor_inputs (`list[str]`, defaults to `["latents"]`): tensors passed to the
                callback (`"latents"` is x_{t-1}).

            sampler (`str`, *optional*): the sampler of this call, one of `SAMPLERS` (`"ddpm"`, `"ddim"`, `"dpm"`,
                `"dpm-sde"`, `"euler-a"`), built from the config of the pipeline's DDPM scheduler. `None`:
                `pipe.scheduler` if the caller swapped it, else `pipe.config.default_sampler`.

        Examples:

        Returns:
            [`~pipelines.ImagePipelineOutput`] or `tuple`: the images (a tuple `(images,)` if `return_dict=False`).
        """
        images = self._run_to_end(
            batch_size=batch_size,
            generator=generator,
            num_inference_steps=num_inference_steps,
            output_type=output_type,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            sampler=sampler,
        )
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    @torch.no_grad()
    def iter_previews(
        self,
        batch_size: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int | None = None,
        preview_every: int = 1,
        output_type: str = "pil",
        callback_on_step_end: Callable[[Any, int, int, dict], dict]
        | PipelineCallback
        | MultiPipelineCallbacks
        | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 (diffusers' signature)
        sampler: str | None = None,
        preview: str | None = None,
    ) -> Iterator[DDPMPreview]:
        r"""
        Generates images step by step, yielding a [`DDPMPreview`] every `preview_every` steps.

        Each item holds the step count, the timestep, the current sample x_{t-1} and the predicted x0_hat of Ho (15)
        (free: it is the `pred_original_sample` of `scheduler.step`; no extra UNet call) as images of `output_type`.
        The last item has `final=True` and the output in `images`; it is the preview of the last step, so a run of
        `n` steps yields `ceil(n / preview_every)` items, and `preview_every=0` yields only the final item. Set
        `pipe._interrupt = True` (between items, or from `callback_on_step_end`) to stop at the next step: a final
        item with the current sample still follows. Closing the generator stops the run without a final item.

        `preview` chooses what the items' `sample` and `pred_original_sample` hold (made on first access, so an
        unread field costs nothing): `"full"` (default) and `"approx"` the images of `output_type`,
        `"latent"` the raw samples x in about [-1, 1].
        `approx_sample` / `approx_pred_original_sample` are always there. The final item's `images` are the output.

        The other arguments are those of `__call__`; the same arguments and seed give the same final images.
        """
        yield from self._denoise(
            batch_size=batch_size,
            generator=generator,
            num_inference_steps=num_inference_steps,
            preview_every=preview_every,
            output_type=output_type,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            sampler=sampler,
            preview=preview,
        )

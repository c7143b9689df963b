# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""`LatentDDPMPipeline`: DDPM sampling in the latent space of a frozen VAE (docs/maths.md [LAT1]), with step previews.

z_T ~ N(0, I) of the UNet's shape, DDPM reverse process down to z_0 (Ho et al. Algorithm 2), then
`x = vae.decode(z_0 / s).sample` with s = `vae.config.scaling_factor` (latent-diffusion's `scale_by_std`).

Previews decode the current z_t and the predicted z0_hat with the VAE only when their images are read; a cheap
approximate preview (`preview="approx"`, `DDPMPreview.approx_pred_original_sample`) maps the latents to pixels with a
small linear map fitted on the VAE (`latent_to_image_map`), and `output_type="latent"` shows the latents themselves.

This file imports nothing outside the standard library, torch and diffusers (plus its sibling modules, imported
relatively and directly): `save_for_hub` copies it into a Hub repository, where `ddpm_plugin` is not installed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.modeling_utils import ModelMixin
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import replace_example_docstring

from .latent_preview import LatentToImageMap, latent_to_image_map_for
from .pipeline_ddpm_base import DDPMBasePipeline
from .preview import DDPMPreview
from .samplers import SAMPLERS  # noqa: F401 (a direct import, so that save_for_hub and diffusers copy it)

__all__ = ["LatentDDPMPipeline"]

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from diffusers import AutoencoderKL
        >>> from ddpm_plugin import DDPMUNet2DModel, GaussianDDPMScheduler, LatentDDPMPipeline

        >>> vae = AutoencoderKL(
        ...     in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
        ...     up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=2,
        ...     norm_num_groups=4, sample_size=16,
        ... )  # 16x16 images <-> 2x8x8 latents; s = 1 / std(latents) goes in vae.config.scaling_factor
        >>> unet = DDPMUNet2DModel(
        ...     sample_size=8, in_channels=2, model_channels=8, channel_mult=(1, 2), norm_num_groups=4,
        ...     attention_resolutions=(),
        ... )  # untrained: the images are noise; use `LatentDDPMPipeline.from_pretrained(folder)` for a trained one
        >>> pipe = LatentDDPMPipeline(vae=vae, unet=unet, scheduler=GaussianDDPMScheduler(num_train_timesteps=50))
        >>> images = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=10).images
        >>> len(images), images[0].size
        (2, (16, 16))
        >>> final = list(pipe.iter_previews(num_inference_steps=10, preview_every=5, output_type="np"))[-1]
        >>> final.step, final.final, final.images.shape
        (10, True, (1, 16, 16, 1))

        ```
"""


class LatentDDPMPipeline(DDPMBasePipeline):
    r"""
    Unconditional image generation with a DDPM in the latent space of a frozen `AutoencoderKL` (latent diffusion,
    docs/maths.md [LAT1]): z_T ~ N(0, I), DDPM reverse process to z_0, images `(vae.decode(z_0 / s).sample + 1) / 2`
    with s = `vae.config.scaling_factor`.

    Inference only. Any diffusers scheduler can be swapped in, e.g.
    `pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)`.

    Parameters:
        vae ([`AutoencoderKL`]): the frozen VAE; `vae.config.scaling_factor` is s = 1 / std(latents).
        unet ([`ModelMixin`]): the noise predictor eps_theta(z_t, t) in latent space (`DDPMUNet2DModel`);
            `unet.config.sample_size` and `in_channels` (= `vae.config.latent_channels`) fix the latent shape.
        scheduler ([`SchedulerMixin`]): a `GaussianDDPMScheduler` or any diffusers scheduler.
        default_num_inference_steps (`int`, defaults to 1000): the number of steps when a call passes none; saved in
            `model_index.json`. Capped at `scheduler.config.num_train_timesteps` at call time.
        default_sampler (`str`, defaults to `"ddpm"`): the sampler of a call that passes no `sampler` and has not
            had `pipe.scheduler` swapped, one of `samplers.SAMPLERS` (`"ddpm"`: the scheduler component itself,
            respaced for fewer steps; the others are built from its config for each run); saved in
            `model_index.json`.
    """

    model_cpu_offload_seq = "unet->vae"
    _output_types = ("pil", "np", "pt", "latent")

    def __init__(
        self,
        vae: AutoencoderKL,
        unet: ModelMixin,
        scheduler: SchedulerMixin,
        default_num_inference_steps: int = 1000,
        default_sampler: str = "ddpm",
    ):
        super().__init__()
        self._check_default_num_inference_steps(default_num_inference_steps)
        self._check_default_sampler(default_sampler)
        latent_channels = getattr(vae.config, "latent_channels", None)
        if latent_channels is not None and unet.config.in_channels != latent_channels:
            raise ValueError(
                f"unet.config.in_channels={unet.config.in_channels} must equal vae.config.latent_channels="
                f"{latent_channels}: the UNet denoises the VAE's latents."
            )
        self.register_modules(vae=vae, unet=unet, scheduler=scheduler)
        self.register_to_config(
            default_num_inference_steps=default_num_inference_steps, default_sampler=default_sampler
        )
        self._remember_scheduler_component()

    def _latent_shape(self, batch_size: int) -> tuple[int, int, int, int]:
        height, width = self._sample_size()
        return (batch_size, self.unet.config.in_channels, height, width)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """
        `(batch_size, latent_channels, h, w)` z_0 -> `(batch_size, num_channels, height, width)` x in about [-1, 1]:
        `vae.decode(z_0 / s).sample`, s = `vae.config.scaling_factor` (docs/maths.md [LAT1]).
        """
        latents = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
        return self.vae.decode(latents).sample

    def latent_to_image_map(self) -> LatentToImageMap:
        """
        The cheap approximate decoder of the previews: a linear map from latents to pixels fitted by least squares on
        `(z, decode_latents(z))` for fixed-seed z ~ N(0, I) (see `latent_preview`), fitted on first use (a few dozen
        VAE decodes) and cached per VAE object, so copies of the pipeline share it.
        """
        channels = self.unet.config.in_channels
        height, width = self._sample_size()
        with torch.no_grad():
            return latent_to_image_map_for(self.vae, self.decode_latents, (channels, height, width))

    def _approx_images(self, samples: torch.Tensor, output_type: str) -> Any:
        """Latents -> cheap images of `output_type` through `latent_to_image_map` (no VAE call)."""
        return self._samples_to_images(self.latent_to_image_map()(samples), output_type, self.numpy_to_pil)

    def _postprocess(self, *samples: torch.Tensor | None, output_type: str) -> tuple[Any, ...]:
        """Latents -> images of `output_type`, decoding all given latents in one VAE call (`None` stays `None`)."""
        if output_type == "latent":
            return samples
        present = [s for s in samples if s is not None]
        decoded = self.decode_latents(torch.cat(present))
        decoded = decoded.to(torch.promote_types(decoded.dtype, torch.float32))  # float32 images from a bf16 VAE
        decoded = iter(decoded.split([s.shape[0] for s in present]))
        return tuple(
            None if s is None else self._samples_to_images(next(decoded), output_type, self.numpy_to_pil)
            for s in samples
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
                shape `(batch_size, height, width, num_channels)` in [0, 1]), `"pt"` (`torch.Tensor` of shape
                `(batch_size, num_channels, height, width)` in [0, 1]) or `"latent"` (z_0, undecoded, of shape
                `(batch_size, latent_channels, latent_height, latent_width)`).
            return_dict (`bool`, defaults to `True`): return an `ImagePipelineOutput` instead of a tuple.
            callback_on_step_end (`Callable`, *optional*): called after each step as
                `callback_on_step_end(pipe, i, t, callback_kwargs)` with `callback_kwargs` holding the tensors named in
                `callback_on_step_end_tensor_inputs`; it returns a dict whose `"latents"` replaces z_{t-1}. Setting
                `pipe._interrupt = True` in it stops the run after this step.
            callback_on_step_end_tensor_inputs (`list[str]`, defaults to `["latents"]`): tensors passed to the
                callback (`"latents"` is z_{t-1}).

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

        Each item holds the step count, the timestep, the current sample and the predicted z0_hat of Ho (15) (free:
        the `pred_original_sample` of `scheduler.step`; no extra UNet call), both decoded with the VAE as
        `vae.decode(z / s)` into images of `output_type` (one batched VAE call per preview step, none on other
        steps; `output_type="latent"` yields the latents undecoded). The last item has `final=True` and the output in
        `images`; it is the preview of the last step, so a run of `n` steps yields `ceil(n / preview_every)` items,
        and `preview_every=0` yields only the final item. Set `pipe._interrupt = True` (between items, or from
        `callback_on_step_end`) to stop at the next step: a final item with the current sample still follows.
        Closing the generator stops the run without a final item.

        `preview` chooses what the items' `sample` and `pred_original_sample` hold (made on first access, so an
        unread field costs nothing): `"full"` images decoded with the VAE (default; one VAE call per
        field read), `"approx"` cheap images from a linear map of the latents fitted on the VAE (`latent_to_image_map`;
        about 14 dB PSNR against the VAE on the bundled model, for live previews), `"latent"` the latents undecoded
        (the default for `output_type="latent"`). Images are of `output_type`, `"pt"` for `output_type="latent"`.
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

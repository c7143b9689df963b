# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""The denoising loop shared by `PixelDDPMPipeline` and `LatentDDPMPipeline`, with step previews.

One loop, `DDPMBasePipeline._denoise`, is a generator: `__call__` consumes it without previews and `iter_previews`
hands its items to the caller. A preview costs no extra UNet call: x0_hat (Ho (15)) is the `pred_original_sample`
of `scheduler.step`; for schedulers whose step output lacks it (e.g. `DPMSolverMultistepScheduler`) it is computed
from the same model output and the scheduler's own `alphas_cumprod` (`_pred_original_sample_from_model_output`).

Loading reads safetensors only (`use_safetensors=True` unless the caller says otherwise), and a missing, truncated
or corrupted weight file raises an `OSError` naming that file.

This file imports nothing outside the standard library, torch, diffusers and safetensors (plus `.preview`): `save_for_hub` copies
it next to the pipeline code of a Hub repository, where `ddpm_plugin` is not installed.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor
from safetensors import safe_open

from .preview import DDPMPreview
from .samplers import check_sampler_name, make_sampler

__all__ = ["DDPMBasePipeline"]

PREVIEW_KINDS = ("full", "approx", "latent")

SAFETENSORS_WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"


class DDPMBasePipeline(DiffusionPipeline):
    """
    Base class of the DDPM pipelines: the shared denoising loop, step previews, safetensors-only loading.

    Subclasses provide `__init__` (registering `unet`, `scheduler`, ..., `default_num_inference_steps` and
    `default_sampler`, then calling `_remember_scheduler_component`), `_latent_shape(batch_size)`, `_output_types`,
    `_postprocess(*samples, output_type=...)` and, where previews can be cheaper than the output,
    `_approx_images(samples, output_type)`.

    Samplers: the scheduler component (`pipe.scheduler`, a DDPM scheduler) is what the model was trained with; a run
    samples with `sampler=` (one of `samplers.SAMPLERS`) if given, else with `pipe.scheduler` itself if the caller put
    another scheduler object there, else with `pipe.config.default_sampler` built from the component's config
    (`"ddpm"`: the component itself).

    Precision: the UNet (and VAE) may be in bf16 or fp16 (`from_pretrained(..., torch_dtype=...)`, `pipe.to(dtype)`);
    the latents, the noise and the scheduler's arithmetic stay in float32 (the UNet's input is cast to its dtype and
    its output back), so the same seed starts from the same x_T in every dtype and the schedule's precision is kept.
    """

    _callback_tensor_inputs = ["latents"]
    _output_types: tuple[str, ...] = ("pil", "np", "pt")

    # ------------------------------------------------------------------------------------------------ properties
    @property
    def interrupt(self) -> bool:
        """Set `pipe._interrupt = True` (e.g. from `callback_on_step_end`) to stop the run at the next step."""
        return getattr(self, "_interrupt", False)

    @property
    def num_timesteps(self) -> int:
        """Number of denoising steps of the current (or last) run."""
        return getattr(self, "_num_timesteps", 0)

    # ------------------------------------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):
        """
        `DiffusionPipeline.from_pretrained` that loads safetensors only (`use_safetensors=True` by default; passing
        `use_safetensors=False` explicitly allows pickle files) and names the file when a weight file is missing,
        truncated or corrupted (`OSError`).

        Works with a local folder written by `save_pretrained` or a Hub id (also offline, from the Hub cache, with
        `HF_HUB_OFFLINE=1`).
        """
        kwargs.setdefault("use_safetensors", True)
        try:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except Exception as error:
            problem = _diagnose_weight_files(cls, pretrained_model_name_or_path, kwargs)
            if problem is None:
                raise
            path, reason = problem
            raise OSError(
                f"Cannot load the pipeline from {str(pretrained_model_name_or_path)!r}: the weight file {path} {reason}."
                " Only safetensors weights are loaded; save the pipeline again with `save_pretrained` (or download "
                f"it again). Original error: {type(error).__name__}: {error}"
            ) from error

    # ------------------------------------------------------------------------------------------------ helpers
    def _remember_scheduler_component(self) -> None:
        """Records the registered scheduler object, so that a run can tell whether the caller swapped it."""
        self._scheduler_component = self.scheduler

    def _sampling_scheduler(self, sampler: str | None):
        """The scheduler of one run (see the class docstring): a fresh object unless it is the component itself."""
        component = getattr(self, "_scheduler_component", self.scheduler)
        if sampler is None:
            if self.scheduler is not component:
                return self.scheduler  # the caller's choice (`pipe.scheduler = DDIMScheduler.from_config(...)`)
            sampler = self.config.get("default_sampler", "ddpm")
        return make_sampler(sampler, component if sampler == "ddpm" else self.scheduler, self.unet.config)

    @staticmethod
    def _check_default_sampler(default_sampler: str) -> None:
        check_sampler_name(default_sampler, "default_sampler")

    def _approx_images(self, samples: torch.Tensor, output_type: str) -> Any:
        """Cheap preview images of `samples` (default: the output images themselves)."""
        (images,) = self._postprocess(samples, output_type=output_type)
        return images

    def _preview_renderers(self, preview: str, output_type: str) -> tuple[Callable, Callable]:
        """(render, render_approx) of `DDPMPreview` for a run's `preview` kind and `output_type`."""
        image_type = "pt" if output_type == "latent" else output_type

        def full(samples: torch.Tensor) -> Any:
            with torch.no_grad():
                return self._postprocess(samples, output_type=image_type)[0]

        def approx(samples: torch.Tensor) -> Any:
            with torch.no_grad():
                return self._approx_images(samples, image_type)

        render = {"full": full, "approx": approx, "latent": lambda samples: samples}[preview]
        return render, approx

    @staticmethod
    def _check_default_num_inference_steps(default_num_inference_steps: int) -> None:
        if (
            isinstance(default_num_inference_steps, bool)
            or not isinstance(default_num_inference_steps, int)
            or default_num_inference_steps < 1
        ):
            raise ValueError(
                f"default_num_inference_steps must be a positive integer, got {default_num_inference_steps!r}."
            )

    def _latent_shape(self, batch_size: int) -> tuple[int, ...]:
        raise NotImplementedError

    def _postprocess(self, *samples: torch.Tensor | None, output_type: str) -> tuple[Any, ...]:
        raise NotImplementedError

    def _sample_size(self) -> tuple[int, int]:
        """(height, width) of the UNet's samples (`unet.config.sample_size`, an int or a pair)."""
        size = self.unet.config.sample_size
        if isinstance(size, int):
            return size, size
        height, width = size
        return int(height), int(width)

    @staticmethod
    def _samples_to_images(samples: torch.Tensor, output_type: str, numpy_to_pil: Callable) -> Any:
        """
        Samples in [-1, 1] of shape `(batch_size, num_channels, height, width)` -> images in [0, 1] of `output_type`.
        """
        images = (samples / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            return images
        images = images.cpu().permute(0, 2, 3, 1).float().numpy()  # (B, H, W, C)
        if output_type == "np":
            return images
        return numpy_to_pil(images)

    def _prepare_extra_step_kwargs(
        self, generator: torch.Generator | list[torch.Generator] | None, scheduler: Any = None
    ) -> dict:
        """
        `generator` goes to `scheduler.step` only if its signature takes one (DDPM, DDIM and DPM-Solver do).

        A scheduler whose `step` takes `use_clipped_model_output` (DDIM) and clips or thresholds x0_hat gets `True`:
        the noise is then re-derived from the clipped x0_hat, as in the DDIM samplers of GLIDE and guided-diffusion,
        so that the update `sqrt(alpha_bar_prev) x0_hat + sqrt(1 - alpha_bar_prev - sigma^2) eps` stays consistent.
        diffusers' default (`False`) mixes a clipped x0_hat with the unclipped noise, which drifts over many steps:
        the bundled pixel model (clip_sample=True), DDIM 250 steps, 48 samples: 44% judged confidently with the
        default, 85% with `True`.
        """
        scheduler = self.scheduler if scheduler is None else scheduler
        parameters = inspect.signature(scheduler.step).parameters
        takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        kwargs = {}
        if "generator" in parameters or takes_kwargs:
            kwargs["generator"] = generator
        config = scheduler.config
        if "use_clipped_model_output" in parameters and (
            config.get("clip_sample", False) or config.get("thresholding", False)
        ):
            kwargs["use_clipped_model_output"] = True
        return kwargs

    def _pred_original_sample_from_model_output(
        self, model_output: torch.Tensor, timestep: torch.Tensor | int, sample: torch.Tensor, scheduler: Any = None
    ) -> torch.Tensor | None:
        """
        x0_hat for a scheduler whose `step()` output has no `pred_original_sample` (e.g. DPM-Solver), from the model
        output of the same step and the scheduler's `alphas_cumprod` (read, not recomputed):
        Ho (15) `x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)` for epsilon prediction,
        the output itself for sample prediction and `sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v` for v.

        Returns `None` when the scheduler has no `alphas_cumprod` or the timestep is not an integer index.

        This is docs/maths.md [PRED] as `GaussianDDPMScheduler.predict_original_sample` computes it, kept here because
        it reads the other scheduler's own (float32) `alphas_cumprod` rather than a float64 table, and because this
        file, copied into Hub repositories, may import only its sibling modules.
        """
        scheduler = self.scheduler if scheduler is None else scheduler
        alphas_cumprod = getattr(scheduler, "alphas_cumprod", None)
        t = float(timestep)
        if alphas_cumprod is None or not t.is_integer() or not 0 <= t < len(alphas_cumprod):
            return None
        channels = sample.shape[1]
        if model_output.shape[1] == 2 * channels:  # learned variance: prediction, then variance channels
            model_output = model_output[:, :channels]
        alpha_prod_t = torch.as_tensor(alphas_cumprod[int(t)], dtype=torch.float64).item()
        sqrt_alpha_prod, sqrt_one_minus_alpha_prod = alpha_prod_t**0.5, (1 - alpha_prod_t) ** 0.5
        prediction_type = getattr(scheduler.config, "prediction_type", "epsilon")
        if prediction_type == "epsilon":
            return (sample - sqrt_one_minus_alpha_prod * model_output) / sqrt_alpha_prod
        if prediction_type == "sample":
            return model_output
        if prediction_type == "v_prediction":
            return sqrt_alpha_prod * sample - sqrt_one_minus_alpha_prod * model_output
        return None

    def _check_inputs(
        self,
        batch_size: int,
        generator: torch.Generator | list[torch.Generator] | None,
        num_inference_steps: int | None,
        preview_every: int,
        output_type: str,
        callback_on_step_end_tensor_inputs: list[str],
        preview: str = "full",
    ) -> int:
        """Validates the arguments of a run; returns the number of inference steps to use."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(
                f"generator is a list of {len(generator)} generators but batch_size is {batch_size}; pass one "
                "generator per image (or a single generator)."
            )
        if isinstance(preview_every, bool) or not isinstance(preview_every, int) or preview_every < 0:
            raise ValueError(f"preview_every must be a non-negative integer (0: no previews), got {preview_every!r}.")
        if output_type not in self._output_types:
            raise ValueError(f"output_type={output_type!r} is not supported; choose one of {self._output_types}.")
        if preview not in PREVIEW_KINDS:
            raise ValueError(f"preview={preview!r} is not supported; choose one of {PREVIEW_KINDS}.")
        bad = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
        if bad:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs has {bad}, which are not among the pipeline's tensor inputs "
                f"{self._callback_tensor_inputs}."
            )
        if num_inference_steps is None:
            # the registered default (e.g. 1000, the full chain), capped at the scheduler's number of training steps
            num_inference_steps = min(
                self.config.default_num_inference_steps, self.scheduler.config.num_train_timesteps
            )
        if (
            isinstance(num_inference_steps, bool)
            or not isinstance(num_inference_steps, int)
            or num_inference_steps < 1
        ):
            raise ValueError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}.")
        return num_inference_steps

    # ------------------------------------------------------------------------------------------------ the loop
    @torch.no_grad()
    def _denoise(
        self,
        batch_size: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int | None = None,
        preview_every: int = 0,
        output_type: str = "pil",
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        sampler: str | None = None,
        preview: str | None = None,
    ) -> Iterator[DDPMPreview]:
        """
        The sampling loop (Ho et al. Algorithm 2 with any diffusers scheduler), yielding a `DDPMPreview` after every
        `preview_every` steps and always a final item (`final=True`, `images` set) at the end of the run or when it is
        interrupted. The final item of a completed run is the preview of its last step, so a run of `n` steps yields
        `ceil(n / preview_every)` items (1 item with `preview_every=0`). Nothing is kept across steps but the current
        sample, so memory does not grow with the number of steps.
        """
        if isinstance(callback_on_step_end, PipelineCallback | MultiPipelineCallbacks):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        if callback_on_step_end_tensor_inputs is None:
            callback_on_step_end_tensor_inputs = ["latents"]
        if preview is None:
            preview = "latent" if output_type == "latent" else "full"
        num_inference_steps = self._check_inputs(
            batch_size,
            generator,
            num_inference_steps,
            preview_every,
            output_type,
            callback_on_step_end_tensor_inputs,
            preview,
        )
        if sampler is not None:
            check_sampler_name(sampler)
        scheduler = self._sampling_scheduler(sampler)
        render, render_approx = self._preview_renderers(preview, output_type)
        self._interrupt = False
        device = self._execution_device
        # the latents, the noise and the scheduler's arithmetic in float32 (or the UNet's dtype if wider)
        unet_dtype = self.unet.dtype  # read once: `ModelMixin.dtype` walks the parameters
        sample_dtype = torch.promote_types(unet_dtype, torch.float32)

        # 1. x_T ~ N(0, I) (Ho (1)), drawn on the generator's device (CPU generators give the same images on any
        #    device); one generator per sample gives per-sample reproducibility
        latents = randn_tensor(self._latent_shape(batch_size), generator=generator, device=device, dtype=sample_dtype)
        latents = latents * scheduler.init_noise_sigma

        # 2. the chain of timesteps
        scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = scheduler.timesteps
        num_steps = self._num_timesteps = len(timesteps)
        extra_step_kwargs = self._prepare_extra_step_kwargs(generator, scheduler)

        # 3. denoise: x_t -> x_{t-1}, with x0_hat of Ho (15) from the same step; the timesteps as Python ints, read
        #    once (int(t) on a CUDA tensor in the loop would wait for the GPU every step)
        timestep_values = [int(t) for t in timesteps.tolist()]
        step, last_timestep, pred_original_sample = 0, timestep_values[0], None
        with self.progress_bar(total=num_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    break
                model_input = scheduler.scale_model_input(latents, t).to(unet_dtype)
                model_output = self.unet(model_input, t).sample.to(sample_dtype)
                output = scheduler.step(model_output, t, latents, **extra_step_kwargs)
                pred_original_sample = getattr(output, "pred_original_sample", None)
                if pred_original_sample is None:
                    pred_original_sample = self._pred_original_sample_from_model_output(
                        model_output, t, latents, scheduler
                    )
                latents = output.prev_sample
                step, last_timestep = i + 1, timestep_values[i]

                if callback_on_step_end is not None:
                    callback_kwargs = {"latents": latents}
                    callback_kwargs = {k: callback_kwargs[k] for k in callback_on_step_end_tensor_inputs}
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)
                    latents = callback_outputs.pop("latents", latents)
                progress_bar.update()

                if step == num_steps or self.interrupt:
                    break
                if preview_every and step % preview_every == 0:
                    yield DDPMPreview(
                        step=step,
                        num_steps=num_steps,
                        timestep=last_timestep,
                        raw_sample=latents,
                        raw_pred_original_sample=pred_original_sample,
                        render=render,
                        render_approx=render_approx,
                    )

        # 4. the output (also of an interrupted run: its current sample, as in diffusers' pipelines)
        (images,) = self._postprocess(latents, output_type=output_type)
        self.maybe_free_model_hooks()
        final = DDPMPreview(
            step=step,
            num_steps=num_steps,
            timestep=last_timestep,
            sample=images,
            final=True,
            images=images,
            raw_sample=latents,
            raw_pred_original_sample=pred_original_sample if preview_every else None,
            render=render,
            render_approx=render_approx,
        )
        same = pred_original_sample is latents or (
            pred_original_sample is not None and torch.equal(pred_original_sample, latents)
        )
        if preview_every and same and preview == "full" and output_type != "latent":
            final.pred_original_sample = images  # the last DDPM / DDIM step returns x0_hat itself
        yield final

    def _run_to_end(self, **kwargs) -> Any:
        """Runs `_denoise` without previews; returns the output images."""
        final = None
        for item in self._denoise(preview_every=0, **kwargs):
            final = item
        return final.images


def _diagnose_weight_files(
    pipeline_class: type, pretrained_model_name_or_path: str | os.PathLike, kwargs: dict
) -> tuple[str, str] | None:
    """
    After a failed `from_pretrained`, finds a weight file of a component that is missing, truncated or corrupted.

    Returns `(path, what is wrong)` or `None` when the weight files look sound (the failure is then reported as is).
    """
    folder = str(pretrained_model_name_or_path)
    if not os.path.isdir(folder):
        try:  # a Hub id: the snapshot in the local cache, without network
            folder = pipeline_class.download(
                folder,
                cache_dir=kwargs.get("cache_dir"),
                revision=kwargs.get("revision"),
                local_files_only=True,
                use_safetensors=kwargs.get("use_safetensors", True),
            )
        except Exception:
            return None
    try:
        with open(os.path.join(folder, "model_index.json"), encoding="utf-8") as f:
            model_index = json.load(f)
    except (OSError, ValueError):
        return None
    variant = kwargs.get("variant")
    weights_name = SAFETENSORS_WEIGHTS_NAME
    if variant is not None:
        weights_name = weights_name.replace(".safetensors", f".{variant}.safetensors")
    for name, value in model_index.items():
        if name.startswith("_") or not isinstance(value, list) or value[0] is None or name in kwargs:
            continue
        component = os.path.join(folder, name)
        if not os.path.isfile(os.path.join(component, "config.json")):
            continue  # not a model (schedulers have scheduler_config.json and no weights)
        index_file = os.path.join(component, weights_name + ".index.json")
        if os.path.isfile(index_file):  # sharded checkpoint
            try:
                with open(index_file, encoding="utf-8") as f:
                    shards = sorted(set(json.load(f)["weight_map"].values()))
            except (OSError, ValueError, KeyError, TypeError) as e:
                return index_file, f"is not a valid safetensors index ({e})"
            paths = [os.path.join(component, shard) for shard in shards]
        else:
            paths = [os.path.join(component, weights_name)]
        for path in paths:
            if not os.path.isfile(path):
                present = sorted(os.listdir(component))
                return path, f"is missing (the folder {component} has {present})"
            reason = _safetensors_problem(path)
            if reason is not None:
                return path, reason
    return None


def _safetensors_problem(path: str) -> str | None:
    """What is wrong with a safetensors file (its header and the data it describes, as `safe_open` checks), or `None`."""
    try:
        with safe_open(path, framework="pt") as f:
            f.keys()
    except Exception as error:  # safetensors raises its own SafetensorError (header, length) or OSError
        return f"is truncated or corrupted ({os.path.getsize(path)} bytes; safetensors: {error})"
    return None

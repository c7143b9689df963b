"""PixelDDPMPipeline / LatentDDPMPipeline: outputs, reproducibility, previews, interrupts, scheduler swaps, save/load,
diffusers integration and safetensors-only loading. Tiny models, seconds each on CPU."""

import doctest
import json
import math
import os
import warnings

import diffusers
import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    UNet2DModel,
)
from PIL import Image

import ddpm_plugin
from ddpm_plugin import DDPMUNet2DModel, GaussianDDPMScheduler, LatentDDPMPipeline, PixelDDPMPipeline
from ddpm_plugin._registry import is_registered, register_pipelines_with_diffusers
from ddpm_plugin.pipelines import DDPMPreview, pipeline_latent_ddpm, pipeline_pixel_ddpm

T = 20  # training timesteps of the tiny scheduler


def tiny_unet(in_channels: int = 1, seed: int = 0) -> DDPMUNet2DModel:
    torch.manual_seed(seed)
    return DDPMUNet2DModel(
        sample_size=8,
        in_channels=in_channels,
        model_channels=8,
        channel_mult=(1, 2),
        layers_per_block=1,
        attention_resolutions=(4,),
        norm_num_groups=4,
    ).eval()


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        latent_channels=2,
        norm_num_groups=4,
        sample_size=16,
    )
    vae.register_to_config(scaling_factor=0.8)
    return vae.eval()


def quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def pixel_pipe() -> PixelDDPMPipeline:
    return quiet(PixelDDPMPipeline(tiny_unet(), GaussianDDPMScheduler(num_train_timesteps=T), 10))


@pytest.fixture
def latent_pipe() -> LatentDDPMPipeline:
    return quiet(
        LatentDDPMPipeline(tiny_vae(), tiny_unet(in_channels=2), GaussianDDPMScheduler(num_train_timesteps=T), 6)
    )


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def plain(config) -> dict:
    """A config as JSON would store it, without private keys."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items() if not k.startswith("_")}


class CallCounter:
    """Counts forward calls of a module through a forward hook."""

    def __init__(self, module: torch.nn.Module):
        self.calls = 0
        self.handle = module.register_forward_hook(self)

    def __call__(self, module, args, output):
        self.calls += 1


# ---------------------------------------------------------------------------------------------------- outputs
@pytest.mark.parametrize("output_type", ["pil", "np", "pt"])
def test_pixel_output_types(pixel_pipe, output_type):
    images = pixel_pipe(batch_size=3, generator=gen(0), num_inference_steps=4, output_type=output_type).images
    if output_type == "pil":
        assert len(images) == 3 and all(isinstance(im, Image.Image) for im in images)
        assert images[0].size == (8, 8) and images[0].mode == "L"
        return
    if output_type == "np":
        assert isinstance(images, np.ndarray) and images.shape == (3, 8, 8, 1)
    else:
        assert isinstance(images, torch.Tensor) and images.shape == (3, 1, 8, 8)
        images = images.numpy()
    assert images.dtype == np.float32 and images.min() >= 0 and images.max() <= 1
    assert images.std() > 0.01  # not a constant image


def test_pil_and_np_agree_and_tuple_output(pixel_pipe):
    np_images = pixel_pipe(batch_size=2, generator=gen(1), num_inference_steps=3, output_type="np").images
    pil_images = pixel_pipe(batch_size=2, generator=gen(1), num_inference_steps=3).images
    assert np.array_equal(np.asarray(pil_images[1]), (np_images[1, ..., 0] * 255).round().astype(np.uint8))
    (as_tuple,) = pixel_pipe(generator=gen(1), num_inference_steps=3, output_type="np", return_dict=False)
    assert as_tuple.shape == (1, 8, 8, 1)


@pytest.mark.parametrize("output_type", ["pil", "np", "pt", "latent"])
def test_latent_output_types(latent_pipe, output_type):
    images = latent_pipe(batch_size=2, generator=gen(0), num_inference_steps=3, output_type=output_type).images
    if output_type == "pil":
        assert len(images) == 2 and images[0].size == (16, 16)
    elif output_type == "np":
        assert images.shape == (2, 16, 16, 1) and 0 <= images.min() and images.max() <= 1
    elif output_type == "pt":
        assert images.shape == (2, 1, 16, 16) and 0 <= images.min() and images.max() <= 1
    else:
        assert images.shape == (2, 2, 8, 8)  # z_0, undecoded


def test_latent_decodes_z0_over_scaling_factor(latent_pipe):
    """docs/maths.md [LAT1]: x = vae.decode(z_0 / s), s = vae.config.scaling_factor; images (x + 1) / 2 in [0, 1]."""
    z0 = latent_pipe(batch_size=2, generator=gen(3), num_inference_steps=3, output_type="latent").images
    images = latent_pipe(batch_size=2, generator=gen(3), num_inference_steps=3, output_type="pt").images
    with torch.no_grad():
        expected = (latent_pipe.vae.decode(z0 / 0.8).sample / 2 + 0.5).clamp(0, 1)
        wrong_scale = (latent_pipe.vae.decode(z0).sample / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(images, expected, rtol=0, atol=1e-6)
    assert (images - wrong_scale).abs().max() > 1e-3


def test_latent_rejects_mismatched_unet_channels():
    with pytest.raises(ValueError, match="in_channels=1 must equal vae.config.latent_channels=2"):
        LatentDDPMPipeline(tiny_vae(), tiny_unet(in_channels=1), GaussianDDPMScheduler(num_train_timesteps=T))


# ---------------------------------------------------------------------------------------------------- reproducibility
@pytest.mark.parametrize("kind", ["pixel", "latent"])
def test_same_seed_same_images(kind, pixel_pipe, latent_pipe):
    pipe = pixel_pipe if kind == "pixel" else latent_pipe
    a = pipe(batch_size=2, generator=gen(7), num_inference_steps=4, output_type="pt").images
    b = pipe(batch_size=2, generator=gen(7), num_inference_steps=4, output_type="pt").images
    c = pipe(batch_size=2, generator=gen(8), num_inference_steps=4, output_type="pt").images
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["pixel", "latent"])
def test_batch_one_vs_n_with_generator_list(kind, pixel_pipe, latent_pipe):
    """One generator per image: image i depends on generator i only, for x_T and for the per-step noise z."""
    pipe = pixel_pipe if kind == "pixel" else latent_pipe
    batch = pipe(batch_size=3, generator=[gen(10), gen(11), gen(12)], num_inference_steps=5, output_type="pt").images
    first = pipe(batch_size=1, generator=[gen(10)], num_inference_steps=5, output_type="pt").images
    second = pipe(batch_size=1, generator=gen(11), num_inference_steps=5, output_type="pt").images
    torch.testing.assert_close(batch[:1], first, rtol=0, atol=1e-5)
    torch.testing.assert_close(batch[1:2], second, rtol=0, atol=1e-5)
    assert (batch[0] - batch[1]).abs().max() > 1e-3


def test_generator_reaches_scheduler_step(pixel_pipe):
    seen = []
    step = pixel_pipe.scheduler.step

    def spy(*args, **kwargs):
        seen.append(kwargs.get("generator"))
        return step(*args, **kwargs)

    pixel_pipe.scheduler.step = spy
    g = gen(0)
    pixel_pipe(generator=g, num_inference_steps=3)
    assert len(seen) == 3 and all(s is g for s in seen)


def test_scheduler_without_generator_argument(pixel_pipe):
    """`generator` goes to `scheduler.step` only if its signature takes it."""

    class NoGeneratorDDIM(DDIMScheduler):
        def step(self, model_output, timestep, sample, return_dict=True):
            return super().step(model_output, timestep, sample, return_dict=return_dict)

    pixel_pipe.scheduler = NoGeneratorDDIM.from_config(pixel_pipe.scheduler.config)
    images = pixel_pipe(generator=gen(0), num_inference_steps=3, output_type="np").images
    assert images.shape == (1, 8, 8, 1)


# ---------------------------------------------------------------------------------------------------- previews
@pytest.mark.parametrize(("steps", "every"), [(10, 3), (10, 5), (10, 1), (7, 10), (10, 0)])
def test_preview_count_and_fields(pixel_pipe, steps, every):
    items = list(pixel_pipe.iter_previews(generator=gen(0), num_inference_steps=steps, preview_every=every))
    expected_steps = [s for s in range(1, steps + 1) if every and s % every == 0 and s != steps] + [steps]
    assert len(items) == (math.ceil(steps / every) if every else 1)
    assert [it.step for it in items] == expected_steps
    assert all(isinstance(it, DDPMPreview) and it.num_steps == steps for it in items)
    assert [it.final for it in items] == [False] * (len(items) - 1) + [True]
    assert all(it.images is None for it in items[:-1]) and len(items[-1].images) == 1
    timesteps = pixel_pipe.scheduler.timesteps.tolist()
    assert [it.timestep for it in items] == [timesteps[s - 1] for s in expected_steps]
    assert items[-1].timestep == 0
    # x_t and x0_hat are images ready to show, on every preview step
    assert all(isinstance(it.sample[0], Image.Image) for it in items)
    if every:
        assert all(isinstance(it.pred_original_sample[0], Image.Image) for it in items)
    else:
        assert items[-1].pred_original_sample is None


def test_final_preview_matches_call(pixel_pipe):
    final = list(pixel_pipe.iter_previews(batch_size=2, generator=gen(4), num_inference_steps=6, output_type="pt"))[-1]
    images = pixel_pipe(batch_size=2, generator=gen(4), num_inference_steps=6, output_type="pt").images
    assert torch.equal(final.images, images)


def test_preview_x0_is_scheduler_output_without_extra_unet_calls(pixel_pipe):
    """Previews show scheduler.step's own pred_original_sample / prev_sample; the UNet runs once per step."""
    recorded = []
    step = pixel_pipe.scheduler.step

    def spy(*args, **kwargs):
        out = step(*args, **kwargs)
        recorded.append((out.prev_sample.clone(), out.pred_original_sample.clone()))
        return out

    pixel_pipe.scheduler.step = spy
    counter = CallCounter(pixel_pipe.unet)
    items = list(pixel_pipe.iter_previews(generator=gen(2), num_inference_steps=8, preview_every=3, output_type="pt"))
    assert counter.calls == 8 and len(recorded) == 8
    for it in items:
        prev_sample, x0 = recorded[it.step - 1]
        assert torch.equal(it.sample, (prev_sample / 2 + 0.5).clamp(0, 1))
        assert torch.equal(it.pred_original_sample, (x0 / 2 + 0.5).clamp(0, 1))
    assert (items[0].pred_original_sample - items[1].pred_original_sample).abs().max() > 0  # previews change


def test_latent_previews_decode_only_the_fields_read(latent_pipe):
    recorded = []
    step = latent_pipe.scheduler.step

    def spy(*args, **kwargs):
        out = step(*args, **kwargs)
        recorded.append((out.prev_sample.clone(), out.pred_original_sample.clone()))
        return out

    latent_pipe.scheduler.step = spy
    unet_calls, decoder_calls = CallCounter(latent_pipe.unet), CallCounter(latent_pipe.vae.decoder)
    items = list(latent_pipe.iter_previews(generator=gen(0), num_inference_steps=7, preview_every=3, output_type="pt"))
    assert [it.step for it in items] == [3, 6, 7]
    assert unet_calls.calls == 7
    assert decoder_calls.calls == 1  # the output only: nothing read yet
    for it in items:
        z_t, z0 = recorded[it.step - 1]
        with torch.no_grad():
            expected = (latent_pipe.vae.decode(z0 / 0.8).sample / 2 + 0.5).clamp(0, 1)
        torch.testing.assert_close(it.pred_original_sample, expected, rtol=0, atol=1e-5)
        assert it.pred_original_sample is it.pred_original_sample  # decoded once, then kept
        assert it.sample.shape == (1, 1, 16, 16)
    # the output, the test's own 3 decodes, z_t and z0_hat of the two non-final previews (the last x0_hat is z_0)
    assert decoder_calls.calls == 1 + 3 + 2 * 2
    decoder_calls.calls = 0
    latent_pipe(generator=gen(0), num_inference_steps=7)
    assert decoder_calls.calls == 1  # __call__ decodes z_0 only
    latents = list(latent_pipe.iter_previews(num_inference_steps=4, preview_every=2, output_type="latent"))
    assert latents[0].pred_original_sample.shape == (1, 2, 8, 8)


# ---------------------------------------------------------------------------------------------------- interrupt
def test_interrupt_from_callback(pixel_pipe):
    def stop_after_third(pipe, i, t, callback_kwargs):
        if i == 2:
            pipe._interrupt = True
        return callback_kwargs

    counter = CallCounter(pixel_pipe.unet)
    images = pixel_pipe(generator=gen(0), num_inference_steps=10, callback_on_step_end=stop_after_third).images
    assert counter.calls == 3 and len(images) == 1 and pixel_pipe.interrupt
    items = list(
        pixel_pipe.iter_previews(num_inference_steps=10, preview_every=2, callback_on_step_end=stop_after_third)
    )
    assert [(it.step, it.final) for it in items] == [(2, False), (3, True)] and items[-1].images is not None
    # the interrupt flag is reset by the next run
    pixel_pipe(num_inference_steps=4)
    assert not pixel_pipe.interrupt


def test_interrupt_between_previews_and_close(pixel_pipe):
    counter = CallCounter(pixel_pipe.unet)
    previews = pixel_pipe.iter_previews(num_inference_steps=10, preview_every=2)
    first = next(previews)
    pixel_pipe._interrupt = True
    rest = list(previews)
    assert first.step == 2 and [(it.step, it.final) for it in rest] == [(2, True)]
    assert counter.calls == 2
    counter.calls = 0
    previews = pixel_pipe.iter_previews(num_inference_steps=10, preview_every=1)
    next(previews)
    previews.close()
    assert counter.calls == 1


def test_callback_replaces_latents(pixel_pipe):
    def zero_at_end(pipe, i, t, callback_kwargs):
        assert set(callback_kwargs) == {"latents"}
        if i == pipe.num_timesteps - 1:
            return {"latents": torch.zeros_like(callback_kwargs["latents"])}
        return callback_kwargs

    images = pixel_pipe(num_inference_steps=3, output_type="pt", callback_on_step_end=zero_at_end).images
    assert torch.equal(images, torch.full_like(images, 0.5))


# ---------------------------------------------------------------------------------------------------- schedulers
def test_ddim_swap(pixel_pipe):
    pixel_pipe.scheduler = DDIMScheduler.from_config(pixel_pipe.scheduler.config)
    recorded = []
    step = pixel_pipe.scheduler.step

    def spy(*args, **kwargs):
        out = step(*args, **kwargs)
        recorded.append(out.pred_original_sample.clone())
        return out

    pixel_pipe.scheduler.step = spy
    items = list(pixel_pipe.iter_previews(generator=gen(0), num_inference_steps=5, preview_every=2, output_type="pt"))
    assert [it.step for it in items] == [2, 4, 5]
    assert torch.equal(items[0].pred_original_sample, (recorded[1] / 2 + 0.5).clamp(0, 1))
    # eta = 0: deterministic given x_T
    a = pixel_pipe(generator=gen(0), num_inference_steps=5, output_type="pt").images
    assert torch.equal(a, items[-1].images)


@pytest.mark.parametrize("clip_sample", [True, False])
def test_ddim_with_clipping_rederives_the_noise_from_the_clipped_x0(pixel_pipe, clip_sample):
    """With clip_sample, DDIM steps get use_clipped_model_output=True (GLIDE / guided-diffusion's DDIM): the images
    are those of a hand-written loop that passes it, and differ from diffusers' default where clipping bites."""
    scheduler = DDIMScheduler.from_config(pixel_pipe.scheduler.config, clip_sample=clip_sample, clip_sample_range=0.2)
    pixel_pipe.scheduler = scheduler
    assert pixel_pipe._prepare_extra_step_kwargs(None).get("use_clipped_model_output", False) is clip_sample
    images = pixel_pipe(generator=gen(0), num_inference_steps=5, output_type="pt").images

    def loop(use_clipped_model_output):
        x = torch.randn((1, 1, 8, 8), generator=gen(0))
        scheduler.set_timesteps(5)
        for t in scheduler.timesteps:
            eps = pixel_pipe.unet(x, t).sample
            x = scheduler.step(eps, t, x, use_clipped_model_output=use_clipped_model_output).prev_sample
        return (x / 2 + 0.5).clamp(0, 1)

    torch.testing.assert_close(images, loop(clip_sample), rtol=0, atol=1e-6)
    if clip_sample:
        assert (images - loop(False)).abs().max() > 1e-3


def test_dpm_solver_swap_computes_x0_from_alphas_cumprod(pixel_pipe):
    """DPM-Solver's step output has no pred_original_sample: x0_hat = Ho (15) from the same eps and alphas_cumprod."""
    pixel_pipe.scheduler = DPMSolverMultistepScheduler.from_config(pixel_pipe.scheduler.config)
    io = []
    hook = pixel_pipe.unet.register_forward_hook(lambda m, args, out: io.append((args[0].clone(), out.sample.clone())))
    items = list(pixel_pipe.iter_previews(generator=gen(0), num_inference_steps=6, preview_every=2, output_type="pt"))
    hook.remove()
    assert len(io) == 6 and [it.step for it in items] == [2, 4, 6]
    abar = pixel_pipe.scheduler.alphas_cumprod.double()
    for it in items[:-1]:
        x_t, eps = io[it.step - 1]
        a = abar[it.timestep]
        x0 = ((x_t.double() - (1 - a).sqrt() * eps.double()) / a.sqrt()).float()
        torch.testing.assert_close(it.pred_original_sample, (x0 / 2 + 0.5).clamp(0, 1), rtol=0, atol=1e-6)
    images = pixel_pipe(generator=gen(0), num_inference_steps=6, output_type="np").images
    assert images.shape == (1, 8, 8, 1) and np.isfinite(images).all()


# ---------------------------------------------------------------------------------------------------- config
def test_default_num_inference_steps(pixel_pipe, tmp_path):
    counter = CallCounter(pixel_pipe.unet)
    pixel_pipe()
    assert counter.calls == 10 == pixel_pipe.num_timesteps
    pixel_pipe.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["default_num_inference_steps"] == 10
    loaded = quiet(PixelDDPMPipeline.from_pretrained(tmp_path))
    assert loaded.config.default_num_inference_steps == 10
    loaded()
    assert loaded.num_timesteps == 10
    # the default 1000 means the full chain: capped at num_train_timesteps
    full = quiet(PixelDDPMPipeline(tiny_unet(), GaussianDDPMScheduler(num_train_timesteps=T)))
    assert full.config.default_num_inference_steps == 1000
    full(output_type="np")
    assert full.num_timesteps == T


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "10"])
def test_bad_default_num_inference_steps(bad):
    with pytest.raises(ValueError, match="default_num_inference_steps must be a positive integer"):
        PixelDDPMPipeline(tiny_unet(), GaussianDDPMScheduler(num_train_timesteps=T), default_num_inference_steps=bad)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"output_type": "jpeg"}, "output_type='jpeg' is not supported"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"batch_size": 2, "generator": [torch.Generator()]}, "list of 1 generators but batch_size is 2"),
        ({"num_inference_steps": 0}, "num_inference_steps must be a positive integer"),
        ({"num_inference_steps": T + 1}, "num_inference_steps=21"),
        ({"callback_on_step_end_tensor_inputs": ["noise"]}, "'noise'"),
    ],
)
def test_bad_call_arguments(pixel_pipe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pixel_pipe(**kwargs)


def test_bad_preview_every(pixel_pipe):
    with pytest.raises(ValueError, match="preview_every must be a non-negative integer"):
        next(pixel_pipe.iter_previews(preview_every=-1))


@pytest.mark.parametrize("module", [pipeline_pixel_ddpm, pipeline_latent_ddpm])
def test_docstring_example_runs(module):
    test = doctest.DocTestParser().get_doctest(module.EXAMPLE_DOC_STRING, {}, module.__name__, None, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
    assert ">>> images = pipe(" in getattr(module, module.__all__[0]).__call__.__doc__  # placed in __call__'s doc


# ---------------------------------------------------------------------------------------------------- save / load
@pytest.mark.parametrize(
    ("kind", "loader"),
    [
        ("pixel", PixelDDPMPipeline),
        ("pixel", DiffusionPipeline),
        ("latent", LatentDDPMPipeline),
        ("latent", DiffusionPipeline),
    ],
)
def test_save_load_round_trip(kind, loader, pixel_pipe, latent_pipe, tmp_path):
    """Both our classes and `DiffusionPipeline.from_pretrained` (class resolved after `import ddpm_plugin`)."""
    pipe = pixel_pipe if kind == "pixel" else latent_pipe
    cls = type(pipe)
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == cls.__name__
    assert index["unet"] == ["ddpm_plugin.models.unet_ddpm_2d", "DDPMUNet2DModel"]
    assert index["scheduler"] == ["ddpm_plugin.schedulers.scheduling_gaussian_ddpm", "GaussianDDPMScheduler"]
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = quiet(loader.from_pretrained(tmp_path))
    assert type(loaded) is cls
    assert type(loaded.unet) is DDPMUNet2DModel and type(loaded.scheduler) is GaussianDDPMScheduler
    assert plain(loaded.unet.config) == plain(pipe.unet.config)
    assert plain(loaded.scheduler.config) == plain(pipe.scheduler.config)
    a = pipe(batch_size=2, generator=gen(5), num_inference_steps=5, output_type="pt").images
    b = loaded(batch_size=2, generator=gen(5), num_inference_steps=5, output_type="pt").images
    assert torch.equal(a, b)  # bit-identical after save/load


def test_registration_with_diffusers():
    assert is_registered()
    assert diffusers.PixelDDPMPipeline is ddpm_plugin.PixelDDPMPipeline
    assert diffusers.LatentDDPMPipeline is ddpm_plugin.LatentDDPMPipeline
    assert register_pipelines_with_diffusers() == {}  # idempotent


def test_registration_leaves_a_diffusers_name_alone(monkeypatch):
    sentinel = type("PixelDDPMPipeline", (), {})
    monkeypatch.setattr(diffusers, "PixelDDPMPipeline", sentinel)
    with pytest.warns(UserWarning, match="diffusers already defines PixelDDPMPipeline"):
        attached = register_pipelines_with_diffusers()
    assert attached == {} and diffusers.PixelDDPMPipeline is sentinel


# ---------------------------------------------------------------------------------------------------- diffusers
def test_diffusers_ddpm_pipeline_with_our_unet_and_scheduler(pixel_pipe, tmp_path):
    """diffusers' own DDPMPipeline runs our components and samples exactly what PixelDDPMPipeline samples."""
    theirs = quiet(DDPMPipeline(unet=pixel_pipe.unet, scheduler=GaussianDDPMScheduler(num_train_timesteps=T)))
    a = theirs(batch_size=2, generator=gen(9), num_inference_steps=5, output_type="np").images
    b = pixel_pipe(batch_size=2, generator=gen(9), num_inference_steps=5, output_type="np").images
    assert a.shape == (2, 8, 8, 1) and np.array_equal(a, b)
    theirs.save_pretrained(tmp_path)
    loaded = quiet(DiffusionPipeline.from_pretrained(tmp_path))
    assert type(loaded) is DDPMPipeline and type(loaded.unet) is DDPMUNet2DModel
    c = loaded(batch_size=2, generator=gen(9), num_inference_steps=5, output_type="np").images
    assert np.array_equal(a, c)


def test_our_scheduler_in_diffusers_pipeline_via_from_config():
    """GaussianDDPMScheduler.from_config(DDPMScheduler's config) in DDPMPipeline with diffusers' UNet2DModel."""
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        layers_per_block=1,
    ).eval()
    reference = DDPMScheduler(num_train_timesteps=T)
    ours = GaussianDDPMScheduler.from_config(reference.config)
    a = quiet(DDPMPipeline(unet=unet, scheduler=reference))(generator=gen(0), num_inference_steps=T, output_type="np")
    b = quiet(DDPMPipeline(unet=unet, scheduler=ours))(generator=gen(0), num_inference_steps=T, output_type="np")
    np.testing.assert_allclose(a.images, b.images, rtol=0, atol=1e-4)
    # and our pipeline runs diffusers' UNet2DModel too
    c = quiet(PixelDDPMPipeline(unet=unet, scheduler=ours))(generator=gen(0), num_inference_steps=T, output_type="np")
    assert np.array_equal(b.images, c.images)


# ---------------------------------------------------------------------------------------------------- safetensors only
@pytest.mark.parametrize("damage", ["truncate", "truncate_header", "garbage", "delete", "delete_with_bin"])
@pytest.mark.parametrize("loader", [PixelDDPMPipeline, DiffusionPipeline])
def test_damaged_weights_error_names_the_file(pixel_pipe, tmp_path, damage, loader):
    pixel_pipe.save_pretrained(tmp_path)
    weights = tmp_path / "unet" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    if damage == "truncate":
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "truncate_header":
        weights.write_bytes(data[:20])
    elif damage == "garbage":
        weights.write_bytes(b"\x07" * len(data))
    else:
        weights.unlink()
        if damage == "delete_with_bin":  # a pickle file must not be loaded in its place
            torch.save(pixel_pipe.unet.state_dict(), tmp_path / "unet" / "diffusion_pytorch_model.bin")
    kwargs = {} if loader is PixelDDPMPipeline else {"use_safetensors": True}  # diffusers' default allows pickle
    with pytest.raises(OSError, match="diffusion_pytorch_model.safetensors") as info:
        loader.from_pretrained(tmp_path, **kwargs)
    if loader is PixelDDPMPipeline:
        assert str(weights) in str(info.value)
        expected = (
            "is missing" if damage.startswith("delete") else ("truncated" if "truncate" in damage else "corrupt")
        )
        assert expected in str(info.value)


def test_sound_files_still_raise_the_original_error(pixel_pipe, tmp_path):
    """A failure that is not about weights is not disguised as one."""
    pixel_pipe.save_pretrained(tmp_path)
    config = tmp_path / "unet" / "config.json"
    config.write_text(config.read_text().replace('"norm_num_groups": 4', '"norm_num_groups": 3'))
    with pytest.raises(Exception) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        PixelDDPMPipeline.from_pretrained(tmp_path)
    assert "safetensors" not in str(info.value)
    assert "norm_num_groups" in str(info.value) or "divisible" in str(info.value) or "groups" in str(info.value)


def test_pipelines_do_not_import_ddpm_plugin_outside_the_folder():
    """The pipeline modules are copied into Hub repositories: they may import only siblings, torch and diffusers."""
    folder = os.path.dirname(pipeline_pixel_ddpm.__file__)
    for name in os.listdir(folder):
        if name.endswith(".py"):
            text = open(os.path.join(folder, name), encoding="utf-8").read()
            assert "import ddpm_plugin" not in text.replace(">>> from ddpm_plugin import", "")
            assert "from ddpm_plugin" not in text.replace(">>> from ddpm_plugin import", "")
            assert "from .." not in text

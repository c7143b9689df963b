"""Samplers by name (`default_sampler`, `sampler=`), bf16 networks with float32 latents, lazy and approximate previews."""

import json

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler
from test_pipelines import CallCounter, T, gen, quiet, tiny_unet, tiny_vae

from ddpm_plugin import GaussianDDPMScheduler, LatentDDPMPipeline, PixelDDPMPipeline, load_default_pipeline
from ddpm_plugin.pipelines.latent_preview import fit_latent_to_image_map
from ddpm_plugin.pipelines.samplers import SAMPLERS, make_sampler
from ddpm_plugin.sample import SCHEDULERS

STOCHASTIC = ("dpm-sde", "euler-a")


@pytest.fixture
def pixel_pipe() -> PixelDDPMPipeline:
    return quiet(PixelDDPMPipeline(tiny_unet(), GaussianDDPMScheduler(num_train_timesteps=T), 10))


@pytest.fixture
def latent_pipe() -> LatentDDPMPipeline:
    return quiet(LatentDDPMPipeline(tiny_vae(), tiny_unet(2), GaussianDDPMScheduler(num_train_timesteps=T), 6))


def test_the_cli_sampler_list_is_the_pipelines_list():
    assert SCHEDULERS == tuple(SAMPLERS) == ("ddpm", "ddim", "dpm", "dpm-sde", "euler-a")


def test_make_sampler_builds_from_the_ddpm_config():
    ddpm = GaussianDDPMScheduler(num_train_timesteps=20, beta_schedule="squaredcos_cap_v2")
    assert make_sampler("ddpm", ddpm) is ddpm
    sde = make_sampler("dpm-sde", ddpm)
    assert type(sde) is DPMSolverMultistepScheduler and sde.config.algorithm_type == "sde-dpmsolver++"
    torch.testing.assert_close(sde.alphas_cumprod, ddpm.alphas_cumprod.float(), rtol=0, atol=1e-7)  # same schedule
    assert type(make_sampler("euler-a", ddpm)) is EulerAncestralDiscreteScheduler
    with pytest.raises(ValueError, match=r"sampler='heun' is not supported; choose one of \('ddpm'"):
        make_sampler("heun", ddpm)
    learned = type("Config", (), {"in_channels": 1, "out_channels": 2})()
    with pytest.raises(ValueError, match="learned variance"):
        make_sampler("dpm", ddpm, learned)


@pytest.mark.parametrize("name", ["ddim", "dpm", *STOCHASTIC])
@pytest.mark.parametrize("kind", ["pixel", "latent"])
def test_each_sampler_runs_on_both_pipelines_and_differs_from_ddpm(kind, name, pixel_pipe, latent_pipe):
    pipe = pixel_pipe if kind == "pixel" else latent_pipe
    ddpm = pipe(batch_size=2, generator=gen(0), num_inference_steps=5, output_type="pt").images
    other = pipe(batch_size=2, generator=gen(0), num_inference_steps=5, output_type="pt", sampler=name).images
    assert other.shape == ddpm.shape and torch.isfinite(other).all()
    assert (other - ddpm).abs().max() > 1e-3
    again = pipe(batch_size=2, generator=gen(0), num_inference_steps=5, output_type="pt", sampler=name).images
    assert torch.equal(other, again)  # seeded, also the stochastic ones
    if name in STOCHASTIC:
        third = pipe(batch_size=2, generator=gen(1), num_inference_steps=5, output_type="pt", sampler=name).images
        assert (third - other).abs().max() > 1e-3
    assert type(pipe.scheduler) is GaussianDDPMScheduler  # the component is untouched
    items = list(pipe.iter_previews(generator=gen(0), num_inference_steps=5, preview_every=2, sampler=name))
    assert [it.step for it in items] == [2, 4, 5] and items[0].pred_original_sample is not None


def test_default_sampler_setting(pixel_pipe, tmp_path):
    assert pixel_pipe.config.default_sampler == "ddpm"
    explicit = pixel_pipe(generator=gen(0), num_inference_steps=4, output_type="pt", sampler="dpm-sde").images
    ddpm = pixel_pipe(generator=gen(0), num_inference_steps=4, output_type="pt").images

    pipe = quiet(PixelDDPMPipeline(pixel_pipe.unet, pixel_pipe.scheduler, default_sampler="dpm-sde"))
    assert torch.equal(pipe(generator=gen(0), num_inference_steps=4, output_type="pt").images, explicit)
    assert torch.equal(pipe(generator=gen(0), num_inference_steps=4, output_type="pt", sampler="ddpm").images, ddpm)
    final = list(pipe.iter_previews(generator=gen(0), num_inference_steps=4, preview_every=2, output_type="pt"))[-1]
    assert torch.equal(final.images, explicit)
    assert type(pipe.scheduler) is GaussianDDPMScheduler

    # a scheduler the caller put in wins over the setting
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    ddim = pipe(generator=gen(0), num_inference_steps=4, output_type="pt").images
    assert (ddim - explicit).abs().max() > 1e-3 and len(pipe.scheduler.timesteps) == 4

    # the setting survives save / load, and an old folder without it loads as "ddpm"
    pipe.scheduler = pixel_pipe.scheduler
    pipe.save_pretrained(tmp_path / "p")
    assert json.loads((tmp_path / "p" / "model_index.json").read_text())["default_sampler"] == "dpm-sde"
    loaded = quiet(PixelDDPMPipeline.from_pretrained(tmp_path / "p"))
    assert loaded.config.default_sampler == "dpm-sde"
    images = loaded(generator=gen(0), num_inference_steps=4, output_type="pt").images
    torch.testing.assert_close(images, explicit, rtol=0, atol=1e-5)
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    del index["default_sampler"]
    (tmp_path / "p" / "model_index.json").write_text(json.dumps(index))
    assert PixelDDPMPipeline.from_pretrained(tmp_path / "p").config.default_sampler == "ddpm"

    with pytest.raises(ValueError, match=r"default_sampler='euler' is not supported; choose one of"):
        PixelDDPMPipeline(pixel_pipe.unet, pixel_pipe.scheduler, default_sampler="euler")
    with pytest.raises(ValueError, match=r"sampler='euler' is not supported"):
        pixel_pipe(num_inference_steps=2, sampler="euler")


@pytest.mark.parametrize("kind", ["pixel", "latent"])
def test_bf16_networks_keep_float32_latents(kind, pixel_pipe, latent_pipe, tmp_path):
    pipe = pixel_pipe if kind == "pixel" else latent_pipe
    reference = pipe(batch_size=2, generator=gen(0), num_inference_steps=6, output_type="pt").images
    pipe.save_pretrained(tmp_path / "p")
    loaded = quiet(type(pipe).from_pretrained(tmp_path / "p", torch_dtype=torch.bfloat16))
    assert loaded.unet.dtype == torch.bfloat16
    seen = []
    hook = loaded.unet.register_forward_hook(lambda m, args, out: seen.append((args[0].dtype, out.sample.dtype)))
    latents = []
    images = loaded(
        batch_size=2,
        generator=gen(0),
        num_inference_steps=6,
        output_type="pt",
        callback_on_step_end=lambda p, i, t, kw: latents.append(kw["latents"].dtype) or kw,
    ).images
    hook.remove()
    assert set(seen) == {(torch.bfloat16, torch.bfloat16)} and set(latents) == {torch.float32}
    assert images.dtype == torch.float32
    difference = (images - reference).abs()
    assert 0 < difference.mean() < 0.05  # bf16 weights: close to float32, not identical
    cast = quiet(type(pipe).from_pretrained(tmp_path / "p")).to(torch.bfloat16)  # the other diffusers way
    assert torch.equal(cast(batch_size=2, generator=gen(0), num_inference_steps=6, output_type="pt").images, images)


# ---------------------------------------------------------------------------------------------------- previews
@pytest.mark.parametrize("preview", ["full", "approx", "latent"])
def test_unread_previews_cost_no_vae_call(latent_pipe, preview):
    decoder = CallCounter(latent_pipe.vae.decoder)
    latent_pipe.latent_to_image_map()  # fitted once (cached per VAE), before counting
    decoder.calls = 0
    items = list(
        latent_pipe.iter_previews(
            generator=gen(0), num_inference_steps=6, preview_every=1, output_type="np", preview=preview
        )
    )
    assert len(items) == 6 and decoder.calls == 1  # the output only
    for it in items[:-1]:
        assert it.approx_pred_original_sample is not None and it.approx_sample is not None
    assert decoder.calls == 1  # approximate previews never call the VAE
    assert items[0].pred_original_sample.shape == (1, 16, 16, 1) or preview == "latent"
    assert decoder.calls == (2 if preview == "full" else 1)


def test_approx_preview_shape_range_and_cache(latent_pipe):
    decoder = CallCounter(latent_pipe.vae.decoder)
    items = list(
        latent_pipe.iter_previews(
            batch_size=3, generator=gen(0), num_inference_steps=4, preview_every=2, output_type="np", preview="approx"
        )
    )
    assert decoder.calls == 1  # the output; nothing read yet
    x0 = items[0].pred_original_sample
    fit_calls = decoder.calls - 1  # the fit's decodes (64 latents, batches of 32) on first use
    assert fit_calls == 2
    assert x0.shape == (3, 16, 16, 1) and x0.min() >= 0 and x0.max() <= 1
    assert (items[0].pred_original_sample == items[0].approx_pred_original_sample).all()
    copy = LatentDDPMPipeline(latent_pipe.vae, latent_pipe.unet, latent_pipe.scheduler)
    assert copy.latent_to_image_map() is latent_pipe.latent_to_image_map()  # shared through the VAE object
    assert decoder.calls == fit_calls + 1


def test_the_map_fits_a_linear_decoder_exactly():
    """A decoder that is itself a 3x3 convolution + pixel shuffle is recovered to float precision."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(2, 1 * 4 * 4, 3, padding=1)

    def decode(z):
        with torch.no_grad():
            return torch.nn.functional.pixel_shuffle(conv(z), 4)

    fitted = fit_latent_to_image_map(decode, (2, 5, 5))
    z = torch.randn(4, 2, 5, 5, generator=gen(1))
    torch.testing.assert_close(fitted(z), decode(z), rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="kernel_size must be a positive odd integer, got 2"):
        fit_latent_to_image_map(decode, (2, 5, 5), kernel_size=2)


def test_approx_preview_error_on_the_bundled_latent_model():
    """The fitted map against the VAE decode of x0_hat along a real run: a rough but faithful preview. Measured here
    (8 images, 20 steps): PSNR 13.8-14.5 dB at every step (all black: 10.4-10.9 dB), mean absolute error 0.15-0.16."""
    pipe = quiet(load_default_pipeline("latent"))
    for it in pipe.iter_previews(
        batch_size=8, generator=gen(0), num_inference_steps=20, preview_every=5, output_type="np"
    ):
        if it.final:
            break
        approx = torch.from_numpy(it.approx_pred_original_sample)
        with torch.no_grad():
            full = torch.from_numpy(pipe._postprocess(it.raw_pred_original_sample, output_type="np")[0])
        mse = ((approx - full) ** 2).mean()
        psnr = 10 * torch.log10(1 / mse)
        black = 10 * torch.log10(1 / (full**2).mean())
        assert psnr > 12.5 and psnr > black + 2.5, (it.step, psnr, black)
        assert (approx - full).abs().mean() < 0.2

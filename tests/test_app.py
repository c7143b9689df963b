# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""The Gradio app (`app.py`) through its API: `gradio_client` against the app launched in-process on a free port,
with tiny random pipelines saved to a temporary folder (no trained weights, no network)."""

from __future__ import annotations

import math
import os
import socket
import time
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from conftest import require_or_skip
from PIL import Image

gradio_client = require_or_skip(module="gradio_client", install="pip install -e '.[test]'")
import gradio  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKL,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
)
from gradio_client import Client, handle_file  # noqa: E402

from ddpm_plugin import (  # noqa: E402
    DDPMUNet2DModel,
    GaussianDDPMScheduler,
    LatentDDPMPipeline,
    PixelDDPMPipeline,
    bits_per_dim,
)
from ddpm_plugin import app as support  # noqa: E402
from ddpm_plugin.pipelines.samplers import SAMPLERS  # noqa: E402


def tiny_unet(in_channels: int = 1) -> DDPMUNet2DModel:
    return DDPMUNet2DModel(
        sample_size=8,
        in_channels=in_channels,
        model_channels=16,
        channel_mult=(1, 2),
        layers_per_block=1,
        attention_resolutions=(4,),
        norm_num_groups=4,
    )


def save_tiny_pipelines(root, long_num_train_timesteps: int = 1000) -> dict[str, str]:
    """Tiny random pixel and latent pipelines (T = 50) and a pixel one with a long chain, saved under `root`."""
    torch.manual_seed(0)
    folders = {}
    pixel = PixelDDPMPipeline(unet=tiny_unet(), scheduler=GaussianDDPMScheduler(num_train_timesteps=50))
    folders["pixel"] = str(root / "pixel")
    pixel.save_pretrained(folders["pixel"])
    vae = AutoencoderKL(
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=2,
        norm_num_groups=4,
        sample_size=16,
    )
    latent = LatentDDPMPipeline(vae=vae, unet=tiny_unet(2), scheduler=GaussianDDPMScheduler(num_train_timesteps=50))
    folders["latent"] = str(root / "latent")
    latent.save_pretrained(folders["latent"])
    long = PixelDDPMPipeline(
        unet=tiny_unet(), scheduler=GaussianDDPMScheduler(num_train_timesteps=long_num_train_timesteps)
    )
    folders["long"] = str(root / "long")
    long.save_pretrained(folders["long"])
    return folders


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return save_tiny_pipelines(tmp_path_factory.mktemp("app_models"))


@pytest.fixture(scope="module")
def server(models):
    """The app on a free port (offline Hub), with the tiny pixel model preselected; yields (app module, url)."""
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    import app

    # every preview sent (max_preview_fps=0): the tests count one update per preview; its limit is tested apart
    settings = app.limits.AppSettings(model_dirs=(os.path.dirname(models["pixel"]),), max_preview_fps=0)
    demo = app.build_demo(default_model=models["pixel"], settings=settings)
    port = free_port()
    app.launch(demo, host="127.0.0.1", port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield app, f"http://127.0.0.1:{port}/"
    finally:
        demo.close()
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


@pytest.fixture(scope="module")
def client(server):
    return Client(server[1], verbose=False)


def read_png(path: str) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image).copy()


def reference_grid(
    folder: str, seed: int, steps: int, batch_size: int, scheduler_class=None, **scheduler_kwargs
) -> np.ndarray:
    """The final grid the app should show, computed with the library directly (`scheduler_class`: another sampler,
    made with `scheduler_kwargs`)."""
    pipe = PixelDDPMPipeline.from_pretrained(folder)
    if scheduler_class is not None:
        pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config, **scheduler_kwargs)
    images = pipe(
        batch_size=batch_size,
        generator=torch.Generator().manual_seed(seed),
        num_inference_steps=steps,
        output_type="np",
    ).images
    return support.make_grid(support.images_to_uint8(images), target_size=256)


def sample_args(model: str, seed: int = 0, steps: int = 10, batch_size: int = 2, preview_every: int = 3, sampler=None):
    return dict(
        model=model,
        sampler=sampler or "DDPM ancestral",
        steps=steps,
        seed=seed,
        batch_size=batch_size,
        preview_every=preview_every,
        api_name="/sample",
    )


def test_named_endpoints(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/sample", "/stop", "/forward_process", "/likelihood", "/latent_space"} <= set(endpoints)
    params = [p["parameter_name"] for p in endpoints["/sample"]["parameters"]]
    assert params == ["model", "sampler", "steps", "seed", "batch_size", "preview_every"]


def test_sample_streams_previews_and_final_grid(client, models):
    job = client.submit(**sample_args(models["pixel"], seed=3, steps=10, batch_size=2, preview_every=3))
    final = job.result(timeout=120)
    outputs = job.outputs()
    # the pipeline yields ceil(n / preview_every) items, the last one final; the app streams one update per item
    assert len(outputs) == math.ceil(10 / 3) == 4
    for xt, x0, grid, strip, download, status in outputs[:-1]:
        assert xt and x0 and grid is None and strip is None and download is None
        assert "Step" in status and "/ 10" in status
    xt_frames = [read_png(o[0]) for o in outputs]
    assert any(not np.array_equal(xt_frames[0], f) for f in xt_frames[1:])  # the preview changes
    xt, x0, grid, strip, download, status = final
    assert "Done" in status and 'data-state="done"' in status
    shown = read_png(grid)
    np.testing.assert_array_equal(shown, reference_grid(models["pixel"], seed=3, steps=10, batch_size=2))
    np.testing.assert_array_equal(read_png(download), shown)
    assert download.endswith(".png")
    assert read_png(strip).ndim == 2 and read_png(strip).shape[1] > read_png(strip).shape[0]  # a horizontal strip


def test_latent_stream_shows_z_t_channels_and_approximate_x0(client, models):
    job = client.submit(**sample_args(models["latent"], steps=12, batch_size=2, preview_every=1))
    final = job.result(timeout=120)
    outputs = job.outputs()
    assert len(outputs) == 12
    # x_t: the 2 latent channels of each 8x8 z_t side by side (a 16x8 mosaic per image, two images in a row)
    assert read_png(outputs[0][0]).shape[1] > read_png(outputs[0][0]).shape[0]
    # x0_hat: the cheap approximate image at every preview (a new picture every step, no "no change" updates)
    assert all(isinstance(o[1], str) for o in outputs[:-1])
    assert not np.array_equal(read_png(outputs[0][1]), read_png(outputs[-2][1]))
    assert read_png(final[2]).shape == (16 * 7, 33 * 7) and "Done" in final[5]  # two 16-px images in a row, 7x


def test_no_previews_gives_one_update(client, models):
    job = client.submit(**sample_args(models["pixel"], steps=5, preview_every=0))
    final = job.result(timeout=120)
    assert len(job.outputs()) == 1 and final[2] is not None and "Done" in final[5]


def test_same_seed_same_images_other_seed_differs(client, models):
    a = read_png(client.predict(**sample_args(models["latent"], seed=11, steps=6, batch_size=3))[2])
    b = read_png(client.predict(**sample_args(models["latent"], seed=11, steps=6, batch_size=3))[2])
    c = read_png(client.predict(**sample_args(models["latent"], seed=12, steps=6, batch_size=3))[2])
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize(
    "sampler, scheduler_class, scheduler_kwargs",
    [
        ("DDIM", DDIMScheduler, {}),
        ("DPM-Solver++", DPMSolverMultistepScheduler, {}),
        ("DPM-Solver++ SDE", DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++"}),
        ("Euler ancestral", EulerAncestralDiscreteScheduler, {}),
    ],
)
def test_other_samplers(client, models, sampler, scheduler_class, scheduler_kwargs):
    job = client.submit(**sample_args(models["pixel"], seed=5, steps=8, preview_every=2, sampler=sampler))
    final = job.result(timeout=120)
    assert len(job.outputs()) == 4 and "Done" in final[5] and sampler in final[5]
    # the sampler really ran: the grid is what diffusers' scheduler of that class makes from the same seed, and it
    # differs from the DDPM grid (a status text that merely repeats the input would pass the line above)
    shown = read_png(final[2])
    expected = reference_grid(
        models["pixel"], seed=5, steps=8, batch_size=2, scheduler_class=scheduler_class, **scheduler_kwargs
    )
    np.testing.assert_array_equal(shown, expected)
    assert not np.array_equal(shown, reference_grid(models["pixel"], seed=5, steps=8, batch_size=2))


def test_stop_keeps_what_was_made(client, models):
    job = client.submit(**sample_args(models["long"], steps=1000, batch_size=1, preview_every=1))
    deadline = time.monotonic() + 60
    while len(job.outputs()) < 2 and time.monotonic() < deadline and not job.done():
        time.sleep(0.02)
    assert "Stop requested (1 run)" in client.predict(api_name="/stop")
    xt, x0, grid, strip, download, status = job.result(timeout=60)
    assert 'data-state="stopped"' in status and "Stopped at step" in status
    stopped_at = int(status.split("Stopped at step ")[1].split(" /")[0])
    assert 2 <= stopped_at < 1000
    assert grid is not None and download is not None  # the current sample is kept
    assert "Nothing is running" in client.predict(api_name="/stop")


def test_two_clients_at_once_both_finish(server, models):
    url = server[1]
    clients = [Client(url, verbose=False), Client(url, verbose=False)]
    jobs = [
        c.submit(**sample_args(models["pixel"], seed=s, steps=30, preview_every=1)) for c, s in zip(clients, (21, 22))
    ]
    results = [j.result(timeout=120) for j in jobs]
    for job, result, seed in zip(jobs, results, (21, 22)):
        assert len(job.outputs()) == 30 and "Done" in result[5]
        np.testing.assert_array_equal(
            read_png(result[2]), reference_grid(models["pixel"], seed, steps=30, batch_size=2)
        )


def test_model_cache_loads_each_model_once(server, client, models):
    app = server[0]
    for model in (models["pixel"], models["latent"], models["pixel"], models["latent"]):
        client.predict(**sample_args(model, steps=2, preview_every=0))
    counts = app.CACHE.load_counts
    assert counts[os.path.realpath(models["pixel"])] == 1
    assert counts[os.path.realpath(models["latent"])] == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": "missing"}, "This model is not available here"),
        ({"model": "someone/some-ddpm"}, "offline"),
        ({"model": "EMPTY"}, "This model is not available here"),
        ({"steps": 60}, "steps=60 is more than this model's 50 diffusion steps"),
        ({"steps": 5000}, "greater than maximum value 1000"),
        ({"batch_size": 0}, "less than minimum value 1"),
        ({"batch_size": 17}, "greater than maximum value 16"),
        ({"sampler": "Euler"}, "Euler"),
    ],
)
def test_bad_sample_input_is_a_named_error(client, models, tmp_path, change, message):
    args = sample_args(models["pixel"], steps=5)
    args.update(change)
    if args["model"] == "EMPTY":
        args["model"] = str(tmp_path)
    with pytest.raises(Exception, match=message) as info:
        client.predict(**args)
    assert "Traceback" not in str(info.value)


def shown_images(app, images: torch.Tensor) -> np.ndarray:
    """Images `(batch_size, num_channels, height, width)` in [-1, 1] as the app shows them (an upscaled uint8 grid)."""
    return app.grid(support.images_to_uint8((images / 2 + 0.5).clamp(0, 1)))


def assert_images_close(shown: np.ndarray, expected: np.ndarray) -> None:
    """Equal up to one 8-bit level: float32 rounding of a computation done in another order may cross a level."""
    assert shown.shape == expected.shape
    assert np.abs(shown.astype(int) - expected.astype(int)).max() <= 1


def test_forward_process(server, client, models):
    app = server[0]
    x0, xt, latents, plot, info = client.predict(
        model=models["pixel"], digit_index=3, upload=None, timestep=20, seed=0, api_name="/forward_process"
    )
    # x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, Ho (4), with eps from the seed, computed here
    pipe = PixelDDPMPipeline.from_pretrained(models["pixel"])
    digit = support.to_model_input(support.digits_by_index([3]), pipe)
    eps = torch.randn(digit.shape, generator=torch.Generator().manual_seed(0))
    alpha_bar = float(torch.cumprod(1 - pipe.scheduler.betas.double(), 0)[20])
    expected = math.sqrt(alpha_bar) * digit + math.sqrt(1 - alpha_bar) * eps
    assert_images_close(read_png(x0), shown_images(app, digit))
    assert_images_close(read_png(xt), shown_images(app, expected))
    assert latents is None and "t = 20" in info and f"ᾱ_t = {alpha_bar:.4g}" in info
    # the SNR chart: the curve drawn once per schedule, t marked in red where the curve is at t
    chart = read_png(plot)
    snr = alpha_bar / (1 - alpha_bar)
    red = np.argwhere(np.all(chart == (214, 39, 40), axis=-1))
    assert chart.shape[-1] == 3 and len(red) > 20
    np.testing.assert_array_equal(chart, app.snr_chart(support.signal_to_noise_ratio(pipe.scheduler), 20))
    flat = np.full(50, snr)
    base = app._snr_chart(flat.tobytes())[0]
    marks = {t: np.argwhere(np.any(app.snr_chart(flat, t) != base, -1)) for t in (5, 40)}
    assert marks[5][:, 1].max() < marks[40][:, 1].min()  # the mark moves right with t
    with pytest.raises(Exception, match="t=50 is out of range; this model's timesteps are 0..49"):
        client.predict(
            model=models["pixel"], digit_index=3, upload=None, timestep=50, seed=0, api_name="/forward_process"
        )
    *_, latents, _, info = client.predict(
        model=models["latent"], digit_index=3, upload=None, timestep=10, seed=0, api_name="/forward_process"
    )
    assert latents is not None and "latent" in info


def test_upload_that_is_not_an_image(client, models, tmp_path):
    fake = tmp_path / "digit.png"
    fake.write_text("this is not a picture")
    with pytest.raises(Exception, match="'digit.png' is not an image"):
        client.predict(
            model=models["pixel"],
            digit_index=0,
            upload=handle_file(str(fake)),
            timestep=5,
            seed=0,
            api_name="/forward_process",
        )
    real = tmp_path / "three.png"
    Image.fromarray(np.tile(np.arange(28, dtype=np.uint8) * 9, (28, 1))).save(real)
    x0, *_, info = client.predict(
        model=models["pixel"],
        digit_index=0,
        upload=handle_file(str(real)),
        timestep=5,
        seed=0,
        api_name="/forward_process",
    )
    assert "uploaded three.png" in info


@pytest.mark.parametrize("kind", ["pixel", "latent"])
def test_likelihood(client, models, kind):
    images, summary, plot = client.predict(
        model=models[kind],
        first_index=0,
        count=2,
        upload=None,
        num_timesteps=5,
        full_chain=False,
        seed=0,
        api_name="/likelihood",
    )
    assert "bits/dim" in summary and "5-step strided chain" in summary and plot is not None
    assert ("−log p(x | z)" in summary) == (kind == "latent")  # the latent bound's VAE terms
    # the same digits, chain and seed through `bits_per_dim` directly; the app prints 3 decimals
    cls = LatentDDPMPipeline if kind == "latent" else PixelDDPMPipeline
    pipe = cls.from_pretrained(models[kind])
    digits = support.to_model_input(support.digits_by_index([0, 1]), pipe)
    expected = bits_per_dim(
        pipe.unet,
        GaussianDDPMScheduler.from_config(pipe.scheduler.config),
        digits,
        vae=getattr(pipe, "vae", None),
        generator=torch.Generator().manual_seed(0),
        num_timesteps=5,
    ).bpd
    mean = float(summary.split("**")[1].split(" ")[0])
    assert mean == pytest.approx(float(expected.mean()), abs=6e-4)
    # the first table's first column: bits/dim per image
    rows = [line for line in summary.splitlines() if line.startswith(("| 0 |", "| 1 |"))][:2]
    per_image = [float(row.split("|")[2]) for row in rows]
    np.testing.assert_allclose(per_image, expected.numpy(), atol=6e-4)


def test_latent_space(server, client, models):
    app = server[0]
    x0, recon, channels, info = client.predict(
        model=models["latent"], digit_index=1, upload=None, api_name="/latent_space"
    )
    # the reconstruction is decoder(mean of q(z | x)), computed here with the pipeline's AutoencoderKL
    pipe = LatentDDPMPipeline.from_pretrained(models["latent"])
    digit = support.to_model_input(support.digits_by_index([1]), pipe)
    with torch.no_grad():
        z = pipe.vae.encode(digit).latent_dist.mode()
        reconstruction = pipe.vae.decode(z).sample
    assert_images_close(read_png(x0), shown_images(app, digit))
    assert_images_close(read_png(recon), shown_images(app, reconstruction))
    assert read_png(channels).shape[1] > read_png(channels).shape[0]  # 2 channels side by side
    scale = pipe.vae.config.scaling_factor
    assert "(2, 8, 8)" in info and f"std(z_0) = {float((z * scale).std()):.3f}" in info
    with pytest.raises(Exception, match="needs a latent model"):
        client.predict(model=models["pixel"], digit_index=1, upload=None, api_name="/latent_space")


def test_image_views_of_a_bfloat16_latent_model(models):
    """The app runs the networks in bfloat16 where the CPU computes it natively: the forward process and the latent
    view then feed a float32 digit to a bfloat16 VAE (which raised "Input type (float) and bias type (BFloat16)")."""
    fp32 = LatentDDPMPipeline.from_pretrained(models["latent"])
    bf16 = LatentDDPMPipeline.from_pretrained(models["latent"], torch_dtype=torch.bfloat16)
    assert bf16.vae.dtype == torch.bfloat16
    digit = support.to_model_input(support.digits_by_index([3]), fp32)
    # the diffusion's arithmetic stays float32; bfloat16 keeps 8 bits of mantissa, about one 8-bit grey level (the
    # latent channels are shown stretched to their own range, which magnifies it a little)
    for view in (lambda p: support.forward_process(p, digit, 10, seed=0), lambda p: support.encode_decode(p, digit)):
        want, got = view(fp32), view(bf16)
        for key, value in want.items():
            if isinstance(value, np.ndarray):
                diff = np.abs(got[key].astype(int) - value.astype(int))
                assert diff.max() <= 8 and diff.mean() <= 2.0, (key, diff.max(), diff.mean())
            elif isinstance(value, torch.Tensor):
                assert got[key].dtype == value.dtype == torch.float32, key
                torch.testing.assert_close(got[key], value, atol=0.05, rtol=0.02)


def test_import_has_no_side_effects(server):
    """Importing app.py (as Spaces does) builds `demo` but loads no model, starts no server and writes no file."""
    app = server[0]
    assert isinstance(app.demo, gradio.Blocks) and not app.demo.is_running  # the tests launched their own Blocks
    assert not any(key.startswith("bundled:") for key in app.CACHE.load_counts)  # the default model was never loaded
    assert not os.path.exists(os.path.splitext(app.__file__)[0] + ".pyi")  # gradio writes one for component subclasses


def model_dropdown(demo: gradio.Blocks) -> gradio.Dropdown:
    (dropdown,) = [block for block in demo.blocks.values() if getattr(block, "elem_id", None) == "model"]
    return dropdown


def test_main_flags_and_environment(server, models, monkeypatch):
    """`python app.py --host --port --model`, and their defaults from the environment; nothing is launched here."""
    app = server[0]
    launched = []
    monkeypatch.setattr(app, "launch", lambda demo, host=None, port=None, **kw: launched.append((demo, host, port)))
    app.main(["--host", "0.0.0.0", "--port", "8123", "--model", models["pixel"]])
    demo, host, port = launched[-1]
    assert (host, port) == ("0.0.0.0", 8123)
    assert demo is not app.demo and model_dropdown(demo).value == models["pixel"]
    monkeypatch.setenv("GRADIO_SERVER_NAME", "127.0.0.2")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7999")
    app.main([])
    demo, host, port = launched[-1]
    assert (host, port) == ("127.0.0.2", 7999)
    assert model_dropdown(demo).value == app.DEFAULT_MODEL == "bundled:latent"  # settings from flags: a new demo
    monkeypatch.setenv(app.MODEL_ENV, models["latent"])
    assert model_dropdown(app.build_demo()).value == models["latent"]
    with pytest.raises(SystemExit):
        app.main(["--port", "eighty"])
    assert len(launched) == 2


def test_make_grid_tiles_and_upscales_with_nearest_neighbour():
    images = np.arange(4 * 8 * 8, dtype=np.uint8).reshape(4, 8, 8, 1)
    grid = support.make_grid(images, target_size=256)  # 2x2 tiles with a 1-pixel border: 17x17, upscaled 15x
    assert grid.shape == (255, 255)
    np.testing.assert_array_equal(grid[::15, ::15][:8, :8], images[0, :, :, 0])
    np.testing.assert_array_equal(grid[::15, ::15][9:, 9:], images[3, :, :, 0])
    assert (grid[::15, ::15][8] == 128).all()  # the grey border
    block = grid[:15, :15]
    assert (block == images[0, 0, 0, 0]).all()  # one source pixel -> one uniform 15x15 block
    rgb = support.make_grid(np.zeros((3, 28, 28, 3), np.uint8), target_size=256)
    assert rgb.shape == (57 * 4, 57 * 4, 3)
    latents = support.make_grid(np.zeros((2, 7, 7, 4), np.uint8), target_size=64)  # 4 channels: a tile each
    assert latents.shape == (15 * 2, 31 * 2)
    z = torch.arange(2 * 4 * 7 * 7, dtype=torch.float32).reshape(2, 4, 7, 7) / 196 * 6 - 3  # spans [-3, 3]
    mosaic = support.latents_to_display(z)  # the 4 channels of each latent in a 2x2 block
    assert mosaic.shape == (2, 14, 14, 1) and mosaic.dtype == np.uint8
    expected = ((z.clamp(-3, 3) / 6 + 0.5) * 255 + 0.5).to(torch.uint8).numpy()
    np.testing.assert_array_equal(mosaic[1, :7, 7:, 0], expected[1, 1])  # channel 1: top right
    np.testing.assert_array_equal(mosaic[1, 7:, :7, 0], expected[1, 2])  # channel 2: bottom left


@contextmanager
def app_settings(app, models, **changes):
    """The app under settings that offer the tiny models' folder (other tests build demos with other settings)."""
    previous = app.SETTINGS
    changes = {"max_preview_fps": 0, **changes}
    app.configure(app.limits.AppSettings(model_dirs=(os.path.dirname(models["pixel"]),), **changes))
    try:
        yield
    finally:
        app.configure(previous)


def test_previews_per_second_are_limited(server, models):
    """A fast run sends at most `max_preview_fps` previews a second (the first at once, the final grid always):
    each preview costs the server two PNG grids and a message, which slowed the other visitors' calls."""
    app = server[0]
    for fps in (4.0, 0):
        with app_settings(app, models, max_preview_fps=fps):
            start = time.perf_counter()
            outputs = list(app.sample(models["long"], "DDPM ancestral", 300, 0, 1, 1))
            elapsed = time.perf_counter() - start
        previews, final = outputs[:-1], outputs[-1]
        assert "Done" in final[5] and final[2] is not None and all(o[2] is None for o in previews)
        if fps:
            assert 1 <= len(previews) <= elapsed * fps + 1, (len(previews), elapsed)
        else:
            assert len(previews) == 299  # every step but the last (the final item)
    assert app.limits.AppSettings(max_preview_fps=0).max_preview_fps == 0
    with pytest.raises(ValueError, match=r"--max-preview-fps must be 0 \(no limit\) or positive, got -1"):
        app.limits.AppSettings(max_preview_fps=-1)


def test_latent_previews_call_the_vae_decoder_for_the_final_images_only(server, models):
    """Previews every step show the approximate x0_hat (no decoder call); one decoder call makes the final images."""
    app = server[0]
    with app_settings(app, models):
        check_latent_previews_call_the_decoder_once(app, models)


def check_latent_previews_call_the_decoder_once(app, models):
    pipe = app.load_model(models["latent"])
    expected_map = pipe.latent_to_image_map()  # fitted (with the decoder) on first use, then cached per VAE
    calls = []
    hook = pipe.vae.decoder.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    try:
        outputs = list(app.sample(models["latent"], "DDPM ancestral", 9, 4, 2, 1))
    finally:
        hook.remove()
    assert len(outputs) == 9 and "Done" in outputs[-1][5]
    assert len(calls) == 1 and calls[0] == 2  # the output (its z0_hat is the output itself), in one call
    assert all(isinstance(o[1], np.ndarray) for o in outputs[:-1])  # an x0_hat picture at every preview
    # the previews' x0_hat is the fitted map's image of the run's z0_hat
    run = support.make_run_pipeline(pipe, support.make_scheduler(pipe, "DDPM ancestral"))
    items = list(
        run.iter_previews(
            batch_size=2,
            generator=torch.Generator().manual_seed(4),
            num_inference_steps=9,
            preview_every=1,
            output_type="latent",
        )
    )
    approx = support.images_to_uint8((expected_map(items[0].raw_pred_original_sample) / 2 + 0.5).clamp(0, 1))
    np.testing.assert_array_equal(outputs[0][1], support.make_grid(approx, target_size=app.PREVIEW_SIZE))
    # the final grid is the VAE decode of the output latents
    final = support.tensor_to_uint8(pipe.decode_latents(items[-1].images).clamp(-1, 1))
    np.testing.assert_array_equal(outputs[-1][2], support.make_grid(final, target_size=app.PREVIEW_SIZE))


def test_latent_trajectory_reuses_the_approximate_previews():
    """The strip holds the first image's approximate x0_hat at up to 7 preview steps, then the decoded output; the
    final item costs one decoder call."""
    from types import SimpleNamespace

    from ddpm_plugin.pipelines import DDPMPreview

    decoded = []

    def upsample(latents):  # 7x7 -> 28x28, the first channel
        return latents[:, :1].repeat_interleave(4, 2).repeat_interleave(4, 3)

    def decode_latents(latents):
        decoded.append(latents.shape[0])
        return upsample(latents).tanh()  # [-1, 1]

    def approx(latents):
        return (upsample(latents) / 2 + 0.5).clamp(0, 1)

    renderer = support.PreviewRenderer(SimpleNamespace(vae=object(), decode_latents=decode_latents), target_size=64)
    first_z0 = []
    for step in range(1, 21):
        z = torch.randn(2, 4, 7, 7)
        first_z0.append(z[:1])
        item = DDPMPreview(
            step=step,
            num_steps=21,
            timestep=21 - step,
            raw_sample=z,
            raw_pred_original_sample=z,
            render=lambda x: x,
            render_approx=approx,
        )
        xt, x0 = renderer.preview(item)
        assert xt.dtype == np.uint8
        np.testing.assert_array_equal(x0, support.make_grid(support.images_to_uint8(approx(z)), target_size=64))
    assert decoded == []  # no decoder call during the previews
    out = torch.randn(2, 4, 7, 7)
    final = renderer.final(
        DDPMPreview(
            step=21,
            num_steps=21,
            timestep=0,
            sample=out,
            final=True,
            images=out,
            raw_sample=out,
            raw_pred_original_sample=out,
        )
    )
    assert decoded == [2]  # one call: the 2 outputs (z0_hat is the output itself)
    assert final["trajectory_steps"] == [1, 4, 7, 10, 12, 15, 18, 21]
    frames = [support.images_to_uint8(approx(first_z0[k - 1]))[0] for k in (1, 4, 7, 10, 12, 15, 18)]
    frames.append(support.tensor_to_uint8(decode_latents(out[:1]))[0])
    np.testing.assert_array_equal(final["trajectory"], support.make_grid(np.stack(frames), ncols=8, target_size=768))


def test_model_choice_selects_the_pipelines_default_sampler_and_steps(server, models):
    app = server[0]
    folder = os.path.join(os.path.dirname(models["pixel"]), "sde_default")
    torch.manual_seed(0)
    PixelDDPMPipeline(
        unet=tiny_unet(),
        scheduler=GaussianDDPMScheduler(num_train_timesteps=50),
        default_num_inference_steps=12,
        default_sampler="dpm-sde",
    ).save_pretrained(folder)
    with app_settings(app, models):
        info, sampler, steps, timestep, nll_steps = app.model_info(folder, 10, 10)
        assert sampler["value"] == "DPM-Solver++ SDE" and steps["value"] == 12 and steps["maximum"] == 50
        _, sampler, steps, *_ = app.model_info(models["pixel"], 10, 10)  # default_sampler "ddpm", 1000 steps > T
    assert sampler["value"] == "DDPM ancestral" and steps["value"] == 50
    assert set(support.SAMPLERS.values()) == set(SAMPLERS)  # every library sampler is offered


def test_bf16_app_samples_in_bf16_and_keeps_the_likelihood_in_float32(server, models):
    """Under `--dtype bfloat16` sampling runs the bf16 networks; bits/dim still uses the float32 weights."""
    app = server[0]
    with pytest.raises(ValueError, match="--dtype must be one of"):
        app.limits.AppSettings(dtype="float16")
    assert app.limits.AppSettings.from_env({"DDPM_APP_DTYPE": "bfloat16"}).dtype == "bfloat16"
    with app_settings(app, models, dtype="bfloat16"):
        assert app.load_model(models["latent"]).unet.dtype == torch.bfloat16
        assert app.load_model(models["latent"]).vae.dtype == torch.bfloat16
        outputs = list(app.sample(models["latent"], "DPM-Solver++ SDE", 4, 0, 2, 2))
        assert "Done" in outputs[-1][5] and outputs[-1][2].dtype == np.uint8
        _, summary, _ = app.likelihood(models["pixel"], 0, 2, None, 5, False, 0)
    pipe = PixelDDPMPipeline.from_pretrained(models["pixel"])
    expected = bits_per_dim(
        pipe.unet,
        GaussianDDPMScheduler.from_config(pipe.scheduler.config),
        support.to_model_input(support.digits_by_index([0, 1]), pipe),
        generator=torch.Generator().manual_seed(0),
        num_timesteps=5,
    ).bpd
    assert float(summary.split("**")[1].split(" ")[0]) == pytest.approx(float(expected.mean()), abs=6e-4)

# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""Watch a DDPM sample emerge from noise, step by step: the Gradio app (Hugging Face Spaces entry point).

UI only: sampling, previews, the forward process, the likelihood and the VAE come from `ddpm_plugin` (pipelines'
`iter_previews`, the scheduler's `add_noise` / `alphas_cumprod`, `bits_per_dim`) through `ddpm_plugin.app`.
Importing this module builds `demo` and nothing else: models load on first use and are cached.

    python app.py [--host 127.0.0.1] [--port 7860] [--model bundled:latent | bundled:pixel | FOLDER | HUB_ID]
                  [--model-dir DIR ...] [--max-seconds S] [--max-compute N] ... (`python app.py --help`)

Host and port also come from `GRADIO_SERVER_NAME` / `GRADIO_SERVER_PORT`, the default model from `DDPM_APP_MODEL`, the
operator's limits (`ddpm_plugin.app.limits.AppSettings`) from `DDPM_APP_*` variables. Visitors may load the bundled
models, Hub ids and pipeline folders under the `--model-dir` folders (`ddpm_plugin.app.access`).

Named API endpoints (`gradio_client`): `/sample` (streams previews), `/stop`, `/forward_process`, `/likelihood`,
`/latent_space`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import html
import logging
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import gradio as gr
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from ddpm_plugin import app as support
from ddpm_plugin import precision
from ddpm_plugin.app import access, fairness, jobs, limits, uploads
from ddpm_plugin.resolve import load_pipeline

logger = logging.getLogger("ddpm_app")

SETTINGS = limits.AppSettings.from_env()  # the operator's limits; `build_demo` sets them
POLICY = access.visitor_policy(SETTINGS)  # what a visitor may load, from SETTINGS
CACHE = access.PipelineLRU(SETTINGS.cache_size)  # model key -> loaded pipeline, shared read-only by all runs
JOBS = jobs.JobRegistry()  # session -> running jobs, for Stop, time limits and clients that left
MODEL_ENV = "DDPM_APP_MODEL"
DEFAULT_MODEL = "bundled:latent"
PREVIEW_SIZE = 256  # previews and grids are upscaled (nearest neighbour) to about this many pixels
MAX_SEED = 2**32 - 1
MAX_LIKELIHOOD_DIGITS = 16
_RED, _RED_HEX = (214, 39, 40), "#d62728"  # matplotlib's tab:red
HEAVY = {"concurrency_id": "model"}  # sampling, likelihood, latent view: `SETTINGS.concurrency` at once
CHEAP = {"concurrency_id": "cheap"}  # forward process, model info: their own slots, fast while sampling runs
PER_SESSION = {"model": 1, "cheap": 2}  # jobs one visitor session may have queued or running, per group

MODEL_CHOICES = [("Bundled latent model (MNIST)", "bundled:latent"), ("Bundled pixel model (MNIST)", "bundled:pixel")]
MODEL_HELP = "Pick a bundled model, or type a Hub id (owner/name) or a model folder this app offers and press Enter."

INTRO = """# DDPM: watch a digit emerge from noise
Denoising diffusion (Ho et al. 2020) starts from pure noise x_T and removes a little of it at every step.
**Sample** streams the current x_t and the model's guess of the clean image x̂_0 (Ho (15)) as they sharpen;
**Forward process** adds noise to a digit with q(x_t | x_0); **Likelihood** shows where the bits of
-log p(x) go; **Latent space** shows what the VAE of the latent model sees."""


# ---------------------------------------------------------------------------------------------------- errors
@contextmanager
def user_errors(action: str):
    """Turns a user's mistake (ValueError) into a `gr.Error` with its message, anything else into a short one."""
    try:
        yield
    except gr.Error:
        raise
    except ValueError as err:
        raise gr.Error(html.escape(access.scrub_paths(str(err)), quote=False), print_exception=False) from None
    except Exception as err:  # a bug or an odd model: log the traceback, show one line without server paths
        logger.exception("%s failed", action)
        message = access.scrub_paths(f"{action} failed: {type(err).__name__}: {err}")
        raise gr.Error(html.escape(message, quote=False), print_exception=False) from None


def check_int(name: str, value, low: int, high: int) -> int:
    """An integer in [low, high], or a gr.Error naming the parameter and the allowed range."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not number.is_integer() or not low <= number <= high:
        raise gr.Error(f"{name} must be a whole number in [{low}, {high}], got {value!r}.", print_exception=False)
    return int(number)


def guarded(component, field: str, allowed: str):
    """`component` whose input that it cannot read (a string or a list for a number, NaN, None) gives a `gr.Error`
    naming `field` and what is `allowed`, not gradio's generic error and a traceback in the log.

    The check wraps the instance's `preprocess`: subclassing a gradio component would write a `.pyi` file next to
    this module at import.
    """
    preprocess = component.preprocess

    def checked_preprocess(payload):
        bad = payload is None or isinstance(payload, list | dict) or payload != payload  # NaN != NaN
        bad = bad or (isinstance(payload, bool) and not isinstance(component, gr.Checkbox))
        if not bad:
            try:
                return preprocess(payload)
            except gr.Error:
                raise
            except Exception:
                pass
        raise gr.Error(f"{field} must be {allowed}, got {payload!r}.", print_exception=False)

    component.preprocess = checked_preprocess
    return component


def image_upload(**kwargs) -> gr.Image:
    """A `gr.Image` upload checked before gradio decodes anything: a file over the size or pixel limit, or one that
    is not an image, gives a `gr.Error` naming it (`uploads.check_upload`); the app converts the mode itself."""
    component = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"], **kwargs)
    preprocess = component.preprocess

    def checked_preprocess(payload):
        if payload is None:
            return None
        path = getattr(payload, "path", None)
        name = getattr(payload, "orig_name", None) or os.path.basename(str(path or ""))
        if not path:
            raise gr.Error("Upload the image as a file (PNG or JPEG).", print_exception=False)
        with user_errors("The upload"):
            uploads.check_upload(path, _upload_bytes(), SETTINGS.max_upload_pixels, name)
        try:
            return preprocess(payload)
        except Exception as err:
            raise gr.Error(
                f"The upload {name!r} is not an image ({type(err).__name__}); upload a PNG or JPEG picture of a digit.",
                print_exception=False,
            ) from None

    component.preprocess = checked_preprocess
    return component


def _upload_bytes() -> int:
    return int(SETTINGS.max_upload_mb * 1e6)


# ---------------------------------------------------------------------------------------------------- display
def grid(images, ncols: int | None = None, size: int = PREVIEW_SIZE) -> np.ndarray | None:
    """Pipeline images (any output type) -> one upscaled uint8 grid, or None."""
    if images is None:
        return None
    return support.make_grid(support.images_to_uint8(images), ncols=ncols, target_size=size)


def status_html(state: str, text: str, step: int = 0, num_steps: int = 0) -> str:
    bar = f'<progress value="{step}" max="{max(num_steps, 1)}"></progress> ' if num_steps else ""
    return f'<div class="ddpm-status" data-state="{state}">{bar}<span>{html.escape(text)}</span></div>'


def save_png(array: np.ndarray, folder: str, name: str) -> str:
    path = os.path.join(folder, name)
    Image.fromarray(array).save(path)
    return path


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "local"


def _start_job(request: gr.Request | None):
    """A job of the caller's session with the operator's time limit, ending when its client leaves."""
    alive = (lambda: fairness.client_alive(request)) if request is not None else None
    return JOBS.start(_session(request), SETTINGS.max_seconds, alive)


# ---------------------------------------------------------------------------------------------------- models
def load_model(model: str, float32: bool = False):
    """
    The cached pipeline of a visitor's model string, loaded on first use through the library's resolver under
    `POLICY` (`access.resolve_visitor_model`: anything it refuses gets one message that reveals nothing), its networks
    in the operator's dtype (`SETTINGS.dtype`; auto: `precision.default_dtype`, bf16 where the CPU has it natively),
    or with `float32=True` in float32 as saved (the likelihood); where the dtype is float32 both are one pipeline.
    """
    resolved = access.resolve_visitor_model(model, POLICY)
    dtype = torch.float32 if float32 else precision.resolve_dtype(SETTINGS.dtype, "cpu")

    def load():
        try:
            # float32: as saved, no cast
            pipe = load_pipeline(resolved, POLICY, torch_dtype=None if dtype == torch.float32 else dtype)
        except OSError as err:  # a damaged file: named by the model the visitor chose (user_errors scrubs the path)
            raise ValueError(f"The model {resolved.display_name!r} could not be loaded: {err}") from None
        pipe.set_progress_bar_config(disable=True)
        return pipe

    key = str(resolved.path) if resolved.kind == "folder" else resolved.display_name
    return CACHE.get(key if dtype == torch.float32 else f"{key} ({str(dtype).removeprefix('torch.')})", load)


def image_pixels(pipe) -> int:
    _, height, width = support.pipeline_image_shape(pipe)
    return height * width


# ---------------------------------------------------------------------------------------------------- sampling
def sample(
    model: str,
    sampler: str,
    steps: float,
    seed: float,
    batch_size: float,
    preview_every: float,
    request: gr.Request = None,
) -> Iterator[tuple]:
    """
    Samples `batch_size` images and streams, every `preview_every` steps, the current x_t and the predicted x0_hat.

    Yields tuples (x_t grid, x0_hat grid, final grid, trajectory strip, PNG path, status HTML), one per item of the
    pipeline's `iter_previews` (`ceil(steps / preview_every)` of them, 1 with `preview_every=0`), except that at most
    `max_preview_fps` previews a second are sent (the operator's setting; a faster run skips the previews in
    between); the last one holds the final grid, the trajectory and the download, also after Stop. For a latent
    model x_t is shown as the channels of z_t and x0_hat as the cheap approximate image of z0_hat (a linear map fitted on the VAE, no decoder call); the
    VAE decodes the final images only. An x0_hat that did not change is sent as a no-change update (`gr.skip()`,
    `{"__type__": "update"}` for API clients).
    """
    steps = check_int("steps", steps, 1, support.MAX_STEPS)
    seed = check_int("seed", seed, 0, MAX_SEED)
    batch_size = check_int("batch size", batch_size, 1, support.MAX_BATCH_SIZE)
    preview_every = check_int("preview every", preview_every, 0, support.MAX_STEPS)
    with user_errors("Loading the model"):
        pipe = load_model(model)
        run = support.make_run_pipeline(pipe, support.make_scheduler(pipe, sampler))
        num_train = run.scheduler.config.num_train_timesteps
        if steps > num_train:
            raise ValueError(
                f"steps={steps} is more than this model's {num_train} diffusion steps; choose 1..{num_train}."
            )
        limits.check_compute(image_pixels(run), batch_size, steps, SETTINGS.max_compute, "This run")
        summary = support.model_summary(run)
    with _start_job(request) as job:
        yield from _sample_run(run, job, sampler, steps, seed, batch_size, preview_every, summary)


def _sample_run(run, job, sampler: str, steps: int, seed: int, batch_size: int, preview_every: int, summary: str):
    renderer = support.PreviewRenderer(run, target_size=PREVIEW_SIZE)
    previews = run.iter_previews(
        batch_size=batch_size,
        generator=torch.Generator().manual_seed(seed),
        num_inference_steps=steps,
        preview_every=preview_every,
        output_type=renderer.output_type,
        callback_on_step_end=job.step_callback,
    )
    start = time.perf_counter()
    last_x0 = None
    # at most `max_preview_fps` previews a second: a step faster than that skips its preview (the trajectory strip
    # then picks its frames from the previews sent)
    min_interval = 1.0 / SETTINGS.max_preview_fps if SETTINGS.max_preview_fps > 0 else 0.0
    last_sent = -float("inf")
    folder = tempfile.mkdtemp(prefix="ddpm_app_")  # gradio copies the download into its cache before the next step
    try:
        with user_errors("Sampling"):
            for item in previews:
                elapsed = time.perf_counter() - start
                if not item.final:
                    if elapsed - last_sent < min_interval:
                        continue
                    last_sent = elapsed
                    xt, x0 = renderer.preview(item)
                    # an x0_hat that was not made again is not sent again: gradio would rewrite its file while the
                    # browser may be reading it
                    x0_out = gr.skip() if x0 is not None and x0 is last_x0 else x0
                    last_x0 = x0
                    text = f"Step {item.step} / {item.num_steps} · t = {item.timestep} · {elapsed:.1f} s"
                    yield xt, x0_out, None, None, None, status_html("running", text, item.step, item.num_steps)
                    continue
                out = renderer.final(item)
                name = f"samples_{sampler.replace(' ', '-').lower()}_seed{seed}_{steps}steps.png"
                path = save_png(out["images"], folder, name)
                stopped = item.step < item.num_steps
                if stopped:
                    text = (
                        f"{job.describe(job.reason() or 'stop')} at step {item.step} / {item.num_steps} "
                        f"(t = {item.timestep}) after {elapsed:.1f} s"
                    )
                else:
                    text = (
                        f"Done: {item.num_steps} steps of {sampler}, {batch_size} image(s), seed {seed}, "
                        f"{elapsed:.1f} s"
                    )
                if out["trajectory_steps"]:
                    shown = ", ".join(str(k) for k in out["trajectory_steps"])
                    text += f". Trajectory: {out['trajectory_label']} at steps {shown}"
                text += f". Model: {summary}."
                status = status_html("stopped" if stopped else "done", text, item.step, item.num_steps)
                yield out["xt"], out["x0"], out["images"], out["trajectory"], path, status
    finally:
        previews.close()
        shutil.rmtree(folder, ignore_errors=True)


def stop(request: gr.Request = None) -> str:
    """Stops this session's jobs (never another visitor's): sampling at its next step, keeping its last images."""
    count = JOBS.stop(_session(request))
    return f"Stop requested ({count} run{'s' if count != 1 else ''})." if count else "Nothing is running."


def model_info(model: str, timestep: float, nll_steps: float):
    """
    Loads the model (cached), selects its default sampler and step count (the pipeline's `default_sampler` and
    `default_num_inference_steps`, within its T) and fits the step and timestep sliders to its T; clamps the other
    values only when above.
    """
    with user_errors("Loading the model"):
        pipe = load_model(model)
        num_train = pipe.scheduler.config.num_train_timesteps
        summary = support.model_summary(pipe)
        max_steps = min(num_train, support.MAX_STEPS)
        default_steps = min(int(pipe.config.get("default_num_inference_steps", None) or max_steps), max_steps)

    def fit(value: float, maximum: int):
        return (
            gr.update(maximum=maximum)
            if value is None or value <= maximum
            else gr.update(maximum=maximum, value=maximum)
        )

    return (
        f"**Model:** {html.escape(summary)}",
        gr.update(value=support.default_sampler_label(pipe)),
        gr.update(maximum=max_steps, value=default_steps),
        fit(timestep, num_train - 1),
        fit(nll_steps, num_train),
    )


def random_seed() -> int:
    return random.randint(0, MAX_SEED)


# ---------------------------------------------------------------------------------------------------- inputs
def digits_input(pipe, indices: list[int], upload: str | None):
    """The clean images (pipeline size, [-1, 1]) from an upload or held-out digits, with a caption."""
    if upload:
        channels = support.pipeline_image_shape(pipe)[0]
        image = uploads.open_upload(upload, channels, _upload_bytes(), SETTINGS.max_upload_pixels)
        return support.to_model_input([image], pipe), f"uploaded {os.path.basename(upload)}"
    digits = support.digits_by_index(indices)
    shown = f"{indices[0]}" if len(indices) == 1 else f"{indices[0]}..{indices[-1]}"
    return support.to_model_input(list(digits), pipe), f"held-out MNIST digit {shown}"


# ---------------------------------------------------------------------------------------------------- forward
@functools.lru_cache(maxsize=8)
def _snr_chart(snr_bytes: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
    """The schedule's SNR curve drawn once per schedule (matplotlib is the costly part of a forward-process call), with
    the pixel position of every (t, SNR(t)) on it and the rows of the plot area, so marking a t draws nothing anew."""
    snr = np.frombuffer(snr_bytes, dtype=np.float64)
    fig = Figure(figsize=(5, 3), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.semilogy(np.arange(len(snr)), snr, color="tab:blue", label="SNR(t) = ᾱ_t / (1 − ᾱ_t)")
    ax.plot([], [], "o--", color=_RED_HEX, label="the t shown")
    ax.set_xlabel("timestep t")
    ax.set_ylabel("signal-to-noise ratio")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    image = np.asarray(canvas.buffer_rgba())[..., :3].copy()
    height = image.shape[0]
    xy = ax.transData.transform(np.column_stack([np.arange(len(snr)), snr]))
    cols = np.clip(np.rint(xy[:, 0]).astype(int), 0, image.shape[1] - 1)
    rows = np.clip(np.rint(height - xy[:, 1]).astype(int), 0, height - 1)
    _, y0, _, y1 = ax.bbox.extents  # display coordinates: origin at the bottom left
    return image, cols, rows, (int(np.ceil(height - y1)), int(np.floor(height - y0)))


def snr_chart(snr, timestep: int) -> np.ndarray:
    """The schedule's SNR curve `(height, width, 3)` uint8 with t marked (a dashed line and a dot)."""
    image, cols, rows, (top, bottom) = _snr_chart(np.ascontiguousarray(snr, dtype=np.float64).tobytes())
    chart = image.copy()
    col, row = cols[timestep], rows[timestep]
    dashes = np.arange(top, bottom)
    chart[dashes[(dashes - top) // 4 % 2 == 0], col] = _RED
    dy, dx = np.mgrid[-4:5, -4:5]
    disc = dy**2 + dx**2 <= 16
    ys, xs = row + dy[disc], col + dx[disc]
    keep = (ys >= 0) & (ys < chart.shape[0]) & (xs >= 0) & (xs < chart.shape[1])
    chart[ys[keep], xs[keep]] = _RED
    return chart


def forward_process(model: str, digit_index: float, upload: str | None, timestep: float, seed: float):
    """q(x_t | x_0), Ho (4), for a held-out digit or an upload, with the schedule's SNR curve marking t."""
    digit_index = check_int("digit index", digit_index, 0, 10**6)
    timestep = check_int("t", timestep, 0, support.MAX_STEPS)
    seed = check_int("seed", seed, 0, MAX_SEED)
    with user_errors("The forward process"):
        pipe = load_model(model)
        x0, caption = digits_input(pipe, [digit_index], upload)
        out = support.forward_process(pipe, x0, timestep, seed)
        snr = support.signal_to_noise_ratio(pipe.scheduler)
    latents = None if out["latents"] is None else support.make_grid(out["latents"], target_size=PREVIEW_SIZE)
    info = (
        f"x_0: {caption}. x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε at t = {timestep}: ᾱ_t = {out['alpha_bar']:.4g}, "
        f"SNR = {out['snr']:.4g}"
        + (
            " (the latent model diffuses z_0 = s·E(x_0); x_t shown decoded, noisy latent channels beside)."
            if latents is not None
            else "."
        )
    )
    return grid(out["x0"]), grid(out["xt"]), latents, snr_chart(snr, timestep), info


# ---------------------------------------------------------------------------------------------------- likelihood
def likelihood_figure(result, strided: bool) -> Figure:
    per_step = result.timestep_bpd.float().mean(0).cpu().numpy()  # (n_steps,)
    timesteps = np.asarray(result.timesteps.cpu() if hasattr(result.timesteps, "cpu") else result.timesteps)
    prior = float(result.prior_bpd.float().mean())
    decoder = float(result.decoder_bpd.float().mean())
    fig = Figure(figsize=(6, 3.2), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.plot(timesteps, per_step, ".-", color="tab:blue", label="KL terms L_{t-1} (per step)")
    ax.plot([0], [decoder], "s", color="tab:green", label=f"decoder L_0: {decoder:.3g}")
    top = int(max(timesteps.max(), 0)) + 1 if len(timesteps) else 1
    ax.plot([top], [max(prior, 1e-12)], "^", color="tab:red", label=f"prior L_T: {prior:.2g}")
    if np.all(per_step > 0) and decoder > 0:
        ax.set_yscale("log")
    ax.set_xlabel("timestep t" + (" (strided chain)" if strided else ""))
    ax.set_ylabel("bits / dim (mean over images)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def likelihood_table(columns: dict[str, object], count: int) -> str:
    """A markdown table: one row per image, one column per term (bits/dim)."""
    head = "| image | " + " | ".join(columns) + " |\n|" + "---|" * (len(columns) + 1) + "\n"
    rows = [f"| {i} | " + " | ".join(f"{float(v[i]):.3f}" for v in columns.values()) + " |" for i in range(count)]
    return head + "\n".join(rows)


def likelihood_summary(result, caption: str, elapsed: float) -> str:
    count = len(result.bpd)
    # the chain's last step is the decoder term, the others are KL terms
    chain = f"{result.timestep_bpd.shape[1] + 1}-step {'strided' if result.strided else 'full'} chain"
    text = f"**{float(result.bpd.float().mean()):.3f} bits/dim** (mean over {count} image(s): {caption}; {chain}; {elapsed:.1f} s)."
    diffusion = {
        "prior L_T": result.prior_bpd,
        "KL terms": result.timestep_bpd.sum(1),
        "decoder L_0": result.decoder_bpd,
    }
    if getattr(result, "reconstruction_bpd", None) is None:
        return text + "\n\n" + likelihood_table({"bits/dim": result.bpd, **diffusion}, count)
    latent = {
        "bits/dim": result.bpd,
        "−log p(x | z)": result.reconstruction_bpd,
        "log q(z | x)": result.posterior_log_prob_bpd,
        "−log p(z_0) bound": result.latent_prior_bpd,
        "−d log s": result.log_scale_bpd,
    }
    return (
        text
        + " Latent model (LSGM bound, docs/maths.md [LAT2]): the VAE's terms plus the diffusion bound on z_0, whose "
        + "terms the plot shows.\n\n"
        + likelihood_table(latent, count)
        + "\n\nThe diffusion bound on −log p(z_0):\n\n"
        + likelihood_table(diffusion, count)
        + (f"\n\n{html.escape(result.note)}" if getattr(result, "note", "") else "")
    )


def likelihood(
    model: str,
    first_index: float,
    count: float,
    upload: str | None,
    num_timesteps: float,
    full_chain: bool,
    seed: float,
    request: gr.Request = None,
):
    """Bits/dim (the ELBO of docs/maths.md [ELBO]) of held-out digits or an upload, and where the bits go; it ends
    with Stop, at the time limit and when its client leaves (the model checks the job before every call)."""
    first_index = check_int("first digit", first_index, 0, 10**6)
    count = check_int("number of digits", count, 1, MAX_LIKELIHOOD_DIGITS)
    num_timesteps = check_int("timesteps", num_timesteps, 1, support.MAX_STEPS)
    seed = check_int("seed", seed, 0, MAX_SEED)
    with user_errors("The likelihood"):
        pipe = load_model(model, float32=True)  # bits/dim with the float32 weights, whatever the sampling dtype
        x0, caption = digits_input(pipe, list(range(first_index, first_index + count)), upload)
        chain = pipe.scheduler.config.num_train_timesteps if full_chain else num_timesteps
        limits.check_compute(image_pixels(pipe), len(x0), chain, SETTINGS.max_compute, "This likelihood")
        start = time.perf_counter()
        with _start_job(request) as job:
            checked = SimpleNamespace(
                unet=jobs.checked_model(pipe.unet, job, "The likelihood"),
                scheduler=pipe.scheduler,
                vae=getattr(pipe, "vae", None),
            )
            result = support.likelihood(checked, x0, None if full_chain else num_timesteps, seed)
        elapsed = time.perf_counter() - start
        strided = bool(result.strided)
        summary = likelihood_summary(result, caption, elapsed)
        figure = likelihood_figure(result, strided)
    return grid(support.images_to_uint8((x0 / 2 + 0.5).clamp(0, 1))), summary, figure


# ---------------------------------------------------------------------------------------------------- latent
def latent_space(model: str, digit_index: float, upload: str | None):
    """The VAE of a latent model: a digit, its reconstruction and its latent channels."""
    digit_index = check_int("digit index", digit_index, 0, 10**6)
    with user_errors("The latent view"):
        pipe = load_model(model)
        x0, caption = digits_input(pipe, [digit_index], upload)
        out = support.encode_decode(pipe, x0)
    z0 = out["z0"]
    info = (
        f"{caption}: latents z_0 = s·E(x) of shape {tuple(z0.shape[1:])}, s = {pipe.vae.config.scaling_factor:.4g}, "
        f"std(z_0) = {out['std']:.3f} (each channel stretched to black..white for display)."
    )
    return (
        grid(out["x0"]),
        grid(out["reconstruction"]),
        support.make_grid(out["latents"], target_size=PREVIEW_SIZE),
        info,
    )


# ---------------------------------------------------------------------------------------------------- layout
CSS = """
.ddpm-status { font-size: 0.95rem; }
.ddpm-status progress { width: 12rem; vertical-align: middle; margin-right: 0.5rem; }
.pixelated img { image-rendering: pixelated; }
"""


def _image(label: str, elem_id: str | None = None, height: int | None = PREVIEW_SIZE + 16) -> gr.Image:
    return gr.Image(
        label=label,
        type="numpy",
        format="png",
        interactive=False,
        elem_id=elem_id,
        elem_classes=["pixelated"],
        height=height,
    )


def _digit_picker(prefix: str, default: int = 0):
    with gr.Row():
        index = guarded(
            gr.Slider(0, 499, value=default, step=1, label="Held-out MNIST digit #", elem_id=f"{prefix}_digit"),
            "digit index",
            "a whole number in [0, 499]",
        )
        shuffle = gr.Button("Random digit", scale=0, min_width=130)
    upload = image_upload(label="…or upload an image", height=140)
    shuffle.click(lambda: random.randint(0, 499), None, index, queue=False, api_visibility="private")
    return index, upload


def configure(settings: limits.AppSettings) -> None:
    """Makes `settings` the app's limits (a smaller cache drops its least recently used pipelines at the next load)."""
    global SETTINGS, POLICY
    SETTINGS, POLICY = settings, access.visitor_policy(settings)
    CACHE.max_size = settings.cache_size


def build_demo(default_model: str | None = None, settings: limits.AppSettings | None = None) -> gr.Blocks:
    """
    The app's Blocks under the operator's `settings` (default: from the `DDPM_APP_*` variables); `default_model`
    (else `$DDPM_APP_MODEL`, else the bundled latent model) is preselected, and visitors may load it also when it is
    a folder outside the `model_dirs`.
    """
    settings = settings or limits.AppSettings.from_env()
    default_model = default_model or os.environ.get(MODEL_ENV) or DEFAULT_MODEL
    if os.path.isfile(os.path.join(default_model, "model_index.json")):  # the operator's own choice of folder
        settings = dataclasses.replace(settings, model_dirs=(*settings.model_dirs, default_model))
    configure(settings)
    choices = list(MODEL_CHOICES)
    if default_model not in [value for _, value in choices]:
        choices.insert(0, (default_model, default_model))

    with gr.Blocks(
        title="DDPM: watch an image emerge from noise", analytics_enabled=False, delete_cache=(3600, 3600)
    ) as demo:
        gr.Markdown(INTRO)
        model = guarded(
            gr.Dropdown(
                choices=choices,
                value=default_model,
                allow_custom_value=True,
                label="Model",
                info=MODEL_HELP,
                elem_id="model",
            ),
            "model",
            "a model name (text)",
        )
        model_md = gr.Markdown("Model: loads on first use.", elem_id="model_info")
        with gr.Tabs():
            with gr.Tab("Sample", id="sample"):
                with gr.Row():
                    with gr.Column(scale=1, min_width=280):
                        sampler = guarded(
                            gr.Radio(list(support.SAMPLERS), value="DDPM ancestral", label="Sampler"),
                            "sampler",
                            f"one of {list(support.SAMPLERS)}",
                        )
                        steps = guarded(
                            gr.Slider(1, support.MAX_STEPS, value=50, step=1, label="Steps", elem_id="steps"),
                            "steps",
                            f"a whole number in [1, {support.MAX_STEPS}]",
                        )
                        with gr.Row():
                            seed = guarded(
                                gr.Number(
                                    value=0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed", elem_id="seed"
                                ),
                                "seed",
                                f"a whole number in [0, {MAX_SEED}]",
                            )
                            shuffle_seed = gr.Button("Random", scale=0, min_width=80, elem_id="random_seed")
                        batch_size = guarded(
                            gr.Slider(
                                1, support.MAX_BATCH_SIZE, value=4, step=1, label="Batch size", elem_id="batch_size"
                            ),
                            "batch size",
                            f"a whole number in [1, {support.MAX_BATCH_SIZE}]",
                        )
                        preview_every = guarded(
                            gr.Slider(
                                0,
                                100,
                                value=1,
                                step=1,
                                label="Preview every … steps",
                                info="0: only the final images",
                                elem_id="preview_every",
                            ),
                            "preview every",
                            "a whole number in [0, 100]",
                        )
                        with gr.Row():
                            generate = gr.Button("Generate", variant="primary", elem_id="generate")
                            stop_button = gr.Button("Stop", variant="stop", interactive=False, elem_id="stop")
                        stop_info = gr.Markdown(elem_id="stop_info")
                    with gr.Column(scale=2):
                        status = gr.HTML(status_html("idle", "Press Generate."), elem_id="status")
                        with gr.Row():
                            xt_image = _image("x_t (latent model: the channels of z_t)", "xt")
                            x0_image = _image("x̂_0: the model's guess of the clean image", "x0")
                        final_image = _image("Final images", "final", height=None)
                        strip_image = _image("Trajectory (first image)", "trajectory", height=None)
                        download = gr.File(label="Download the grid (PNG)", interactive=False, elem_id="download")
            with gr.Tab("Forward process", id="forward"):
                with gr.Row():
                    with gr.Column(scale=1, min_width=280):
                        fwd_digit, fwd_upload = _digit_picker("forward")
                        fwd_t = guarded(
                            gr.Slider(0, support.MAX_STEPS - 1, value=250, step=1, label="t", elem_id="forward_t"),
                            "t",
                            f"a whole number in [0, {support.MAX_STEPS - 1}]",
                        )
                        fwd_seed = guarded(
                            gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="Noise seed"),
                            "seed",
                            f"a whole number in [0, {MAX_SEED}]",
                        )
                        fwd_button = gr.Button("Add noise", variant="primary")
                    with gr.Column(scale=2):
                        with gr.Row():
                            fwd_x0 = _image("x_0")
                            fwd_xt = _image("x_t ~ q(x_t | x_0)", "forward_xt")
                            fwd_latents = _image("Noisy latent channels z_t (latent model)", height=None)
                        fwd_plot = gr.Image(
                            label="Signal-to-noise ratio of the schedule",
                            type="numpy",
                            format="png",
                            interactive=False,
                        )
                        fwd_info = gr.Markdown()
            with gr.Tab("Likelihood", id="likelihood"):
                with gr.Row():
                    with gr.Column(scale=1, min_width=280):
                        nll_first = guarded(
                            gr.Slider(0, 499, value=0, step=1, label="First held-out digit #"),
                            "first digit",
                            "a whole number in [0, 499]",
                        )
                        nll_count = guarded(
                            gr.Slider(1, MAX_LIKELIHOOD_DIGITS, value=4, step=1, label="Number of digits"),
                            "number of digits",
                            f"a whole number in [1, {MAX_LIKELIHOOD_DIGITS}]",
                        )
                        nll_upload = image_upload(label="…or upload an image", height=140)
                        nll_steps = guarded(
                            gr.Slider(
                                1,
                                support.MAX_STEPS,
                                value=100,
                                step=1,
                                label="Timesteps evaluated (strided chain)",
                                info="fewer is faster; a strided chain bounds a respaced model",
                            ),
                            "timesteps",
                            f"a whole number in [1, {support.MAX_STEPS}]",
                        )
                        nll_full = guarded(
                            gr.Checkbox(value=False, label="Full chain (all T timesteps; slow on CPU)"),
                            "full chain",
                            "true or false",
                        )
                        nll_seed = guarded(
                            gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed"),
                            "seed",
                            f"a whole number in [0, {MAX_SEED}]",
                        )
                        nll_button = gr.Button("Compute bits/dim", variant="primary")
                    with gr.Column(scale=2):
                        nll_images = _image("Images evaluated", height=None)
                        nll_summary = gr.Markdown()
                        nll_plot = gr.Plot(label="Where the bits go")
            with gr.Tab("Latent space", id="latent"):
                with gr.Row():
                    with gr.Column(scale=1, min_width=280):
                        lat_digit, lat_upload = _digit_picker("latent")
                        lat_button = gr.Button("Encode and decode", variant="primary")
                    with gr.Column(scale=2):
                        with gr.Row():
                            lat_x0 = _image("x")
                            lat_recon = _image("Reconstruction decoder(z_0 / s)")
                        lat_channels = _image("Latent channels of z_0", height=None)
                        lat_info = gr.Markdown()

        # ---- events
        sliders = [model_md, sampler, steps, fwd_t, nll_steps]
        for trigger in (demo.load, model.change):
            trigger(model_info, [model, fwd_t, nll_steps], sliders, api_visibility="private", **CHEAP)
        shuffle_seed.click(random_seed, None, seed, queue=False, api_visibility="private")
        started = generate.click(
            lambda: (gr.update(interactive=False), gr.update(interactive=True), ""),
            None,
            [generate, stop_button, stop_info],
            queue=False,
            api_visibility="private",
        )
        sampling = started.then(
            sample,
            [model, sampler, steps, seed, batch_size, preview_every],
            [xt_image, x0_image, final_image, strip_image, download, status],
            api_name="sample",
            show_progress="minimal",
            **HEAVY,
        )
        sampling.then(
            lambda: (gr.update(interactive=True), gr.update(interactive=False)),
            None,
            [generate, stop_button],
            queue=False,
            api_visibility="private",
        )
        stop_button.click(stop, None, stop_info, api_name="stop", queue=False, concurrency_limit=None)

        fwd_inputs = [model, fwd_digit, fwd_upload, fwd_t, fwd_seed]
        fwd_outputs = [fwd_x0, fwd_xt, fwd_latents, fwd_plot, fwd_info]
        fwd_button.click(forward_process, fwd_inputs, fwd_outputs, api_name="forward_process", **CHEAP)
        for trigger in (fwd_t.release, fwd_digit.release, fwd_upload.upload):
            trigger(
                forward_process, fwd_inputs, fwd_outputs, api_visibility="private", trigger_mode="always_last", **CHEAP
            )

        nll_button.click(
            likelihood,
            [model, nll_first, nll_count, nll_upload, nll_steps, nll_full, nll_seed],
            [nll_images, nll_summary, nll_plot],
            api_name="likelihood",
            **HEAVY,
        )
        lat_button.click(
            latent_space,
            [model, lat_digit, lat_upload],
            [lat_x0, lat_recon, lat_channels, lat_info],
            api_name="latent_space",
            **HEAVY,
        )
    return demo


def launch(demo: gr.Blocks, host: str | None = None, port: int | None = None, **kwargs):
    """
    Queues and launches `demo` under `SETTINGS`: every model call goes through the queue (`api_open=False`: the
    `/gradio_api/run/...` routes refuse queued endpoints, `/stop` stays outside it), `SETTINGS.concurrency` model runs
    and as many cheap calls at once, `SETTINGS.queue_size` jobs in all, `PER_SESSION` per visitor; uploads up to
    `SETTINGS.max_upload_mb`.
    """
    demo.queue(default_concurrency_limit=SETTINGS.concurrency, max_size=SETTINGS.queue_size, api_open=False)
    fairness.limit_queue(demo._queue, max_size=SETTINGS.queue_size, per_session=PER_SESSION, exempt={"stop"})
    return demo.launch(
        server_name=host,
        server_port=port,
        css=CSS,
        footer_links=["api", "settings"],
        max_file_size=_upload_bytes(),
        **kwargs,
    )


demo = build_demo()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="DDPM step-by-step sampling app (Gradio).")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument(
        "--model",
        default=None,
        help=f"preselected model: bundled:latent, bundled:pixel, a folder or a Hub id (${MODEL_ENV})",
    )
    limits.add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    app = build_demo(args.model, limits.settings_from_args(args))
    launch(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()

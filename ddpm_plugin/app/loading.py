# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""Loading and caching the app's pipelines and swapping their samplers (model ids: `bundled:latent`, `bundled:pixel`,
a local pipeline folder, or a Hub id); the per-visitor limits of the app.

This module is the app's one place for model loading; it is to be rebuilt on the library's model resolver.
"""

from __future__ import annotations

import copy
import json
import os
import re
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .runs import make_run_pipeline

__all__ = [
    "BUNDLED_MODELS",
    "MAX_BATCH_SIZE",
    "MAX_STEPS",
    "PIPELINE_CLASSES",
    "SAMPLERS",
    "PipelineCache",
    "load_pipeline",
    "make_scheduler",
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

# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""What the operator of the app allows: one settings dataclass, read from flags and environment variables, and the
per-run compute budget.

Every field of `AppSettings` is a command-line flag and an environment variable (named in its metadata); a flag wins
over the variable, the variable over the default. Nothing here imports gradio.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["MAX_BATCH_SIZE", "MAX_STEPS", "AppSettings", "add_arguments", "check_compute", "settings_from_args"]

# the app's sliders: images per run and sampling steps (the compute budget below bounds their product)
MAX_BATCH_SIZE = 16
MAX_STEPS = 1000


def _setting(default, flag: str, env: str, help: str, **kwargs):
    return field(default=default, metadata={"flag": flag, "env": env, "help": help, **kwargs})


@dataclass(frozen=True)
class AppSettings:
    """The operator's limits on what a visitor may load and run."""

    # folders whose pipeline subfolders visitors may load (none by default: bundled models and Hub ids only)
    model_dirs: tuple[str, ...] = _setting(
        (), "--model-dir", "DDPM_APP_MODEL_DIRS", "a folder whose pipeline subfolders visitors may load (repeatable)"
    )
    # the pipeline files of a Hub model (configs, safetensors, model card), checked before downloading
    max_model_mb: float = _setting(1024.0, "--max-model-mb", "DDPM_APP_MAX_MODEL_MB", "Hub download cap in MB")
    # loaded pipelines kept in memory, least recently used dropped first
    cache_size: int = _setting(4, "--cache-size", "DDPM_APP_CACHE_SIZE", "pipelines kept loaded (LRU)")
    # image pixels x batch x steps of one run (the bundled 32x32 models at batch 16 x 1000 steps fit)
    max_compute: int = _setting(
        32 * 32 * 16 * 1000, "--max-compute", "DDPM_APP_MAX_COMPUTE", "pixels x batch x steps allowed per run"
    )
    # wall-clock limit of one job (sampling, likelihood)
    max_seconds: float = _setting(300.0, "--max-seconds", "DDPM_APP_MAX_SECONDS", "time limit of one job in seconds")
    # an upload's file size and pixel count (checked from the header before decoding)
    max_upload_mb: float = _setting(10.0, "--max-upload-mb", "DDPM_APP_MAX_UPLOAD_MB", "upload size limit in MB")
    max_upload_pixels: int = _setting(
        4096 * 4096, "--max-upload-pixels", "DDPM_APP_MAX_UPLOAD_PIXELS", "upload width x height limit"
    )
    # model runs at once (sampling, likelihood, latent view), and cheap calls (forward process, model info) at once
    concurrency: int = _setting(2, "--concurrency", "DDPM_APP_CONCURRENCY", "model runs at once")
    # jobs waiting or running, all visitors together; a visitor session holds at most one model run
    queue_size: int = _setting(32, "--queue-size", "DDPM_APP_QUEUE_SIZE", "jobs queued or running at most")
    # the networks' dtype for sampling and the image views (the likelihood always uses float32 weights); auto:
    # bfloat16 where the CPU computes it natively, else float32 (`ddpm_plugin.precision`; DDPM_DTYPE pins auto)
    dtype: str = _setting(
        "auto", "--dtype", "DDPM_APP_DTYPE", "dtype of the networks", choices=("auto", "float32", "bfloat16")
    )

    # previews sent to a browser per second and run at most (faster steps skip previews; the last one always comes);
    # 0 sends every preview. Each preview costs the server two PNG grids and a message
    max_preview_fps: float = _setting(
        10.0,
        "--max-preview-fps",
        "DDPM_APP_MAX_PREVIEW_FPS",
        "previews per second and run at most (0: no limit)",
        zero_means="no limit",
    )

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            choices = f.metadata.get("choices")
            if choices is not None:
                if value not in choices:
                    raise ValueError(f"{f.metadata['flag']} must be one of {choices}, got {value!r}.")
            elif "zero_means" in f.metadata:
                if not value >= 0:
                    raise ValueError(
                        f"{f.metadata['flag']} must be 0 ({f.metadata['zero_means']}) or positive, got {value!r}."
                    )
            elif f.name != "model_dirs" and not value > 0:
                raise ValueError(f"{f.metadata['flag']} must be positive, got {value!r}.")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AppSettings:
        """Settings from the environment variables named in the fields' metadata (unset ones keep their defaults)."""
        env = os.environ if env is None else env
        values = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f.metadata["env"], "").strip()
            if raw:
                values[f.name] = _parse(f, raw, source=f.metadata["env"])
        return cls(**values)


def _parse(f: dataclasses.Field, raw: str, source: str):
    if f.name == "model_dirs":
        return tuple(part for part in raw.split(os.pathsep) if part)
    kind = type(f.default)
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"{source}={raw!r} is not a valid {kind.__name__}.") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds one flag per `AppSettings` field (default: unset, so that the environment variable applies)."""
    for f in dataclasses.fields(AppSettings):
        help = f"{f.metadata['help']} (${f.metadata['env']}; default {f.default!r})"
        if f.name == "model_dirs":
            parser.add_argument(f.metadata["flag"], dest=f.name, action="append", metavar="DIR", help=help)
        else:
            choices = f.metadata.get("choices")
            parser.add_argument(f.metadata["flag"], dest=f.name, type=type(f.default), choices=choices, help=help)


def settings_from_args(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> AppSettings:
    """The environment's settings, with the flags given on the command line replacing them."""
    names = [f.name for f in dataclasses.fields(AppSettings)]
    given = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    if "model_dirs" in given:
        given["model_dirs"] = tuple(given["model_dirs"])
    return dataclasses.replace(AppSettings.from_env(env), **given)


def check_compute(pixels: int, batch_size: int, steps: int, limit: int, what: str = "This run") -> None:
    """Raises `ValueError` when pixels x batch x steps is over the operator's `limit`, saying what would fit."""
    cost = pixels * batch_size * steps
    if cost > limit:
        fit = max(limit // max(pixels * batch_size, 1), 0)
        raise ValueError(
            f"{what} is too large for this app: {pixels} pixels x {batch_size} image(s) x {steps} steps = {cost:,}, "
            f"over the limit of {limit:,} per run; with {batch_size} image(s) at most {fit} steps fit "
            "(or use fewer images)."
        )

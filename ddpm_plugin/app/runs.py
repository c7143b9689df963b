# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""One sampling run's pipeline: a copy of the cached pipeline with the visitor's sampler, so that several visitors
sample with one loaded model at once."""

from __future__ import annotations

import copy

from ..pipelines.samplers import make_sampler, unet_predicts_variance

__all__ = ["SAMPLERS", "default_sampler_label", "make_run_pipeline", "make_scheduler"]

# the app's sampler choices: display name -> name in `ddpm_plugin.pipelines.samplers.SAMPLERS`
SAMPLERS = {
    "DDPM ancestral": "ddpm",
    "DDIM": "ddim",
    "DPM-Solver++": "dpm",
    "DPM-Solver++ SDE": "dpm-sde",
    "Euler ancestral": "euler-a",
}


def default_sampler_label(pipe) -> str:
    """The display name of the pipeline's `default_sampler` setting (`"DDPM ancestral"` when it has none)."""
    name = pipe.config.get("default_sampler", None) or "ddpm"
    return next((label for label, value in SAMPLERS.items() if value == name), "DDPM ancestral")


def make_scheduler(pipe, sampler: str):
    """
    A new scheduler of the chosen sampler (a display name of `SAMPLERS`) for one run, built with `from_config` from
    the pipeline's DDPM scheduler config (`ddpm_plugin.pipelines.samplers.make_sampler`).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler={sampler!r} is not available; choose one of {list(SAMPLERS)}.")
    name = SAMPLERS[sampler]
    variance_type = pipe.scheduler.config.get("variance_type")
    learned = variance_type in ("learned", "learned_range") or unet_predicts_variance(pipe.unet.config)
    if name != "ddpm" and learned:
        raise ValueError(
            f"The sampler {sampler!r} cannot use this model's learned variances (variance_type={variance_type!r}); "
            "choose 'DDPM ancestral'."
        )
    if name == "ddpm":  # a fresh copy: a run sets its own timesteps on it
        return type(pipe.scheduler).from_config(pipe.scheduler.config)
    return make_sampler(name, pipe.scheduler, pipe.unet.config)


def make_run_pipeline(pipe, scheduler):
    """A shallow copy of `pipe` sharing its modules (read-only) but with its own `scheduler` and interrupt flag."""
    run = copy.copy(pipe)
    run.scheduler = scheduler  # DiffusionPipeline.__setattr__ re-registers the config of the copy only
    run._interrupt = False
    return run

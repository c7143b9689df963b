# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""One sampling run's pipeline: a copy of the cached pipeline with the visitor's sampler, so that several visitors
sample with one loaded model at once."""

from __future__ import annotations

import copy

__all__ = ["SAMPLERS", "make_run_pipeline", "make_scheduler"]

# sampler name -> diffusers scheduler class name (None: the pipeline's own DDPM scheduler class)
SAMPLERS = {"DDPM ancestral": None, "DDIM": "DDIMScheduler", "DPM-Solver": "DPMSolverMultistepScheduler"}


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
    if SAMPLERS[sampler] is None:
        return type(pipe.scheduler).from_config(pipe.scheduler.config)
    import diffusers

    return getattr(diffusers, SAMPLERS[sampler]).from_config(pipe.scheduler.config)


def make_run_pipeline(pipe, scheduler):
    """A shallow copy of `pipe` sharing its modules (read-only) but with its own `scheduler` and interrupt flag."""
    run = copy.copy(pipe)
    run.scheduler = scheduler  # DiffusionPipeline.__setattr__ re-registers the config of the copy only
    run._interrupt = False
    return run

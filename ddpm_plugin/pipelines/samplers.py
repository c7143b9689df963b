# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""The samplers a pipeline can run by name, each built from the config of the pipeline's DDPM scheduler.

The pipeline's scheduler component stays the DDPM scheduler it was trained with (`bits_per_dim`, `add_noise` and
the forward process read it); a sampler is a fresh scheduler made from that component's config for one run
(`make_sampler`), so the noise schedule is the trained one whatever the solver.

This file imports nothing outside the standard library and diffusers: `save_for_hub` copies it next to the pipeline
code of a Hub repository.
"""

from __future__ import annotations

from typing import Any

from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler

__all__ = ["SAMPLERS", "check_sampler_name", "make_sampler", "unet_predicts_variance"]

# name -> (scheduler class, keyword overrides of the config), or None for the DDPM scheduler component itself
# (ancestral sampling, respaced for fewer steps, ND section 4). DPMSolverSDEScheduler is left out: it needs torchsde.
SAMPLERS: dict[str, tuple[type, dict[str, Any]] | None] = {
    "ddpm": None,
    "ddim": (DDIMScheduler, {}),  # eta = 0: deterministic
    "dpm": (DPMSolverMultistepScheduler, {}),  # DPM-Solver++(2M), deterministic
    "dpm-sde": (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++"}),  # DPM-Solver++(2M) SDE
    "euler-a": (EulerAncestralDiscreteScheduler, {}),  # Euler ancestral (stochastic)
}


def check_sampler_name(name: str, what: str = "sampler") -> str:
    """`name` if it is one of `SAMPLERS`, else a `ValueError` naming it and the choices."""
    if name not in SAMPLERS:
        raise ValueError(f"{what}={name!r} is not supported; choose one of {tuple(SAMPLERS)}.")
    return name


def unet_predicts_variance(unet_config: Any) -> bool:
    """Whether the UNet also predicts a (learned) variance, which only the DDPM sampler uses."""
    return bool(getattr(unet_config, "learned_variance", False)) or (
        getattr(unet_config, "out_channels", None) == 2 * unet_config.in_channels
    )


def make_sampler(name: str, ddpm_scheduler: Any, unet_config: Any | None = None) -> Any:
    """
    The scheduler of sampler `name` for one run: the DDPM scheduler `ddpm_scheduler` itself for `"ddpm"`, else a new
    scheduler of the sampler's class built with `from_config(ddpm_scheduler.config, **overrides)`.

    Raises `ValueError` for an unknown name, or for a sampler other than `"ddpm"` when `unet_config` describes a UNet
    with learned variance (diffusers' DDIM / DPM-Solver / Euler steps do not split the variance channels off).
    """
    entry = SAMPLERS[check_sampler_name(name)]
    if entry is None:
        return ddpm_scheduler
    if unet_config is not None and unet_predicts_variance(unet_config):
        raise ValueError(
            f"sampler={name!r} cannot sample this model: its UNet predicts a learned variance (out_channels="
            f"{unet_config.out_channels}, twice in_channels), which only the 'ddpm' sampler uses."
        )
    scheduler_class, overrides = entry
    # diffusers' `_use_default_values` (the keys a scheduler built in code left at their defaults) would make
    # `from_config` take the new class's defaults for those keys (e.g. `timestep_spacing`) but not for a scheduler
    # loaded from a file, where every key is explicit: dropped, so the sampler is the same either way
    config = {k: v for k, v in ddpm_scheduler.config.items() if k != "_use_default_values"}
    return scheduler_class.from_config(config, **overrides)

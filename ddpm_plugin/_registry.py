"""Makes the ddpm_plugin pipelines resolvable by `diffusers.DiffusionPipeline.from_pretrained`.

diffusers 0.42 resolves the `_class_name` of a `model_index.json` (e.g. `"PixelDDPMPipeline"`) with
`getattr(diffusers, _class_name)` (`_get_pipeline_class` in `diffusers/pipelines/pipeline_loading_utils.py`), i.e.
in its own namespace only. The least invasive hook is to attach our pipeline classes to the `diffusers` module as
attributes when `ddpm_plugin` is imported, and only where that name is free: nothing of diffusers is patched or
replaced, and a pipeline of the same name that diffusers might ship one day wins (with a warning).

Components need no attribute: `save_pretrained` records a component defined outside diffusers under its full
module path (e.g. `["ddpm_plugin.schedulers.scheduling_gaussian_ddpm", "GaussianDDPMScheduler"]`), and diffusers'
loader takes such a library from `sys.modules` only (it never imports a module a repository names). So registration
also imports the modules of `COMPONENT_MODULES`; a new component class (a model or scheduler that can appear in a
`model_index.json`) must be added there, and these module paths are part of the saved format: renaming one breaks
folders saved before.
"""

from __future__ import annotations

import sys
import warnings
from importlib import import_module

# modules whose classes `save_pretrained` records in model_index.json (they must be in sys.modules when loading)
COMPONENT_MODULES = (
    "ddpm_plugin.models.unet_ddpm_2d",
    "ddpm_plugin.schedulers.scheduling_gaussian_ddpm",
)


def register_pipelines_with_diffusers() -> dict[str, type]:
    """
    Attaches `PixelDDPMPipeline` and `LatentDDPMPipeline` to the `diffusers` namespace (where the names are free) and
    imports the component modules of `COMPONENT_MODULES`; returns the classes it attached.
    """
    import diffusers

    for module in COMPONENT_MODULES:
        import_module(module)

    from .pipelines.pipeline_latent_ddpm import LatentDDPMPipeline
    from .pipelines.pipeline_pixel_ddpm import PixelDDPMPipeline

    attached = {}
    for cls in (PixelDDPMPipeline, LatentDDPMPipeline):
        name = cls.__name__
        # look in the module's own dict and lazy map, so that a lookup does not import anything
        existing = vars(diffusers).get(name)
        lazy = name in getattr(diffusers, "_class_to_module", {})
        if existing is cls:
            continue
        if existing is not None or lazy:
            warnings.warn(
                f"diffusers already defines {name}; `DiffusionPipeline.from_pretrained` will resolve "
                f"'_class_name': '{name}' to diffusers' class, not to ddpm_plugin's. Load ddpm_plugin pipelines with "
                f"ddpm_plugin.{name}.from_pretrained(...) instead.",
                stacklevel=2,
            )
            continue
        setattr(diffusers, name, cls)
        attached[name] = cls
    return attached


def is_registered() -> bool:
    """Whether `diffusers.<name>` is the ddpm_plugin class for both pipelines."""
    diffusers = sys.modules.get("diffusers")
    if diffusers is None:
        return False
    from .pipelines.pipeline_latent_ddpm import LatentDDPMPipeline
    from .pipelines.pipeline_pixel_ddpm import PixelDDPMPipeline

    return all(vars(diffusers).get(c.__name__) is c for c in (PixelDDPMPipeline, LatentDDPMPipeline))

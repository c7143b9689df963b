"""ddpm_plugin: the DDPM process of Ho et al. (2020) and its VAE latent variant, for Hugging Face diffusers.

Importing `ddpm_plugin` registers its pipelines with diffusers (`ddpm_plugin._registry`): it attaches
`PixelDDPMPipeline` and `LatentDDPMPipeline` to the `diffusers` module namespace (only where those names are free),
because diffusers resolves a saved pipeline's `_class_name` there. So, after `import ddpm_plugin`,
`diffusers.DiffusionPipeline.from_pretrained(folder)` returns the right pipeline class for a folder written by
`save_pretrained`. The other public names are imported on first use.
"""

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> module that defines it (imported on first use; the pipelines, UNet and scheduler are imported at
# once by the registration below)
_LAZY = {
    "GaussianDDPMScheduler": "ddpm_plugin.schedulers.scheduling_gaussian_ddpm",
    "GaussianDDPMSchedulerOutput": "ddpm_plugin.schedulers.scheduling_gaussian_ddpm",
    "DDPMUNet2DModel": "ddpm_plugin.models.unet_ddpm_2d",
    "PixelDDPMPipeline": "ddpm_plugin.pipelines.pipeline_pixel_ddpm",
    "LatentDDPMPipeline": "ddpm_plugin.pipelines.pipeline_latent_ddpm",
    "bits_per_dim": "ddpm_plugin.likelihood",
    "load_default_pipeline": "ddpm_plugin.pretrained",
    "save_for_hub": "ddpm_plugin.hub",
    "push_to_hub": "ddpm_plugin.hub",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ddpm_plugin' has no attribute {name!r}")


# registration with diffusers: imports the pipeline, UNet and scheduler modules (hence torch and diffusers)
from ._registry import register_pipelines_with_diffusers  # noqa: E402

register_pipelines_with_diffusers()

if TYPE_CHECKING:  # pragma: no cover
    from .hub import push_to_hub, save_for_hub  # noqa: F401
    from .models.unet_ddpm_2d import DDPMUNet2DModel  # noqa: F401
    from .pipelines.pipeline_latent_ddpm import LatentDDPMPipeline  # noqa: F401
    from .pipelines.pipeline_pixel_ddpm import PixelDDPMPipeline  # noqa: F401
    from .schedulers.scheduling_gaussian_ddpm import GaussianDDPMScheduler, GaussianDDPMSchedulerOutput  # noqa: F401

"""ddpm_plugin: the DDPM process of Ho et al. (2020) and its VAE latent variant, for Hugging Face diffusers."""

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> module that defines it (imported on first use, so `import ddpm_plugin` stays cheap)
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


if TYPE_CHECKING:  # pragma: no cover
    from .schedulers.scheduling_gaussian_ddpm import GaussianDDPMScheduler, GaussianDDPMSchedulerOutput  # noqa: F401

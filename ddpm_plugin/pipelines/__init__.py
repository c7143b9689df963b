"""Inference pipelines (pixel and latent) with step previews."""

from .pipeline_ddpm_base import DDPMBasePipeline
from .pipeline_latent_ddpm import LatentDDPMPipeline
from .pipeline_pixel_ddpm import PixelDDPMPipeline
from .preview import DDPMPreview

__all__ = ["DDPMBasePipeline", "DDPMPreview", "LatentDDPMPipeline", "PixelDDPMPipeline"]

"""Noise predictors: the DDPM UNet `eps_theta(x_t, t)` and its converter from `diffusers.UNet2DModel`."""

from .convert import ddpm_config_from_unet2d_config, unet2d_key_to_ddpm_key, unet2d_state_dict_to_ddpm
from .unet_ddpm_2d import DDPMUNet2DModel, convert_unet2d_to_ddpm, get_timestep_embedding

__all__ = [
    "DDPMUNet2DModel",
    "convert_unet2d_to_ddpm",
    "ddpm_config_from_unet2d_config",
    "get_timestep_embedding",
    "unet2d_key_to_ddpm_key",
    "unet2d_state_dict_to_ddpm",
]

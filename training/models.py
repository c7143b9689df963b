"""Building the models of a run, or loading them from a pipeline / model folder or Hub id for fine-tuning."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL

from ddpm_plugin import DDPMUNet2DModel, GaussianDDPMScheduler
from ddpm_plugin.resolve import CLI_POLICY, model_folder, resolve_model

__all__ = ["InitSource", "build_scheduler", "build_unet", "build_vae", "load_init_source", "load_vae"]


@dataclass
class InitSource:
    """What `--init_from` provided: any of a UNet (converted to `DDPMUNet2DModel`), a scheduler config, a VAE."""

    unet: DDPMUNet2DModel | None = None
    scheduler_config: dict[str, Any] | None = None
    vae: AutoencoderKL | None = None


def build_scheduler(config) -> GaussianDDPMScheduler:
    """The diffusion schedule of the run, from the config's diffusion fields."""
    return GaussianDDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        prediction_type=config.prediction_type,
        variance_type=config.variance_type,
        clip_sample=config.clip_sample and not config.latent,
    )


def build_unet(config, sample_size: int, in_channels: int) -> DDPMUNet2DModel:
    """A fresh `DDPMUNet2DModel` from the config's UNet fields."""
    factor = 2 ** (len(config.channel_mult) - 1)
    if sample_size % factor:
        raise ValueError(
            f"the UNet input is {sample_size}x{sample_size}, which channel_mult={config.channel_mult} "
            f"({len(config.channel_mult)} levels) cannot halve {len(config.channel_mult) - 1} times: the size must be "
            f"divisible by {factor}. Use fewer levels, or another resolution."
        )
    return DDPMUNet2DModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels,
        model_channels=config.model_channels,
        channel_mult=tuple(config.channel_mult),
        layers_per_block=config.layers_per_block,
        attention_resolutions=tuple(config.attention_resolutions),
        dropout=config.dropout,
        norm_num_groups=config.norm_num_groups,
        learned_variance=config.variance_type == "learned_range",
    )


def build_vae(config, resolution: int) -> AutoencoderKL:
    """A fresh `diffusers.AutoencoderKL` from the config's VAE fields (len(vae_block_out_channels) - 1 downsamples)."""
    levels = len(config.vae_block_out_channels)
    factor = 2 ** (levels - 1)
    if resolution % factor:
        raise ValueError(
            f"resolution {resolution} is not divisible by {factor}, the downsampling of "
            f"vae_block_out_channels={config.vae_block_out_channels}."
        )
    for channels in config.vae_block_out_channels:
        if channels % config.vae_norm_num_groups:
            raise ValueError(
                f"vae_norm_num_groups={config.vae_norm_num_groups} must divide every entry of vae_block_out_channels "
                f"{config.vae_block_out_channels}."
            )
    return AutoencoderKL(
        in_channels=config.channels,
        out_channels=config.channels,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(config.vae_block_out_channels),
        layers_per_block=config.vae_layers_per_block,
        latent_channels=config.vae_latent_channels,
        norm_num_groups=config.vae_norm_num_groups,
        sample_size=resolution,
        scaling_factor=1.0,
    )


# ---------------------------------------------------------------------------------------------------- loading
def _local_folder(source: str) -> Path:
    """The local folder of a bundled model, folder or Hub id (`ddpm_plugin.resolve`, the command-line policy)."""
    return model_folder(resolve_model(source, CLI_POLICY), CLI_POLICY)


def _read_json(folder: Path, filename: str, subfolder: str | None = None) -> dict | None:
    """A JSON file of a local folder, or None when it does not exist."""
    path = folder / (subfolder or "") / filename
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _load_unet(source: Path, subfolder: str | None, class_name: str, learned_variance: bool) -> DDPMUNet2DModel:
    if class_name == "DDPMUNet2DModel":
        return DDPMUNet2DModel.from_pretrained(source, subfolder=subfolder)
    if class_name == "UNet2DModel":
        from diffusers import UNet2DModel

        return DDPMUNet2DModel.from_diffusers_unet(
            UNet2DModel.from_pretrained(source, subfolder=subfolder), learned_variance=learned_variance
        )
    raise ValueError(
        f"{str(source)!r}{'/' + subfolder if subfolder else ''} holds a {class_name}; fine-tuning takes a "
        "DDPMUNet2DModel or a diffusers UNet2DModel in the DDPM layout."
    )


def load_vae(source: str) -> AutoencoderKL:
    """An `AutoencoderKL` from its own folder / Hub id, or from the `vae/` of a latent pipeline (or bundled model)."""
    folder = _local_folder(source)
    config = _read_json(folder, "config.json")
    if config is not None and config.get("_class_name") == "AutoencoderKL":
        return AutoencoderKL.from_pretrained(folder)
    index = _read_json(folder, "model_index.json")
    if index is not None and "vae" in index:
        return AutoencoderKL.from_pretrained(folder, subfolder="vae")
    raise ValueError(
        f"{source!r} holds no AutoencoderKL (neither a VAE folder with config.json nor a pipeline with a vae/)."
    )


def load_init_source(source: str, stage: str) -> InitSource:
    """
    Reads what `--init_from source` provides for `stage` (`source`: a bundled model, a folder or a Hub id, as
    `ddpm_plugin.resolve` names them): for the UNet stage a UNet (a diffusers `UNet2DModel` is converted with
    `DDPMUNet2DModel.from_diffusers_unet`), the scheduler config if there is one, and the VAE of a latent pipeline;
    for the VAE stage an AutoencoderKL.
    """
    if stage == "vae":
        return InitSource(vae=load_vae(source))
    folder = _local_folder(source)
    index = _read_json(folder, "model_index.json")
    if index is not None:
        if "unet" not in index:
            raise ValueError(f"pipeline {source!r} has no unet component (components: {sorted(index)}).")
        scheduler_config = _read_json(folder, "scheduler_config.json", "scheduler")
        learned = (scheduler_config or {}).get("variance_type") in ("learned", "learned_range")
        unet_config = _read_json(folder, "config.json", "unet") or {}
        unet = _load_unet(folder, "unet", unet_config.get("_class_name", "?"), learned)
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae") if "vae" in index else None
        return InitSource(unet=unet, scheduler_config=scheduler_config, vae=vae)
    config = _read_json(folder, "config.json")
    if config is None:
        raise ValueError(f"{source!r} holds neither a pipeline (model_index.json) nor a model (config.json).")
    unet = _load_unet(folder, None, config.get("_class_name", "?"), learned_variance=False)
    return InitSource(unet=unet, scheduler_config=None, vae=None)


def scheduler_from_init(config, init: InitSource) -> GaussianDDPMScheduler:
    """The scheduler of a fine-tuning run: the source's config when it has one, else the run's config."""
    if init.scheduler_config is None:
        return build_scheduler(config)
    scheduler_config = {k: v for k, v in init.scheduler_config.items() if not k.startswith("_")}
    return GaussianDDPMScheduler.from_config(scheduler_config)


@torch.no_grad()
def encode_moments(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """
    The parameters `[mean, logvar]` of q_phi(z | x) for `images` `(num_images, channels, height, width)` in [-1, 1];
    returns `(num_images, 2 * latent_channels, height / f, width / f)` on the CPU.
    """
    vae_device = next(vae.parameters()).device
    out = []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size].to(vae_device)
        out.append(vae.encode(batch).latent_dist.parameters.float().cpu())
    return torch.cat(out)

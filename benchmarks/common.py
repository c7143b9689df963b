# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""Shared helpers of the benchmarks: interleaved timing, the machine, model configurations and their diffusers twins.

Every comparison is a ratio measured side by side in one process: after a warm-up, the variants run in turn within
each repeat (the order reversed every other repeat), and each variant's median is reported. On a shared machine the
absolute seconds are noisy, but load hits all variants of a repeat alike, so the ratios are what to read.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO_ROOT, "training", "configs")
PRETRAINED_DIR = os.path.join(REPO_ROOT, "ddpm_plugin", "pretrained")

# UNet keys of a training config (training/configs/*.yaml) that are `DDPMUNet2DModel` arguments
_UNET_KEYS = ("model_channels", "channel_mult", "layers_per_block", "attention_resolutions", "norm_num_groups")

# Fallbacks when training/configs/*.yaml are absent: the bundled models' configurations as of this writing
_FALLBACK_CONFIGS: dict[str, dict[str, Any]] = {
    "mnist_pixel": {
        "channels": 1,
        "resolution": 28,
        "model_channels": 32,
        "channel_mult": [1, 2, 2],
        "layers_per_block": 2,
        "attention_resolutions": [7],
        "norm_num_groups": 8,
        "train_batch_size": 64,
        "clip_sample": True,
        "default_num_inference_steps": 1000,
    },
    "mnist_latent": {
        "latent": True,
        "channels": 1,
        "resolution": 28,
        "model_channels": 96,
        "channel_mult": [1],
        "layers_per_block": 2,
        "attention_resolutions": [7],
        "norm_num_groups": 32,
        "train_batch_size": 128,
        "clip_sample": False,
        "default_num_inference_steps": 1000,
    },
    "mnist_vae": {
        "channels": 1,
        "resolution": 28,
        "vae_block_out_channels": [32, 64, 64],
        "vae_layers_per_block": 1,
        "vae_latent_channels": 4,
        "vae_norm_num_groups": 32,
    },
}

# The DDPM-256 layout (Ho et al.'s LSUN / CelebA-HQ 256x256 model), RGB
DDPM_256 = {
    "sample_size": 256,
    "in_channels": 3,
    "model_channels": 128,
    "channel_mult": (1, 1, 2, 2, 4, 4),
    "layers_per_block": 2,
    "attention_resolutions": (16,),
    "norm_num_groups": 32,
}


# ---------------------------------------------------------------------------------------------------- timing
def timed(fn: Callable[[], Any]) -> float:
    """Seconds taken by one call of `fn`."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(variants: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """
    Seconds of every call of each variant, run side by side: `warmup` untimed rounds, then `repeats` rounds in which
    every variant runs once (the order reversed every other round, so neither side always runs first).
    """
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(repeats):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            times[name].append(timed(variants[name]))
    return times


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(t) for name, t in times.items()}


def paired_ratio(times: dict[str, list[float]], numerator: str, denominator: str) -> float:
    """Median over repeats of time[numerator] / time[denominator] of the same round (robust to load drifts)."""
    return statistics.median(a / b for a, b in zip(times[numerator], times[denominator], strict=True))


# ---------------------------------------------------------------------------------------------------- the machine
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_support() -> str:
    """What this CPU offers for bfloat16 matmuls: AMX tiles, AVX512-BF16, or neither (emulated)."""
    flags = cpu_flags()
    have = [f for f in ("amx_bf16", "avx512_bf16", "avx512_fp16") if f in flags]
    return ", ".join(have) if have else "none (bf16 is emulated)"


def machine_info() -> dict[str, str]:
    import diffusers

    try:
        with open("/proc/loadavg", encoding="utf-8") as f:
            load = " ".join(f.read().split()[:3])
    except OSError:
        load = "?"
    return {
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "bf16": bf16_support(),
        "mkldnn": str(torch.backends.mkldnn.is_available()),
        "load average (1, 5, 15 min)": load,
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    }


# ---------------------------------------------------------------------------------------------------- configs
def load_training_config(name: str) -> dict[str, Any]:
    """`training/configs/<name>.yaml` as a dict, or the built-in fallback copy of it when the file is absent."""
    path = os.path.join(CONFIG_DIR, f"{name}.yaml")
    if os.path.isfile(path):
        import yaml

        with open(path, encoding="utf-8") as f:
            return {**_FALLBACK_CONFIGS.get(name, {}), **(yaml.safe_load(f) or {})}
    return dict(_FALLBACK_CONFIGS[name])


def latent_size(config: dict[str, Any], vae_config: dict[str, Any]) -> int:
    """Side of the VAE latents: the image side halved once per VAE level but the last."""
    levels = len(vae_config.get("vae_block_out_channels", [32, 64, 64]))
    return config["resolution"] // 2 ** (levels - 1)


def unet_kwargs_from_training_config(config: dict[str, Any], vae_config: dict[str, Any] | None = None) -> dict:
    """`DDPMUNet2DModel` keyword arguments of a training config (pixel, or latent with its VAE config)."""
    kwargs = {k: (tuple(config[k]) if isinstance(config[k], list) else config[k]) for k in _UNET_KEYS}
    if config.get("latent"):
        vae_config = vae_config or load_training_config("mnist_vae")
        kwargs["sample_size"] = latent_size(config, vae_config)
        kwargs["in_channels"] = vae_config.get("vae_latent_channels", 4)
    else:
        kwargs["sample_size"] = config["resolution"]
        kwargs["in_channels"] = config["channels"]
    return kwargs


# a tiny UNet (16 px, two levels, attention at 8 px): the stand-in for every model in smoke tests and --dry-run
TINY_UNET_KWARGS = {
    "sample_size": 16,
    "in_channels": 3,
    "model_channels": 16,
    "channel_mult": (1, 2),
    "layers_per_block": 1,
    "attention_resolutions": (8,),
    "norm_num_groups": 8,
}


def pixel_unet_kwargs() -> dict:
    return unet_kwargs_from_training_config(load_training_config("mnist_pixel"))


def latent_unet_kwargs() -> dict:
    return unet_kwargs_from_training_config(load_training_config("mnist_latent"), load_training_config("mnist_vae"))


def diffusers_unet_config(ddpm_kwargs: dict) -> dict:
    """The `diffusers.UNet2DModel` config computing the same function as `DDPMUNet2DModel(**ddpm_kwargs)`."""
    import inspect
    from types import SimpleNamespace

    from ddpm_plugin import DDPMUNet2DModel

    defaults = {
        name: p.default
        for name, p in inspect.signature(DDPMUNet2DModel.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    cfg = SimpleNamespace(**{**defaults, **ddpm_kwargs})
    if cfg.out_channels is None:
        cfg.out_channels = cfg.in_channels
    sample_size = cfg.sample_size
    num_levels = len(cfg.channel_mult)
    attn = [sample_size // 2**level in tuple(cfg.attention_resolutions) for level in range(num_levels)]
    return {
        "sample_size": sample_size,
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels * (2 if cfg.learned_variance else 1),
        "down_block_types": tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        "up_block_types": tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        "block_out_channels": tuple(cfg.model_channels * m for m in cfg.channel_mult),
        "layers_per_block": cfg.layers_per_block,
        "norm_num_groups": cfg.norm_num_groups,
        "norm_eps": cfg.norm_eps,
        "attention_head_dim": cfg.attention_head_dim,
        "add_attention": cfg.mid_block_attention,
        "flip_sin_to_cos": cfg.flip_sin_to_cos,
        "freq_shift": cfg.freq_shift,
        "downsample_padding": cfg.downsample_padding,
        "resnet_time_scale_shift": cfg.resnet_time_scale_shift,
        "dropout": cfg.dropout,
    }


def unet_pair(ddpm_kwargs: dict, seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(`diffusers.UNet2DModel`, the `DDPMUNet2DModel` converted from it), random weights, eval mode."""
    from diffusers import UNet2DModel

    from ddpm_plugin import DDPMUNet2DModel

    torch.manual_seed(seed)
    reference = UNet2DModel(**diffusers_unet_config(ddpm_kwargs)).eval()
    ours = DDPMUNet2DModel.from_diffusers_unet(reference).eval()
    return reference, ours


def scheduler_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """`GaussianDDPMScheduler` / `diffusers.DDPMScheduler` arguments of a training config."""
    return {
        "num_train_timesteps": config.get("num_train_timesteps", 1000),
        "beta_schedule": config.get("beta_schedule", "linear"),
        "beta_start": config.get("beta_start", 1e-4),
        "beta_end": config.get("beta_end", 0.02),
        "prediction_type": config.get("prediction_type", "epsilon"),
        "variance_type": config.get("variance_type", "fixed_small"),
        "clip_sample": bool(config.get("clip_sample", True)) and not config.get("latent", False),
    }


def random_vae(vae_config: dict[str, Any], seed: int = 0) -> torch.nn.Module:
    """A random `diffusers.AutoencoderKL` of `training/configs/mnist_vae.yaml`'s layout (scaling factor 1)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    levels = len(vae_config["vae_block_out_channels"])
    return AutoencoderKL(
        in_channels=vae_config["channels"],
        out_channels=vae_config["channels"],
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(vae_config["vae_block_out_channels"]),
        layers_per_block=vae_config["vae_layers_per_block"],
        latent_channels=vae_config["vae_latent_channels"],
        norm_num_groups=vae_config["vae_norm_num_groups"],
        sample_size=vae_config["resolution"],
    ).eval()


def bundled_or_random_pipeline(kind: str, seed: int = 0) -> tuple[Any, str]:
    """
    (pipeline, where it came from): the bundled `ddpm_plugin/pretrained/mnist-<kind>/` pipeline when it loads, else a
    random pipeline of the bundled configuration (`training/configs/mnist_<kind>.yaml`; random weights are fine for
    speed).
    """
    from ddpm_plugin import DDPMUNet2DModel, GaussianDDPMScheduler, LatentDDPMPipeline, PixelDDPMPipeline

    folder = pretrained_folder(kind)
    if folder is not None:
        try:
            from ddpm_plugin import load_default_pipeline

            pipe = load_default_pipeline(kind)
            pipe.set_progress_bar_config(disable=True)
            return pipe, f"bundled mnist-{kind}"
        except Exception as error:  # noqa: BLE001 - a half-written bundled folder: fall back to its config
            print(f"(bundled mnist-{kind} does not load: {type(error).__name__}: {str(error)[:120]}; random weights)")
    config = load_training_config(f"mnist_{kind}")
    torch.manual_seed(seed)
    scheduler = GaussianDDPMScheduler(**scheduler_kwargs(config))
    steps = int(config.get("default_num_inference_steps", 1000))
    if kind == "pixel":
        unet = DDPMUNet2DModel(**pixel_unet_kwargs()).eval()
        pipe = PixelDDPMPipeline(unet=unet, scheduler=scheduler, default_num_inference_steps=steps)
    else:
        vae = random_vae(load_training_config("mnist_vae"), seed)
        unet = DDPMUNet2DModel(**latent_unet_kwargs()).eval()
        pipe = LatentDDPMPipeline(vae=vae, unet=unet, scheduler=scheduler, default_num_inference_steps=steps)
    pipe.set_progress_bar_config(disable=True)
    return pipe, f"random weights, mnist_{kind}.yaml config"


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def pretrained_folder(kind: str) -> str | None:
    """The bundled pipeline folder `ddpm_plugin/pretrained/mnist-<kind>/` when it holds a saved pipeline."""
    path = os.path.join(PRETRAINED_DIR, f"mnist-{kind}")
    return path if os.path.isfile(os.path.join(path, "model_index.json")) else None


# ---------------------------------------------------------------------------------------------------- results
@dataclass
class Row:
    """One line of the results table."""

    section: str
    what: str
    against: str
    ours: str
    reference: str
    ratio: str
    goal: str
    met: str
    note: str = ""


def fmt_ratio(x: float) -> str:
    return f"{x:.2f}x"


def met(ok: bool | None, gap: str = "") -> str:
    if ok is None:
        return "n/a"
    return "yes" if ok else f"**no** ({gap})" if gap else "**no**"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")

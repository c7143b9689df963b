"""The training loop of both stages (VAE, UNet in pixel or latent space), on one or many processes with accelerate.

Read top to bottom: `train(config)` sets up accelerate, the models and the data (`_setup_*`), resumes from a
checkpoint if asked, runs the optimisation loop (loss from `ddpm_plugin.losses`, EMA, logging, checkpoints, sample
grids, held-out bits/dim) and exports the final pipeline (EMA weights) and its model card.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, broadcast, set_seed
from diffusers import AutoencoderKL
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch import nn
from torch.utils.data import DataLoader

from ddpm_plugin.latent import images_to_latents, latents_from_posterior

from .checkpoint import (
    list_checkpoints,
    prune_checkpoints,
    read_marker,
    remove_incomplete,
    resolve_checkpoint,
    save_checkpoint_atomic,
)
from .config import TrainingConfig
from .data import TensorImageDataset, build_datasets
from .models import (
    InitSource,
    build_scheduler,
    build_unet,
    build_vae,
    encode_moments,
    load_init_source,
    load_vae,
    scheduler_from_init,
)

__all__ = ["NonFiniteLossError", "TrainResult", "train"]

logger = logging.getLogger("training")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped without saving the broken weights."""


@dataclass
class TrainResult:
    """What a finished run produced."""

    output_dir: Path
    global_step: int
    final_dir: Path | None = None  # pipeline folder (UNet stage) or AutoencoderKL folder (VAE stage)
    hub_dir: Path | None = None  # save_for_hub folder with the model card (UNet stage)
    metrics: dict[str, Any] = field(default_factory=dict)


class VAEWithELBO(nn.Module):
    """
    Wraps an `AutoencoderKL` so that one `forward` computes what its ELBO needs (DDP synchronises gradients only
    through `forward`): z ~ q_phi(z | x) (reparameterised), x_hat = decoder(z), KL(q_phi(z | x) || N(0, I)).
    """

    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`x` `(batch_size, channels, height, width)` -> (reconstruction of the same shape, KL `(batch_size,)`)."""
        posterior = self.vae.encode(x).latent_dist
        z = posterior.sample(generator=generator)  # (B, latent_channels, h, w)
        reconstruction = self.vae.decode(z).sample
        return reconstruction, posterior.kl()


def _vae_loss(reconstruction: torch.Tensor, x: torch.Tensor, kl: torch.Tensor, kl_weight: float) -> torch.Tensor:
    """Negative ELBO with a unit-variance Gaussian decoder, beta-weighted KL, per dimension: (SSE + beta KL) / D."""
    dims = x[0].numel()
    sse = (reconstruction.float() - x.float()).pow(2).flatten(1).sum(1)  # (B,)
    return ((sse + kl_weight * kl.float()) / dims).mean()


# ---------------------------------------------------------------------------------------------------- setup
@dataclass
class _Setup:
    model: nn.Module  # what the optimizer trains (UNet, or VAEWithELBO)
    dataset: torch.utils.data.Dataset
    eval_images: torch.Tensor | None
    data_description: str
    resolution: int
    scheduler: Any = None  # GaussianDDPMScheduler (UNet stage)
    vae: AutoencoderKL | None = None  # frozen VAE (latent UNet stage)
    latent_scale: float | None = None


def _data_resolution(config: TrainingConfig, fallback: int | None, what: str) -> int:
    if config.resolution is not None:
        return config.resolution
    if config.dataset == "mnist":
        return 32 if config.mnist_pad else 28
    if fallback is not None:
        return fallback
    raise ValueError(f"set --resolution: the dataset {config.dataset!r} has no native size and {what}.")


def _setup_vae(config: TrainingConfig, init: InitSource | None) -> _Setup:
    vae = init.vae if init is not None else None
    resolution = _data_resolution(config, vae.config.sample_size if vae is not None else None, "no --init_from VAE")
    if vae is not None and vae.config.in_channels != config.channels:
        raise ValueError(
            f"the VAE of init_from={config.init_from!r} takes {vae.config.in_channels}-channel images, but "
            f"channels={config.channels}; set --channels {vae.config.in_channels} or train a new VAE."
        )
    if vae is None:
        vae = build_vae(config, resolution)
    elif vae.config.sample_size != resolution:
        vae.register_to_config(sample_size=resolution)
    dataset, eval_images, description = build_datasets(config, resolution)
    return _Setup(VAEWithELBO(vae), dataset, eval_images, description, resolution)


def _setup_unet(
    config: TrainingConfig, init: InitSource | None, accelerator: Accelerator, resume_state: dict
) -> _Setup:
    vae, unet = None, None
    if init is not None and init.vae is not None:
        if config.vae_path:
            raise ValueError(
                f"init_from={config.init_from!r} is a latent pipeline with its own VAE; its UNet only works with that "
                f"VAE, so do not pass --vae_path ({config.vae_path!r})."
            )
        config.latent = True
        vae = init.vae
    elif config.latent:
        vae = load_vae(config.vae_path)
    if init is not None:
        unet = init.unet
    if config.latent and vae is None:
        raise ValueError("latent=True needs a VAE: pass --vae_path.")

    if vae is not None:
        resolution = _data_resolution(config, vae.config.sample_size, "")
        if vae.config.in_channels != config.channels:
            raise ValueError(
                f"the VAE takes {vae.config.in_channels}-channel images, but channels={config.channels}; set "
                f"--channels {vae.config.in_channels}."
            )
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        if resolution % factor:
            raise ValueError(f"resolution {resolution} is not divisible by the VAE's downsampling factor {factor}.")
        sample_size, in_channels = resolution // factor, vae.config.latent_channels
    else:
        resolution = _data_resolution(config, unet.config.sample_size if unet is not None else None, "no --init_from")
        sample_size, in_channels = resolution, config.channels

    if unet is not None and unet.config.in_channels != in_channels:
        what = "latent channels of the VAE" if vae is not None else f"channels={config.channels} of the data"
        raise ValueError(
            f"the UNet of init_from={config.init_from!r} takes {unet.config.in_channels}-channel inputs, but the "
            f"{what} give {in_channels}; set --channels to match the model (or train a new one)."
        )
    dataset, eval_images, description = build_datasets(config, resolution)  # data errors before model errors
    if unet is None:
        unet = build_unet(config, sample_size, in_channels)
    else:
        factor = 2 ** (len(unet.config.channel_mult) - 1)
        if sample_size % factor:
            raise ValueError(
                f"the UNet of init_from={config.init_from!r} needs inputs divisible by {factor}; resolution "
                f"{resolution} gives {sample_size}."
            )
        if unet.config.sample_size != sample_size:
            # attention sits at fixed levels; their resolutions are recorded by size, so renumber them
            old_size, levels = unet.config.sample_size, len(unet.config.channel_mult)
            attention_levels = [lv for lv in range(levels) if old_size // 2**lv in unet.config.attention_resolutions]
            unet.register_to_config(
                sample_size=sample_size, attention_resolutions=tuple(sample_size // 2**lv for lv in attention_levels)
            )

    scheduler = scheduler_from_init(config, init) if init is not None else build_scheduler(config)
    learned = scheduler.config.variance_type in ("learned", "learned_range")
    if learned != bool(unet.config.learned_variance):
        raise ValueError(
            f"scheduler variance_type={scheduler.config.variance_type!r} and the UNet's "
            f"learned_variance={unet.config.learned_variance} disagree."
        )
    if learned and config.loss_type != "hybrid":
        raise ValueError(
            f"the model of init_from={config.init_from!r} learns its variance ({scheduler.config.variance_type}); "
            "train it with --loss_type hybrid --variance_type learned_range."
        )
    if not learned and config.loss_type == "hybrid" and init is not None:
        raise ValueError(
            f"loss_type='hybrid' needs a model with a learned variance; init_from={config.init_from!r} has "
            f"variance_type={scheduler.config.variance_type!r}. Use --loss_type simple."
        )

    latent_scale = None
    if vae is not None:
        vae.requires_grad_(False).eval().to(accelerator.device)
        if resume_state.get("latent_scale") is not None:
            latent_scale = float(resume_state["latent_scale"])
        elif init is not None and init.vae is not None:
            latent_scale = float(vae.config.scaling_factor)  # the UNet was trained with this scale: keep it
        else:
            from ddpm_plugin.latent import estimate_latent_scale

            images = _first_images(dataset, config.latent_scale_samples).to(accelerator.device)
            scale = estimate_latent_scale(
                vae, images, batch_size=256, generator=torch.Generator().manual_seed(config.seed)
            )
            scale = torch.tensor([float(scale)], device=accelerator.device)
            latent_scale = float(broadcast(scale)[0])  # identical on every process
        from ddpm_plugin.latent import set_latent_scale

        set_latent_scale(vae, latent_scale)
        if not config.random_flip:
            # q_phi(z | x) of every training image, once: each step then only samples z (no encoder pass)
            images = _first_images(dataset, len(dataset))
            dataset = _MomentsDataset(encode_moments(vae, images))
    return _Setup(unet, dataset, eval_images, description, resolution, scheduler, vae, latent_scale)


def _first_images(dataset, count: int) -> torch.Tensor:
    if isinstance(dataset, TensorImageDataset):
        return dataset.images[:count]
    return torch.stack([dataset[i]["pixel_values"] for i in range(min(count, len(dataset)))])


class _MomentsDataset(torch.utils.data.Dataset):
    """Cached `[mean, logvar]` of q_phi(z | x) per training image `(2 * latent_channels, h, w)`."""

    def __init__(self, moments: torch.Tensor):
        self.moments = moments

    def __len__(self) -> int:
        return self.moments.shape[0]

    def __getitem__(self, index: int) -> dict:
        return {"latent_moments": self.moments[index], "index": index}


# ---------------------------------------------------------------------------------------------------- helpers
def _hparams(config: TrainingConfig) -> dict[str, Any]:
    """Config values TensorBoard accepts (numbers, strings, bools)."""
    out = {}
    for key, value in config.to_dict().items():
        out[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


def _command_string(argv: list[str] | None) -> str:
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return "python -m training"
    head = argv[0]
    if head.endswith("__main__.py") or head.endswith(os.path.join("training", "cli.py")):
        head = "python -m training"
    elif os.path.basename(head) == "ddpm-train":
        head = "ddpm-train"
    else:
        head = shlex.quote(head)
    return " ".join([head, *(shlex.quote(a) for a in argv[1:])])


def _save_grid(images: np.ndarray, path: Path) -> None:
    """`images` `(N, H, W, C)` in [0, 1] -> one PNG grid with ceil(sqrt(N)) columns (`diffusers.utils.make_image_grid`;
    the empty cells of the last row stay black)."""
    from diffusers.utils import make_image_grid
    from PIL import Image

    n, h, w, c = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    tiles = np.clip(np.rint(images * 255), 0, 255).astype(np.uint8)
    tiles = np.concatenate([tiles, np.zeros((rows * cols - n, h, w, c), dtype=np.uint8)])  # fill the last row
    pil = [Image.fromarray(t[..., 0] if c == 1 else t) for t in tiles]
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = make_image_grid(pil, rows=rows, cols=cols)  # RGB
    (grid.convert("L") if c == 1 else grid).save(path)


def _make_pipeline(unet, scheduler, vae, default_steps: int):
    from ddpm_plugin import GaussianDDPMScheduler

    scheduler = GaussianDDPMScheduler.from_config(scheduler.config)  # a fresh copy: set_timesteps mutates it
    if vae is not None:
        from ddpm_plugin import LatentDDPMPipeline

        return LatentDDPMPipeline(vae=vae, unet=unet, scheduler=scheduler, default_num_inference_steps=default_steps)
    from ddpm_plugin import PixelDDPMPipeline

    return PixelDDPMPipeline(unet=unet, scheduler=scheduler, default_num_inference_steps=default_steps)


def _multi_process_without_accelerator() -> bool:
    """True under `torchrun` / `accelerate launch` on a machine with no GPU: accelerate then needs `cpu=True` to run
    data-parallel over gloo (otherwise every process would train alone)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    has_accelerator = getattr(torch, "accelerator", None)
    if has_accelerator is not None:
        return not torch.accelerator.is_available()
    return not torch.cuda.is_available()


# ---------------------------------------------------------------------------------------------------- the run
def train(config: TrainingConfig, argv: list[str] | None = None) -> TrainResult:
    """
    Runs one training stage as configured; every process of an `accelerate launch` / `torchrun` run calls it.

    Args:
        config (`TrainingConfig`): the validated settings.
        argv (`list[str]`, *optional*): the command line, recorded in the model card (defaults to `sys.argv`).

    Returns:
        `TrainResult` with the final step, metrics and the exported folders.

    Raises:
        `ValueError`: bad settings or data (before training starts). `NonFiniteLossError`: the loss became NaN/inf.
    """
    config.validate()
    command = _command_string(argv)
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    output_dir = Path(config.output_dir)
    checkpoint_root = output_dir / "checkpoints"
    accelerator = Accelerator(
        cpu=_multi_process_without_accelerator(),
        mixed_precision=config.mixed_precision,
        log_with=None if config.report_to == "none" else config.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    if not accelerator.is_main_process:
        logger.setLevel(logging.WARNING)
    rank, world = accelerator.process_index, accelerator.num_processes

    # 1. where do we start: a complete checkpoint (resume), a pretrained model (init_from), or scratch
    resume_path = resolve_checkpoint(config.resume, checkpoint_root) if config.resume else None
    resume_state: dict = read_marker(resume_path) if resume_path is not None else {}
    if config.resume == "latest" and resume_path is None:
        logger.info("resume=latest: no complete checkpoint in %s yet, starting from scratch", checkpoint_root)
    set_seed(config.seed)  # the same on every process: identical initial weights
    init = load_init_source(config.init_from, config.stage) if config.init_from else None

    # 2. models and data (every data error is raised here, before any training)
    if config.stage == "vae":
        setup = _setup_vae(config, init)
    else:
        setup = _setup_unet(config, init, accelerator, resume_state)
    model = setup.model
    if len(setup.dataset) < config.train_batch_size * world:
        raise ValueError(
            f"the dataset has {len(setup.dataset)} images, fewer than one batch (train_batch_size="
            f"{config.train_batch_size} x {world} processes); lower --train_batch_size."
        )
    if config.gradient_checkpointing:
        (model.vae if isinstance(model, VAEWithELBO) else model).enable_gradient_checkpointing()
    model.train()

    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay,
        eps=config.adam_epsilon,
    )
    # accelerate steps a prepared LR scheduler once per process per optimizer step
    lr_scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=config.lr_warmup_steps * world,
        num_training_steps=config.max_train_steps * world,
    )
    dataloader = DataLoader(
        setup.dataset,
        batch_size=config.train_batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=config.dataloader_num_workers,
        # its own generator: starting an epoch's iterator must not draw from the global RNG (dropout's), or a resumed
        # run, which starts its iterator after restoring that RNG, would drift from an uninterrupted one
        generator=torch.Generator().manual_seed(config.seed),
    )
    ema = None
    if config.use_ema:
        ema = EMAModel(
            model.parameters(),
            decay=config.ema_decay,
            use_ema_warmup=config.ema_warmup,
            power=config.ema_power,
        )
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)
    model, optimizer, dataloader, lr_scheduler = accelerator.prepare(model, optimizer, dataloader, lr_scheduler)
    unwrapped = accelerator.unwrap_model(model)

    # noise, timesteps and augmentations: one generator per process, seeded apart, saved in checkpoints
    generator = torch.Generator().manual_seed(config.seed + 1000 * (rank + 1))
    global_step = 0
    if resume_path is not None:
        accelerator.load_state(str(resume_path))
        global_step = int(resume_state["global_step"])
        own = resume_path / f"trainer_state_{rank}.pt"
        if own.is_file():
            generator.set_state(torch.load(own, weights_only=True)["generator"])
        else:
            logger.warning("%s missing (process count changed?): reseeding this process's generator", own)
            generator.manual_seed(config.seed + 1000 * (rank + 1) + global_step)
        logger.info("resumed from %s at step %d", resume_path, global_step)
    if accelerator.is_main_process:
        remove_incomplete(checkpoint_root)
        output_dir.mkdir(parents=True, exist_ok=True)
        # a resumed run keeps the commands that brought it here: the model card shows them all, in order
        commands = [command]
        previous = output_dir / "training_config.json"
        if resume_path is not None and previous.is_file():
            try:
                recorded = json.loads(previous.read_text(encoding="utf-8"))
                commands = [*recorded.get("commands", [recorded.get("command")]), command]
            except (OSError, ValueError, AttributeError):
                logger.warning("could not read the earlier commands from %s", previous)
        commands = [c for c in commands if c]
        command = "\n".join(commands)
        with open(previous, "w", encoding="utf-8") as f:
            json.dump({"command": commands[-1], "commands": commands, "config": config.to_dict()}, f, indent=2)
    if accelerator.is_main_process and config.report_to != "none":
        accelerator.init_trackers("train", config=_hparams(config))

    steps_per_epoch = len(dataloader) // config.gradient_accumulation_steps
    if steps_per_epoch == 0:
        raise ValueError(
            f"one epoch has {len(dataloader)} batches per process, fewer than gradient_accumulation_steps="
            f"{config.gradient_accumulation_steps}; use a smaller batch or fewer accumulation steps."
        )
    images_per_step = config.train_batch_size * config.gradient_accumulation_steps * world
    logger.info(
        "stage=%s%s data=%s (%d images, resolution %d) params=%.2fM processes=%d images/step=%d steps=%d",
        config.stage, " (latent)" if setup.vae is not None else "", setup.data_description, len(setup.dataset),
        setup.resolution, sum(p.numel() for p in unwrapped.parameters()) / 1e6, world, images_per_step,
        config.max_train_steps,
    )  # fmt: skip

    debug_file = None
    if config.debug_record_batches:
        (output_dir / "debug").mkdir(parents=True, exist_ok=True)
        debug_file = open(output_dir / "debug" / f"batches_rank{rank}.jsonl", "a", encoding="utf-8")  # noqa: SIM115

    last_saved_step = global_step if resume_path is not None else -1

    def save(step: int, last_loss: float | None) -> Path:
        def write_extra(folder: Path) -> None:
            path = folder / f"trainer_state_{rank}.pt"
            torch.save({"generator": generator.get_state(), "global_step": step}, path)

        marker = {"global_step": step, "latent_scale": setup.latent_scale, "loss": last_loss, "num_processes": world}
        path = save_checkpoint_atomic(accelerator, checkpoint_root, step, write_extra, marker)
        nonlocal last_saved_step
        last_saved_step = step
        if accelerator.is_main_process:
            prune_checkpoints(checkpoint_root, config.checkpoints_total_limit)
        accelerator.wait_for_everyone()
        return path

    # 3. the loop
    progress = None
    if config.progress_bar and accelerator.is_local_main_process:
        from tqdm.auto import tqdm

        progress = tqdm(
            total=config.max_train_steps,
            initial=global_step,
            desc=f"train {config.stage}",
            unit="step",
            mininterval=0.5 if sys.stderr.isatty() else 30.0,  # a log file gets a line every 30 s, not every step
        )
    accum = config.gradient_accumulation_steps
    micro_per_epoch = steps_per_epoch * accum
    epoch = global_step // steps_per_epoch
    skip = (global_step % steps_per_epoch) * accum
    loss_window: list[float] = []
    last_loss = None
    start_time, start_step = time.perf_counter(), global_step
    first_step = global_step
    metrics: dict[str, Any] = {}

    while global_step < config.max_train_steps:
        loader = accelerator.skip_first_batches(dataloader, skip) if skip else dataloader
        loader.set_epoch(epoch)
        micro = skip
        step_loss = 0.0
        for batch in loader:
            if micro >= micro_per_epoch:
                break
            if debug_file is not None:
                debug_file.write(
                    json.dumps({"step": global_step, "micro": micro, "indices": batch["index"].tolist()}) + "\n"
                )
            sync = (micro + 1) % accum == 0
            if sync:
                loss = _compute_loss(model, batch, setup, config, generator, accelerator.device)
            else:
                with accelerator.no_sync(model):
                    loss = _compute_loss(model, batch, setup, config, generator, accelerator.device)
            if config.debug_nan_at_step is not None and global_step + 1 == config.debug_nan_at_step:
                loss = loss * float("nan")
            bad = torch.tensor([0.0 if torch.isfinite(loss.detach()) else 1.0], device=accelerator.device)
            if world > 1:
                bad = accelerator.reduce(bad, "max")
            if bad.item() > 0:
                if progress is not None:
                    progress.close()
                good = list_checkpoints(checkpoint_root)
                kept = f"the last good checkpoint is {good[-1][1]}" if good else "no checkpoint was written yet"
                accelerator.end_training()
                raise NonFiniteLossError(
                    f"the loss became {loss.item()} at step {global_step + 1} (epoch {epoch}); training stopped "
                    f"without saving these weights, {kept}. Lower --learning_rate, keep --max_grad_norm on, or "
                    "check the data; then resume with --resume latest."
                )
            if sync:
                accelerator.backward(loss / accum)
            else:
                with accelerator.no_sync(model):
                    accelerator.backward(loss / accum)
            step_loss += loss.detach().item() / accum
            micro += 1
            if not sync:
                continue

            # one optimizer step
            if config.max_grad_norm is not None:
                accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.step(unwrapped.parameters())
            global_step += 1
            last_loss = step_loss
            loss_window.append(step_loss)
            step_loss = 0.0
            if global_step == first_step + 1 and config.max_train_steps > global_step:
                # images/s from here on: the first step pays one-time costs (kernel selection, allocations)
                start_time, start_step = time.perf_counter(), global_step

            if progress is not None:
                progress.update(1)
                rate = (global_step - start_step) * images_per_step / max(time.perf_counter() - start_time, 1e-9)
                rate = rate if global_step > start_step else float("nan")
                progress.set_postfix(
                    loss=f"{last_loss:.4f}",
                    lr=f"{lr_scheduler.get_last_lr()[0]:.2e}",
                    img_s=f"{rate:.1f}",
                    refresh=False,
                )
            if global_step % config.logging_steps == 0 or global_step == config.max_train_steps:
                elapsed = time.perf_counter() - start_time
                logs = {
                    "train/loss": float(np.mean(loss_window)),
                    "train/lr": lr_scheduler.get_last_lr()[0],
                    "train/epoch": epoch,
                }
                if global_step > start_step:
                    logs["train/images_per_second"] = (global_step - start_step) * images_per_step / max(elapsed, 1e-9)
                if ema is not None:
                    logs["train/ema_decay"] = ema.cur_decay_value if ema.cur_decay_value is not None else 0.0
                metrics.update(logs)
                loss_window = []
                accelerator.log(logs, step=global_step)
            if config.checkpointing_steps and global_step % config.checkpointing_steps == 0:
                save(global_step, last_loss)
            if config.sample_steps and global_step % config.sample_steps == 0:
                _periodic_samples(accelerator, unwrapped, ema, setup, config, global_step, output_dir)
            if config.eval_steps and global_step % config.eval_steps == 0:
                metrics.update(_periodic_eval(accelerator, unwrapped, ema, setup, config, global_step))
            if global_step >= config.max_train_steps:
                break
        epoch += 1
        skip = 0

    if progress is not None:
        progress.close()
    if debug_file is not None:
        # a fingerprint of this process's final weights (and EMA), to check that all processes agree
        digest = hashlib.sha256()
        for p in unwrapped.parameters():
            digest.update(p.detach().cpu().contiguous().numpy().tobytes())
        if ema is not None:
            for p in ema.shadow_params:
                digest.update(p.detach().cpu().contiguous().numpy().tobytes())
        debug_file.write(json.dumps({"final_step": global_step, "weights_sha256": digest.hexdigest()}) + "\n")
        debug_file.close()
    elapsed = time.perf_counter() - start_time
    if global_step > start_step:
        metrics["train/images_per_second"] = (global_step - start_step) * images_per_step / max(elapsed, 1e-9)
    if last_saved_step != global_step:
        save(global_step, last_loss)

    # 4. export (main process): EMA weights into a fresh copy of the model
    result = TrainResult(output_dir=output_dir, global_step=global_step, metrics=metrics)
    if accelerator.is_main_process:
        final_model = copy.deepcopy(unwrapped)
        if ema is not None:
            ema.copy_to(final_model.parameters())
        final_model.eval()
        if config.stage == "vae":
            result.final_dir, extra = _export_vae(final_model.vae, setup, config, output_dir)
        else:
            result.final_dir, result.hub_dir, extra = _export_unet(
                final_model, setup, config, output_dir, command, global_step, images_per_step, metrics
            )
        result.metrics.update(extra)
        with open(output_dir / "metrics.json", "w", encoding="utf-8") as f:
            json.dump({"global_step": global_step, **result.metrics}, f, indent=2)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def _compute_loss(model, batch: dict, setup: _Setup, config: TrainingConfig, generator, device) -> torch.Tensor:
    """One micro-batch's loss. All randomness comes from `generator` (a CPU generator, moved to the device)."""
    if "latent_moments" in batch:
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        posterior = DiagonalGaussianDistribution(batch["latent_moments"].to(device))
        x0 = latents_from_posterior(posterior, setup.latent_scale, generator)  # z_0 = s z, docs/maths.md [LAT1]
    else:
        x0 = batch["pixel_values"].to(device)
        if config.random_flip:
            flip = torch.rand(x0.shape[0], generator=generator).to(device) < 0.5
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        if setup.vae is not None:
            with torch.no_grad():
                x0 = images_to_latents(setup.vae, x0, generator, scale=setup.latent_scale)
    if config.stage == "vae":
        reconstruction, kl = model(x0, generator=generator)
        return _vae_loss(reconstruction, x0, kl, config.vae_kl_weight)

    from ddpm_plugin.losses import hybrid_loss, simple_loss

    scheduler = setup.scheduler
    noise = torch.randn(x0.shape, generator=generator).to(device)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=generator).to(device)
    noisy = scheduler.add_noise(x0, noise, timesteps)  # Ho (4)
    model_output = model(noisy, timesteps, return_dict=False)[0]
    if config.loss_type == "hybrid":
        return hybrid_loss(
            model_output,
            x0,
            noise,
            timesteps,
            scheduler,
            noisy_samples=noisy,
            lambda_vlb=config.lambda_vlb,
            snr_gamma=config.snr_gamma,
            decoder="continuous" if setup.vae is not None else "discretized",
        )
    return simple_loss(model_output, x0, noise, timesteps, scheduler, snr_gamma=config.snr_gamma)


# ---------------------------------------------------------------------------------------------------- eval
class _EMAWeights:
    """Context: the model holds the EMA weights inside, its own weights again after (and eval mode inside)."""

    def __init__(self, model: nn.Module, ema: EMAModel | None):
        self.model, self.ema = model, ema

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()
        if self.ema is not None:
            self.ema.store(self.model.parameters())
            self.ema.copy_to(self.model.parameters())
        return self.model

    def __exit__(self, *exc):
        if self.ema is not None:
            self.ema.restore(self.model.parameters())
        self.model.train(self.was_training)


@torch.no_grad()
def _periodic_samples(accelerator, unwrapped, ema, setup: _Setup, config, step: int, output_dir: Path) -> None:
    if accelerator.is_main_process:
        with _EMAWeights(unwrapped, ema) as model:
            generator = torch.Generator().manual_seed(config.seed)
            if config.stage == "vae":
                x = setup.eval_images[: config.num_sample_images].to(accelerator.device)
                reconstruction = model.vae(x).sample  # posterior mode -> decoder
                images = torch.cat([x, reconstruction]).clamp(-1, 1).add(1).div(2).permute(0, 2, 3, 1).cpu().numpy()
            else:
                try:
                    pipe = _make_pipeline(model, setup.scheduler, setup.vae, config.sample_inference_steps)
                except ImportError as error:
                    logger.warning("sample grid skipped: %s", error)
                    return
                pipe.set_progress_bar_config(disable=True)
                images = pipe(
                    batch_size=config.num_sample_images,
                    generator=generator,
                    num_inference_steps=config.sample_inference_steps,
                    output_type="np",
                ).images
        path = output_dir / "samples" / f"step-{step:07d}.png"
        _save_grid(np.asarray(images), path)
        tracker = accelerator.get_tracker("tensorboard", unwrap=True) if config.report_to == "tensorboard" else None
        if tracker is not None and hasattr(tracker, "add_images"):
            tracker.add_images("samples", np.asarray(images), step, dataformats="NHWC")
    accelerator.wait_for_everyone()


@torch.no_grad()
def _heldout_bpd(model, setup: _Setup, images: torch.Tensor, num_timesteps: int | None, seed: int) -> float:
    from ddpm_plugin import GaussianDDPMScheduler
    from ddpm_plugin.likelihood import bits_per_dim

    scheduler = GaussianDDPMScheduler.from_config(setup.scheduler.config)
    result = bits_per_dim(
        model,
        scheduler,
        images,
        vae=setup.vae,
        generator=torch.Generator().manual_seed(seed),
        batch_size=min(64, images.shape[0]),
        num_timesteps=num_timesteps,
    )
    return float(result.bpd.mean())


@torch.no_grad()
def _periodic_eval(accelerator, unwrapped, ema, setup: _Setup, config, step: int) -> dict[str, float]:
    logs: dict[str, float] = {}
    if accelerator.is_main_process and setup.eval_images is not None:
        images = setup.eval_images[: config.eval_num_images].to(accelerator.device)
        with _EMAWeights(unwrapped, ema) as model:
            if config.stage == "vae":
                reconstruction, kl = model(images)
                logs["eval/vae_loss"] = float(_vae_loss(reconstruction, images, kl, config.vae_kl_weight))
                logs["eval/reconstruction_mse"] = float((reconstruction - images).pow(2).mean())
            else:
                try:
                    logs["eval/bpd"] = _heldout_bpd(model, setup, images, config.eval_num_timesteps, config.seed)
                except ImportError as error:
                    logger.warning("held-out bits/dim skipped: %s", error)
        if logs:
            accelerator.log(logs, step=step)
            logger.info("step %d: %s", step, ", ".join(f"{k}={v:.4f}" for k, v in logs.items()))
    accelerator.wait_for_everyone()
    return logs


# ---------------------------------------------------------------------------------------------------- export
def _export_vae(vae: AutoencoderKL, setup: _Setup, config: TrainingConfig, output_dir: Path):
    """Saves the AutoencoderKL (EMA weights) with its latent scale s = 1 / std(z) in `scaling_factor`."""
    extra: dict[str, Any] = {}
    if setup.eval_images is not None:
        images = setup.eval_images.to(next(vae.parameters()).device)
        with torch.no_grad():
            reconstruction = vae(images).sample
        extra["eval/reconstruction_mse"] = float((reconstruction - images).pow(2).mean())
    from ddpm_plugin.latent import (
        estimate_latent_scale,
        fit_decoder_log_scale,
        set_decoder_log_scale,
        set_latent_scale,
    )

    # s = 1 / std(z) (docs/maths.md [LAT1]; the latent UNet stage re-estimates it on its own data) and the pixel decoder's
    # scale for the latent NLL bound, both fitted on training images
    images = _first_images(setup.dataset, config.latent_scale_samples).to(next(vae.parameters()).device)
    scale = float(
        estimate_latent_scale(vae, images, batch_size=256, generator=torch.Generator().manual_seed(config.seed))
    )
    set_latent_scale(vae, scale)
    extra["latent_scale"] = scale
    try:
        log_scale = fit_decoder_log_scale(
            vae, images, batch_size=256, generator=torch.Generator().manual_seed(config.seed)
        )
    except ValueError as error:  # resized images are off the 8-bit grid: no discrete decoder to fit
        logger.info("decoder log-scale not fitted: %s", error)
    else:
        set_decoder_log_scale(vae, log_scale)
        extra["decoder_log_scale"] = float(log_scale)
    folder = output_dir / "vae"
    vae.save_pretrained(folder)
    logger.info("saved the VAE to %s", folder)
    return folder, extra


def _export_unet(unet, setup: _Setup, config, output_dir: Path, command: str, step: int, images_per_step, metrics):
    extra: dict[str, Any] = {}
    if config.final_eval_num_images and setup.eval_images is not None:
        images = setup.eval_images[: config.final_eval_num_images].to(next(unet.parameters()).device)
        try:
            extra["bpd"] = _heldout_bpd(unet, setup, images, config.final_eval_num_timesteps, config.seed)
            extra["bpd_num_images"] = int(images.shape[0])
            extra["bpd_num_timesteps"] = config.final_eval_num_timesteps or setup.scheduler.config.num_train_timesteps
            logger.info("final held-out bits/dim (EMA weights): %.4f", extra["bpd"])
        except ImportError as error:
            logger.warning("final bits/dim skipped: %s", error)
    try:
        pipe = _make_pipeline(unet, setup.scheduler, setup.vae, config.default_num_inference_steps)
    except ImportError as error:
        logger.error(
            "could not build the pipeline (%s); the checkpoints are complete: rerun with --resume latest to export.",
            error,
        )
        return None, None, extra
    folder = output_dir / "pipeline"
    pipe.save_pretrained(folder)
    logger.info("saved the pipeline to %s", folder)
    hub_dir = None
    card_metrics = {}
    if "bpd" in extra:
        card_metrics[
            f"held-out bits/dim ({extra['bpd_num_images']} images, {extra['bpd_num_timesteps']} timesteps)"
        ] = extra["bpd"]
    if "train/loss" in metrics:
        card_metrics["final training loss"] = float(metrics["train/loss"])
    if "train/images_per_second" in metrics:
        card_metrics["training images/s"] = float(metrics["train/images_per_second"])
    card_metrics["training steps"] = float(step)
    card_metrics["training images seen"] = float(step * images_per_step)
    space = "latent" if setup.vae is not None else "pixel"
    num_params = sum(p.numel() for p in unet.parameters())
    card = {
        "description": (
            f"A {space}-space DDPM ({num_params / 1e6:.2f}M-parameter UNet, T={setup.scheduler.config.num_train_timesteps}, "
            f"{setup.scheduler.config.beta_schedule} schedule, {setup.scheduler.config.prediction_type} prediction, "
            f"{config.loss_type} loss) trained with ddpm_plugin's training module on {setup.data_description} for "
            f"{step} steps ({step * images_per_step} images){', EMA weights' if config.use_ema else ''}"
            + (f", fine-tuned from {config.init_from}" if config.init_from else "")
            + "."
        ),
        "metrics": card_metrics,
        "training_command": command,
        "grid_num_inference_steps": min(config.card_grid_inference_steps, config.default_num_inference_steps),
    }
    if config.init_from and not os.path.exists(config.init_from):
        card["base_model"] = config.init_from
    if config.dataset != "mnist" and not os.path.exists(config.dataset):
        card["datasets"] = config.dataset
    try:
        from ddpm_plugin import save_for_hub

        hub_dir = output_dir / "hub"
        save_for_hub(pipe, hub_dir, **card)
        logger.info("saved the Hub folder (model card) to %s", hub_dir)
    except ImportError as error:
        hub_dir = None
        logger.warning("Hub folder not written (%s); the pipeline folder is complete.", error)
    if config.push_to_hub:
        from ddpm_plugin import push_to_hub

        push_to_hub(pipe, config.push_to_hub, private=config.hub_private, **card)
    return folder, hub_dir, extra

# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""Batch sampling at scale: N samples of a pipeline written to a folder, resumable and sharded across processes.

    python -m ddpm_plugin.sample --model latent --num-samples 10000 --out samples/ [--format png|npz]
        [--batch-size 250] [--shard-size 1000] [--num-inference-steps 100] [--scheduler ddpm|ddim|dpm|dpm-sde|euler-a]
        [--seed 0] [--dtype auto|float32|bfloat16|float16]

    accelerate launch --num_processes 4 -m ddpm_plugin.sample ...      # or: torchrun --nproc_per_node 4 -m ...

The samples are cut into shards of `--shard-size` consecutive indices (shard k holds samples [k*S, (k+1)*S)). Process i
of n takes shards i, i + n, i + 2n, ...; a shard's files are written to a temporary folder and renamed into place,
then a done-marker (`.shards/shard-XXXXX.done`) is written, also by rename. A rerun skips the shards whose marker is
there, so a killed run resumes where it stopped. Sample i starts from its own generator, seeded from (seed, i)
(`sample_seed`), and a batch never spans two shards, so the images do not depend on the number of processes.

Output: `DIR/000123.png` per sample (8-bit, grayscale or RGB), or `DIR/shard-00001.npz` per shard with `images`
(uint8, `(num_in_shard, height, width, num_channels)`) and `indices` (int64); and `DIR/run_config.json`, the settings
a resumed run must share (model, scheduler, steps, seed, shard size, format, dtype).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from .pipelines.samplers import SAMPLERS, make_sampler, unet_predicts_variance
from .precision import DTYPE_NAMES, add_dtype_argument, resolve_dtype

__all__ = [
    "SCHEDULERS",
    "UnsupportedSamplerError",
    "generators_for",
    "load_pipeline",
    "main",
    "sample_seed",
    "sample_to_folder",
    "set_scheduler",
    "shard_ranges",
]

SCHEDULERS = tuple(SAMPLERS)
DTYPES = DTYPE_NAMES
RUN_CONFIG_NAME = "run_config.json"
MARKER_DIR = ".shards"
TMP_DIR = ".tmp"
# run settings that a resumed run must share with the run it continues (num_samples may grow, batch_size may change)
_RESUME_KEYS = ("model", "scheduler", "num_inference_steps", "seed", "shard_size", "format", "dtype")


class UnsupportedSamplerError(ValueError):
    """The requested sampler cannot sample this model (e.g. DDIM for a UNet with learned variance)."""


# ---------------------------------------------------------------------------------------------------- seeding
def sample_seed(seed: int, index: int) -> int:
    """
    The 64-bit seed of sample `index` of a run with `seed`, mixed by numpy's `SeedSequence` so that nearby
    `(seed, index)` pairs give unrelated streams. Depends on nothing else (batch size, shards, processes).
    """
    if seed < 0 or index < 0:
        raise ValueError(f"seed and sample index must be non-negative, got seed={seed}, index={index}.")
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0])


def generators_for(seed: int, start: int, end: int) -> list[torch.Generator]:
    """One CPU generator per sample index in [start, end), for the pipelines' per-image `generator` lists."""
    return [torch.Generator("cpu").manual_seed(sample_seed(seed, i)) for i in range(start, end)]


def shard_ranges(num_samples: int, shard_size: int) -> list[tuple[int, int]]:
    """`[(start, end), ...]` of the shards: shard k holds samples [k * shard_size, min((k + 1) * shard_size, N))."""
    return [(s, min(s + shard_size, num_samples)) for s in range(0, num_samples, shard_size)]


# ---------------------------------------------------------------------------------------------------- pipelines
def load_pipeline(model: str, torch_dtype: torch.dtype | None = None, device: str | torch.device | None = None):
    """A bundled model (`"bundled:latent"`, or `"latent"`), a pipeline folder or a Hub id (`ddpm_plugin.resolve`)."""
    from .resolve import CLI_POLICY
    from .resolve import load_pipeline as resolve_and_load

    pipe = resolve_and_load(model, CLI_POLICY, torch_dtype=torch_dtype, device=device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def set_scheduler(pipe, name: str | None, base=None):
    """
    Puts a fresh scheduler of kind `name` into `pipe`, built from the config of `base` (default: the pipeline's
    current scheduler; pass the original one when swapping several times, as `from_config` drops foreign keys): one of
    `SCHEDULERS` (see `ddpm_plugin.pipelines.samplers.SAMPLERS`): `"ddpm"` the class of `base` (ancestral sampling,
    respaced for fewer steps, ND section 4), `"ddim"` diffusers' `DDIMScheduler` (eta = 0), `"dpm"` diffusers'
    `DPMSolverMultistepScheduler`, `"dpm-sde"` the same with `algorithm_type="sde-dpmsolver++"`, `"euler-a"`
    `EulerAncestralDiscreteScheduler`. `None` leaves the pipeline's scheduler (so a run uses the pipeline's
    `default_sampler`). Returns the scheduler the pipeline then has.
    """
    if name is None:
        return pipe.scheduler
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler={name!r} is not supported; choose one of {SCHEDULERS}.")
    base = pipe.scheduler if base is None else base
    if name == "ddpm":
        pipe.scheduler = type(base).from_config(base.config)
        return pipe.scheduler
    unet_config = pipe.unet.config
    if unet_predicts_variance(unet_config):
        raise UnsupportedSamplerError(
            f"scheduler={name!r} cannot sample this model: its UNet predicts a learned variance (out_channels="
            f"{unet_config.out_channels}, twice in_channels), which diffusers' DDIM / DPM-Solver steps do not "
            "split off; use scheduler='ddpm'."
        )
    pipe.scheduler = make_sampler(name, base)
    return pipe.scheduler


def generate(
    pipe,
    start: int,
    end: int,
    *,
    seed: int,
    num_inference_steps: int | None,
    batch_size: int,
) -> Iterable[tuple[int, np.ndarray]]:
    """
    Samples [start, end) in batches of at most `batch_size`, sample i from `generators_for(seed, i, i + 1)`.

    Yields:
        `(batch_start, images)` with images a uint8 array `(n, height, width, num_channels)`.
    """
    for b0 in range(start, end, batch_size):
        b1 = min(b0 + batch_size, end)
        images = pipe(
            batch_size=b1 - b0,
            generator=generators_for(seed, b0, b1),
            num_inference_steps=num_inference_steps,
            output_type="np",
        ).images  # (n, H, W, C) in [0, 1]
        yield b0, (np.asarray(images, dtype=np.float32) * 255).round().astype(np.uint8)


# ---------------------------------------------------------------------------------------------------- shards
def _marker_path(out: Path, shard: int) -> Path:
    return out / MARKER_DIR / f"shard-{shard:05d}.done"


def _shard_done(out: Path, shard: int, start: int, end: int) -> bool:
    """A shard is done when its marker records the same sample range (a grown last shard is redone)."""
    try:
        with open(_marker_path(out, shard), encoding="utf-8") as f:
            marker = json.load(f)
        return marker["start"] == start and marker["end"] == end
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def png_name(index: int) -> str:
    return f"{index:06d}.png"


def npz_name(shard: int) -> str:
    return f"shard-{shard:05d}.npz"


def _write_shard(pipe, out: Path, shard: int, start: int, end: int, args, progress) -> None:
    """Generates one shard into a temporary folder, renames its files into `out`, then writes its done-marker."""
    from PIL import Image

    tmp = out / TMP_DIR / f"shard-{shard:05d}"
    shutil.rmtree(tmp, ignore_errors=True)  # leftovers of a killed run; a shard belongs to one process
    tmp.mkdir(parents=True)
    batches = []
    for b0, images in generate(
        pipe, start, end, seed=args.seed, num_inference_steps=args.num_inference_steps, batch_size=args.batch_size
    ):
        if args.format == "png":
            for j, image in enumerate(images):
                pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
                pil.save(tmp / png_name(b0 + j))
        else:
            batches.append(images)
        progress.update(len(images))
    if args.format == "png":
        names = [png_name(i) for i in range(start, end)]
    else:
        names = [npz_name(shard)]
        np.savez(tmp / names[0], images=np.concatenate(batches), indices=np.arange(start, end, dtype=np.int64))
    for name in names:
        os.replace(tmp / name, out / name)
    _write_json_atomic(_marker_path(out, shard), {"shard": shard, "start": start, "end": end, "files": len(names)})
    shutil.rmtree(tmp, ignore_errors=True)


def _run_config(args, dtype: torch.dtype) -> dict:
    """The settings of the run; `dtype` is the resolved one (`--dtype auto` may differ between machines)."""
    model = args.model if not os.path.isdir(args.model) else os.path.abspath(args.model)
    return {
        "model": model,
        "scheduler": args.scheduler,
        "num_inference_steps": args.num_inference_steps,
        "seed": args.seed,
        "shard_size": args.shard_size,
        "format": args.format,
        "dtype": str(dtype).removeprefix("torch."),
        "num_samples": args.num_samples,
    }


def _check_resume(out: Path, config: dict) -> bool:
    """True if `out` holds an earlier run; raises if its settings differ from `config` in a key that matters."""
    path = out / RUN_CONFIG_NAME
    if not path.is_file():
        return False
    try:
        with open(path, encoding="utf-8") as f:
            previous = json.load(f)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read {str(path)!r} ({error}); remove it or use another --out folder.") from None
    different = {k: (previous.get(k), config[k]) for k in _RESUME_KEYS if previous.get(k) != config[k]}
    if different:
        details = ", ".join(f"{k}: {old!r} before, {new!r} now" for k, (old, new) in different.items())
        raise ValueError(
            f"{str(out)!r} holds samples of a run with other settings ({details}); resuming would mix them. "
            "Use the same settings or another --out folder."
        )
    return True


def sample_to_folder(args: argparse.Namespace) -> dict:
    """Runs the sampling of the parsed command line `args` in this process (one of possibly many); returns a summary."""
    from accelerate import PartialState
    from tqdm.auto import tqdm

    # without an accelerator, accelerate treats torchrun / `accelerate launch` processes as MULTI_CPU (gloo) only
    # when asked for the CPU
    state = PartialState(cpu=args.cpu or not _accelerator_available())
    out = Path(args.out)
    dtype = resolve_dtype(args.dtype, state.device)
    config = _run_config(args, dtype)
    resumed = _check_resume(out, config)
    if state.is_main_process:
        (out / MARKER_DIR).mkdir(parents=True, exist_ok=True)
        _write_json_atomic(out / RUN_CONFIG_NAME, config)
    state.wait_for_everyone()

    shards = shard_ranges(args.num_samples, args.shard_size)
    mine = list(range(state.process_index, len(shards), state.num_processes))
    todo = [k for k in mine if not _shard_done(out, k, *shards[k])]
    written = 0
    if todo:
        torch_dtype = None if dtype == torch.float32 else dtype  # float32: as saved, no cast
        pipe = load_pipeline(args.model, torch_dtype=torch_dtype, device=state.device)
        set_scheduler(pipe, args.scheduler)
        total = sum(shards[k][1] - shards[k][0] for k in todo)
        desc = f"sampling (process {state.process_index}/{state.num_processes})"
        with tqdm(total=total, desc=desc, unit="img", disable=not state.is_local_main_process) as progress:
            for k in todo:
                _write_shard(pipe, out, k, *shards[k], args, progress)
                written += shards[k][1] - shards[k][0]
    state.wait_for_everyone()
    done = sum(_shard_done(out, k, *shards[k]) for k in range(len(shards)))
    if state.is_main_process:
        shutil.rmtree(out / TMP_DIR, ignore_errors=True)
    return {
        "process_index": state.process_index,
        "num_processes": state.num_processes,
        "resumed": resumed,
        "shards": len(shards),
        "shards_done": done,
        "shards_skipped": len(mine) - len(todo),
        "samples_written": written,
    }


def _accelerator_available() -> bool:
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None:
        return bool(accelerator.is_available())
    return torch.cuda.is_available()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Write N samples of a DDPM pipeline to a folder (PNG files or .npz shards); resumable; run under "
        "`accelerate launch` or `torchrun` to shard the work across processes."
    )
    parser.add_argument("--model", default="latent", help="'latent', 'pixel' (bundled) or a pipeline folder")
    parser.add_argument("--num-samples", type=int, required=True)
    parser.add_argument("--out", required=True, help="output folder (created; a rerun resumes)")
    parser.add_argument("--format", choices=("png", "npz"), default="png")
    parser.add_argument("--batch-size", type=int, default=100, help="images per pipeline call")
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per shard (the unit of resuming)")
    parser.add_argument("--num-inference-steps", type=int, default=None, help="default: the pipeline's default")
    parser.add_argument(
        "--scheduler", choices=SCHEDULERS, default=None, help="default: the pipeline's default_sampler"
    )
    parser.add_argument("--seed", type=int, default=0)
    add_dtype_argument(parser)
    parser.add_argument("--cpu", action="store_true", help="sample on the CPU even where a GPU is available")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    args = parser.parse_args(argv)
    for name in ("num_samples", "batch_size", "shard_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}.")
    if args.num_inference_steps is not None and args.num_inference_steps < 1:
        parser.error(f"--num-inference-steps must be a positive integer, got {args.num_inference_steps}.")
    if args.seed < 0:
        parser.error(f"--seed must be non-negative, got {args.seed}.")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    summary = sample_to_folder(args)
    if summary["num_processes"] > 1:
        from accelerate import PartialState

        PartialState().destroy_process_group()
    if summary["process_index"] == 0:
        print(
            f"{args.out}: {summary['shards_done']}/{summary['shards']} shards done "
            f"({summary['shards_skipped']} skipped as already complete in this process, "
            f"{summary['samples_written']} samples written by process 0 of {summary['num_processes']})."
        )
    return summary


if __name__ == "__main__":
    main()

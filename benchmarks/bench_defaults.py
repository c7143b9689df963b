# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""Time per image of the bundled models at their defaults, side by side in one process (interleaved repeats):

- today's default: `pipe()` as shipped (the pipeline's `default_sampler` and steps, bf16 where native);
- the first release's default: ancestral DDPM, respaced (latent 50 steps, pixel 100), float32;
- what a diffusers user would otherwise run: `diffusers.DDPMPipeline` (pixel) at its own default of 1,000 steps, on
  the same UNet and a `DDPMScheduler` built from the same config, float32.

    python benchmarks/bench_defaults.py [--batch-size 16] [--repeats 3] [--threads 1]

The quality of each setting on 1,000 samples is measured with `python -m ddpm_plugin.evaluate` (README, "Quality").
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import interleaved, machine_info, medians  # noqa: E402

from ddpm_plugin import load_default_pipeline  # noqa: E402
from ddpm_plugin.precision import default_dtype  # noqa: E402

OLD_DEFAULT_STEPS = {"latent": 50, "pixel": 100}


def variants(kind: str, batch_size: int, diffusers_steps: int) -> dict:
    fp32 = load_default_pipeline(kind)
    auto = load_default_pipeline(kind, torch_dtype=default_dtype("cpu"))
    for pipe in (fp32, auto):
        pipe.set_progress_bar_config(disable=True)

    def generators():
        return [torch.Generator().manual_seed(i) for i in range(batch_size)]

    out = {
        f"{kind}: default ({auto.config.default_sampler}, {auto.config.default_num_inference_steps} steps, "
        f"{str(auto.unet.dtype).removeprefix('torch.')})": lambda: auto(batch_size=batch_size, generator=generators()),
        f"{kind}: first release (ddpm, {OLD_DEFAULT_STEPS[kind]} steps, float32)": lambda: fp32(
            batch_size=batch_size, generator=generators(), sampler="ddpm", num_inference_steps=OLD_DEFAULT_STEPS[kind]
        ),
    }
    if kind == "pixel":
        from diffusers import DDPMPipeline, DDPMScheduler

        reference = DDPMPipeline(unet=fp32.unet, scheduler=DDPMScheduler.from_config(fp32.scheduler.config))
        reference.set_progress_bar_config(disable=True)
        out[f"pixel: diffusers DDPMPipeline ({diffusers_steps} steps, float32)"] = lambda: reference(
            batch_size=batch_size, generator=generators(), num_inference_steps=diffusers_steps
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--diffusers-steps", type=int, default=1000, help="diffusers' DDPMPipeline default: 1000")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = machine_info()
    print(f"# {info.get('cpu', '')}; bf16 native: {default_dtype('cpu') == torch.bfloat16}; {args.threads} thread(s)")
    print("| setting | s / image | vs today's default |")
    print("|---|---|---|")
    for kind in ("latent", "pixel"):
        cases = variants(kind, args.batch_size, args.diffusers_steps)
        times = medians(interleaved(cases, repeats=args.repeats, warmup=0))
        base = next(iter(times.values()))
        for name, seconds in times.items():
            print(f"| {name} | {seconds / args.batch_size:.4f} | {seconds / base:.1f}x |")


if __name__ == "__main__":
    main()

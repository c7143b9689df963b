# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""Time per image of the bundled models at their defaults, side by side in one process (interleaved repeats):

- today's default: `pipe()` as shipped (the pipeline's `default_sampler` and steps, bf16 where native);
- the first release's default: ancestral DDPM, respaced (latent 50 steps, pixel 100), float32;
- what a diffusers user would otherwise run: `diffusers.DDPMPipeline` (pixel) at its own default of 1,000 steps, on
  the same UNet and a `DDPMScheduler` built from the same config, float32.

    python benchmarks/bench_defaults.py [--batch-size 16] [--repeats 3] [--threads 1]

`bench_defaults_rows` gives the same measurements as rows of `benchmarks/run_all.py` (section "defaults"), with the
default in float32 too, so that bf16 and the few-step sampler each show what they give.

The quality of each setting on 1,000 samples is measured with `python -m ddpm_plugin.evaluate` (README, "Quality").
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import Row, interleaved, machine_info, medians, met  # noqa: E402

from ddpm_plugin import load_default_pipeline  # noqa: E402
from ddpm_plugin.precision import default_dtype  # noqa: E402

OLD_DEFAULT_STEPS = {"latent": 50, "pixel": 100}


def variants(kind: str, batch_size: int, diffusers_steps: int, default_in_fp32: bool = False) -> dict:
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
    if default_in_fp32:  # the same default sampler and steps, float32 weights: what bf16 gives
        out[f"{kind}: default in float32"] = lambda: fp32(batch_size=batch_size, generator=generators())
    if kind == "pixel":
        from diffusers import DDPMPipeline, DDPMScheduler

        reference = DDPMPipeline(unet=fp32.unet, scheduler=DDPMScheduler.from_config(fp32.scheduler.config))
        reference.set_progress_bar_config(disable=True)
        out[f"pixel: diffusers DDPMPipeline ({diffusers_steps} steps, float32)"] = lambda: reference(
            batch_size=batch_size, generator=generators(), num_inference_steps=diffusers_steps
        )
    return out


def bench_defaults_rows(batch_size: int = 4, repeats: int = 3, diffusers_steps: int = 1000) -> list[Row]:
    """
    Rows of `run_all.py`: per model, today's default (its sampler and steps, bf16 where native) against the first
    release's default (goal: <= 1/4 of its time), against the same default in float32 (what bf16 gives), and for the
    pixel model against `diffusers.DDPMPipeline` at `diffusers_steps` (its default: 1,000) on the same UNet.
    """
    rows = []
    for kind in ("latent", "pixel"):
        cases = variants(kind, batch_size, diffusers_steps, default_in_fp32=True)
        default_name = next(iter(cases))
        times = {name: t / batch_size for name, t in medians(interleaved(cases, repeats=repeats, warmup=0)).items()}
        ours = times.pop(default_name)
        bf16 = default_dtype("cpu") == torch.bfloat16
        for name, seconds in times.items():
            ratio = ours / seconds
            if "first release" in name:
                goal, verdict = "<= 0.25x time", met(ratio <= 0.25, f"{1 / ratio:.1f}x faster, 4x asked")
            else:  # bf16's share, and diffusers at its own default: reported
                goal, verdict = "(report)", "n/a"
            rows.append(
                Row(
                    section="defaults",
                    what=default_name,
                    against=name,
                    ours=f"{ours:.4f} s/image",
                    reference=f"{seconds:.4f} s/image",
                    ratio=f"{ratio:.2f}x time",
                    goal=goal,
                    met=verdict,
                    note=f"batch {batch_size}, bf16 native here: {bf16}; quality of each setting: README, Quality",
                )
            )
    return rows


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

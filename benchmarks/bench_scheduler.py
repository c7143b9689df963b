# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""`GaussianDDPMScheduler.step` against `diffusers.DDPMScheduler.step`, same config, side by side.

Each timed call runs `scheduler.step` at a few timesteps of the 1000-step chain (the noisy steps and the last,
noise-free one), with the same model output, sample and seeded generator for both schedulers.

    python benchmarks/bench_scheduler.py [--repeats 21] [--shape 64,1,32,32 --shape 4,3,256,256]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import Row, fmt_ratio, interleaved, medians, met, paired_ratio  # noqa: E402

SHAPES = ((64, 1, 32, 32), (4, 3, 256, 256))
GOAL = 0.7  # ours at most 0.7x diffusers' time


def bench_scheduler_step(
    shapes: tuple[tuple[int, ...], ...] = SHAPES,
    repeats: int = 21,
    timesteps: tuple[int, ...] = (999, 500, 1, 0),
    calls: int = 5,
) -> list[Row]:
    """
    Median time of `calls` x `len(timesteps)` scheduler steps, ours against diffusers', for each sample shape.

    Returns one `Row` per shape; the ratio is ours / diffusers in time (lower is better), goal <= 0.7.
    """
    from diffusers import DDPMScheduler

    from ddpm_plugin import GaussianDDPMScheduler

    config = {"num_train_timesteps": 1000, "beta_schedule": "linear", "variance_type": "fixed_small"}
    ours, reference = GaussianDDPMScheduler(**config), DDPMScheduler(**config)
    for scheduler in (ours, reference):
        scheduler.set_timesteps(1000)
    rows = []
    for shape in shapes:
        gen = torch.Generator().manual_seed(0)
        sample, model_output = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)

        def run(scheduler, sample=sample, model_output=model_output) -> None:
            generator = torch.Generator().manual_seed(1)
            for _ in range(calls):
                for t in timesteps:
                    scheduler.step(model_output, t, sample, generator=generator)

        a = ours.step(model_output, 500, sample, generator=torch.Generator().manual_seed(1)).prev_sample
        b = reference.step(model_output, 500, sample, generator=torch.Generator().manual_seed(1)).prev_sample
        max_diff = (a - b).abs().max().item()
        times = interleaved({"ours": lambda: run(ours), "diffusers": lambda: run(reference)}, repeats, warmup=2)
        med = medians(times)
        ratio = paired_ratio(times, "ours", "diffusers")
        per_step = 1e3 / (calls * len(timesteps))
        rows.append(
            Row(
                section="scheduler",
                what=f"`step`, batch {'x'.join(map(str, shape))}",
                against="`diffusers.DDPMScheduler.step`, same config",
                ours=f"{med['ours'] * per_step:.3f} ms/step",
                reference=f"{med['diffusers'] * per_step:.3f} ms/step",
                ratio=f"{fmt_ratio(ratio)} time",
                goal=f"<= {GOAL}x time",
                met=met(ratio <= GOAL, f"{ratio / GOAL:.2f}x over"),
                note=f"same x_(t-1): max abs diff {max_diff:.1e}",
            )
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--shape", action="append", help="batch shape, e.g. 64,1,32,32 (repeatable)")
    args = parser.parse_args(argv)
    shapes = tuple(tuple(int(v) for v in s.split(",")) for s in args.shape) if args.shape else SHAPES
    for row in bench_scheduler_step(shapes, args.repeats):
        print(row)


if __name__ == "__main__":
    main()

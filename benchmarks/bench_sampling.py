# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""Whole-pipeline speed: the sampling loop against diffusers' `DDPMPipeline`, latent against pixel sampling at the
bundled models' step counts, the cost of step previews, and the cost of `bits_per_dim` over the chain.

    python benchmarks/bench_sampling.py [--steps 20] [--batch-size 4] [--repeats 5]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    Row,
    bundled_or_random_pipeline,
    fmt_ratio,
    interleaved,
    medians,
    met,
    paired_ratio,
    pixel_unet_kwargs,
    unet_pair,
)


# ---------------------------------------------------------------------------------------------------- vs DDPMPipeline
def bench_sampling_loop(
    batch_size: int = 4, steps: int = 20, repeats: int = 5, kwargs_override: dict | None = None
) -> list[Row]:
    """
    `PixelDDPMPipeline` + converted UNet + `GaussianDDPMScheduler` against `diffusers.DDPMPipeline` + `UNet2DModel` +
    `DDPMScheduler` (bundled pixel configuration, same weights, same steps, same seed, `output_type="np"`).
    Ratio: ours / diffusers in images/s, goal >= 1.0.
    """
    from diffusers import DDPMPipeline, DDPMScheduler

    from ddpm_plugin import GaussianDDPMScheduler, PixelDDPMPipeline

    kwargs = kwargs_override or pixel_unet_kwargs()
    reference_unet, our_unet = unet_pair(kwargs)
    schedule = {"num_train_timesteps": 1000, "beta_schedule": "linear", "variance_type": "fixed_small"}
    ours = PixelDDPMPipeline(unet=our_unet, scheduler=GaussianDDPMScheduler(**schedule))
    reference = DDPMPipeline(unet=reference_unet, scheduler=DDPMScheduler(**schedule))
    for pipe in (ours, reference):
        pipe.set_progress_bar_config(disable=True)

    def run(pipe):
        generator = torch.Generator().manual_seed(0)
        return pipe(batch_size=batch_size, generator=generator, num_inference_steps=steps, output_type="np").images

    max_diff = abs(run(ours) - run(reference)).max()
    times = interleaved({"ours": lambda: run(ours), "diffusers": lambda: run(reference)}, repeats, warmup=1)
    med = medians(times)
    ratio = paired_ratio(times, "diffusers", "ours")
    size = kwargs["sample_size"]
    return [
        Row(
            section="sampling",
            what=f"full sampling loop, {size}x{size}x{kwargs['in_channels']} pixel model, batch {batch_size}, "
            f"{steps} steps",
            against="`diffusers.DDPMPipeline` + `UNet2DModel` + `DDPMScheduler`",
            ours=f"{batch_size / med['ours']:.2f} img/s",
            reference=f"{batch_size / med['diffusers']:.2f} img/s",
            ratio=f"{fmt_ratio(ratio)} img/s",
            goal=">= 1.0x img/s",
            met=met(ratio >= 1.0, f"{(1 - ratio) * 100:.0f}% short"),
            note=f"same seed, same images: max abs diff {max_diff:.1e}",
        )
    ]


# ---------------------------------------------------------------------------------------------------- latent vs pixel
def bench_latent_vs_pixel(batch_size: int = 4, steps: tuple[int, int] = (10, 30), repeats: int = 3) -> list[Row]:
    """
    Seconds per image of the bundled latent and pixel pipelines at their own default step counts
    (`pipe.config.default_num_inference_steps`, the steps their quality targets were measured with).

    Each pipeline runs with `steps[0]` and `steps[1]` steps (all four runs interleaved); a line through the two gives
    the fixed cost (noise, VAE decode, postprocessing) and the cost per step, projected to the default step count.
    """
    pipes = {kind: bundled_or_random_pipeline(kind) for kind in ("pixel", "latent")}

    def run(pipe, n: int) -> None:
        pipe(
            batch_size=batch_size, generator=torch.Generator().manual_seed(0), num_inference_steps=n, output_type="np"
        )

    variants = {f"{kind}@{n}": (lambda p=p, n=n: run(p, n)) for kind, (p, _) in pipes.items() for n in steps}
    times = interleaved(variants, repeats, warmup=1)
    med = medians(times)
    per_image, detail = {}, {}
    for kind, (pipe, origin) in pipes.items():
        t1, t2 = med[f"{kind}@{steps[0]}"], med[f"{kind}@{steps[1]}"]
        per_step = max(t2 - t1, 0.0) / (steps[1] - steps[0])
        fixed = max(t1 - steps[0] * per_step, 0.0)
        default_steps = int(pipe.config.default_num_inference_steps)
        per_image[kind] = (fixed + default_steps * per_step) / batch_size
        detail[kind] = (
            f"{kind}: {origin}, {default_steps} steps x {per_step / batch_size * 1e3:.2f} ms + "
            f"{fixed / batch_size * 1e3:.0f} ms fixed per image"
        )
    ratio = per_image["pixel"] / per_image["latent"]
    flops = {kind: _unet_flops_per_image(pipe) for kind, (pipe, _) in pipes.items()}
    detail["flops"] = (
        f"UNet FLOPs per image and step: pixel {flops['pixel'] / 1e9:.3f} G, latent {flops['latent'] / 1e9:.3f} G "
        f"({flops['pixel'] / flops['latent']:.1f}x fewer: the most latent gains per step at equal efficiency)"
    )
    return [
        Row(
            section="sampling",
            what=f"latent vs pixel default pipeline, seconds per image at their default steps (batch {batch_size})",
            against="each other",
            ours=f"latent {per_image['latent']:.2f} s/img",
            reference=f"pixel {per_image['pixel']:.2f} s/img",
            ratio=f"latent {fmt_ratio(ratio)} faster",
            goal="latent >= 5x faster",
            met=met(ratio >= 5.0, f"{ratio:.1f}x of 5x"),
            note="; ".join(detail.values()) + f"; measured at {steps[0]} and {steps[1]} steps, projected",
        )
    ]


def _unet_flops_per_image(pipe) -> int:
    from bench_unet import count_flops

    unet = pipe.unet
    size = unet.config.sample_size
    x = torch.zeros(1, unet.config.in_channels, size, size, dtype=unet.dtype)
    return count_flops(unet, x, torch.tensor([500]))


# ---------------------------------------------------------------------------------------------------- previews
_PREVIEW_ROW = re.compile(r"^\|\s*(?P<model>[^|]+?)\s*\|\s*(?P<level>pipeline|app)\s*\|\s*(?P<none>[\d.]+)\s*\|"
                          r"\s*(?P<every>[\d.]+)\s*\|\s*(?P<overhead>[-+\d.]+)%\s*\|")  # fmt: skip


def bench_previews_overhead(batch_size: int = 4, steps: int = 20, repeats: int = 3) -> list[Row]:
    """
    Previews every step (`iter_previews(preview_every=1)`: x_t and x0_hat as images after every step) against the
    same run without previews, for the bundled pixel and latent pipelines. Runs `benchmarks/bench_previews.py` (the
    app engineer's benchmark: pipeline level and app level, no server) when it is there, else measures the pipeline
    level here.
    """
    rows: list[Row] = []
    try:
        import bench_previews

        argv = ["bench_previews.py", "--steps", str(steps), "--batch-size", str(batch_size),
                "--repeats", str(repeats), "--no-server"]  # fmt: skip
        with _patched_argv(argv), contextlib.redirect_stdout(io.StringIO()) as out:
            bench_previews.main()
        for line in out.getvalue().splitlines():
            match = _PREVIEW_ROW.match(line.strip())
            if match:
                rows.append(_preview_row(match["model"], match["level"], float(match["none"]),
                                         float(match["every"]), batch_size, steps, "bench_previews.py"))  # fmt: skip
    except Exception as error:  # noqa: BLE001 - not there yet, or broken: measure here
        print(f"(bench_previews.py unusable: {type(error).__name__}: {str(error)[:150]}; measuring here)")
    if rows:
        return rows
    for kind in ("pixel", "latent"):
        pipe, origin = bundled_or_random_pipeline(kind)
        variants = {
            "none": _preview_run(pipe, 0, batch_size, steps),
            "every": _preview_run(pipe, 1, batch_size, steps),
        }
        med = medians(interleaved(variants, repeats, warmup=1))
        rows.append(_preview_row(origin, "pipeline", med["none"], med["every"], batch_size, steps, "measured here"))
    return rows


@contextlib.contextmanager
def _patched_argv(argv: list[str]):
    saved = sys.argv
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = saved


def _preview_run(pipe, preview_every: int, batch_size: int, steps: int):
    def run() -> None:
        generator = torch.Generator().manual_seed(0)
        for _ in pipe.iter_previews(batch_size=batch_size, generator=generator, num_inference_steps=steps,
                                    preview_every=preview_every, output_type="np"):  # fmt: skip
            pass

    return run


def _preview_row(model: str, level: str, none: float, every: float, batch_size: int, steps: int, source: str) -> Row:
    overhead = every / none - 1
    what = (
        "`iter_previews(preview_every=1)`" if level == "pipeline" else "app `/sample` generator, previews every step"
    )
    return Row(
        section="previews",
        what=f"{what}, {model}, batch {batch_size}, {steps} steps",
        against="same run without previews",
        ours=f"{every:.2f} s",
        reference=f"{none:.2f} s",
        ratio=f"{overhead * 100:+.1f}% time",
        goal="<= 10% overhead",
        met=met(overhead <= 0.10, f"{overhead * 100:.0f}% > 10%"),
        note=source,
    )


# ---------------------------------------------------------------------------------------------------- bits/dim
def bench_bits_per_dim(
    batch_size: int = 4, num_timesteps: int | None = 100, repeats: int = 3, kwargs_override: dict | None = None
) -> list[Row]:
    """
    `ddpm_plugin.likelihood.bits_per_dim` over a chain of n timesteps (all T = 1000 with `num_timesteps=None`)
    against the n plain UNet forwards it cannot avoid (same batch, same timesteps), interleaved. Goal: <= 10% more.
    """
    try:
        from ddpm_plugin.likelihood import bits_per_dim
    except ImportError as error:
        return [_na_row("bpd", f"`bits_per_dim` not importable: {error}")]
    from ddpm_plugin import DDPMUNet2DModel, GaussianDDPMScheduler

    kwargs = kwargs_override or pixel_unet_kwargs()
    torch.manual_seed(0)
    unet = DDPMUNet2DModel(**kwargs).eval()
    scheduler = GaussianDDPMScheduler(num_train_timesteps=1000)
    size, channels = kwargs["sample_size"], kwargs["in_channels"]
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch_size, channels, size, size), generator=gen).float() / 127.5 - 1.0
    n = num_timesteps or scheduler.config.num_train_timesteps
    chain = GaussianDDPMScheduler(num_train_timesteps=1000)
    if num_timesteps is None:
        chain.set_timesteps(timesteps=list(range(999, -1, -1)))
    else:
        chain.set_timesteps(num_timesteps)
    timesteps = [torch.full((batch_size,), int(t), dtype=torch.long) for t in chain.timesteps]
    x_t = torch.randn(images.shape, generator=gen)

    def plain(timesteps=timesteps) -> None:
        with torch.no_grad():
            for t in timesteps:
                unet(x_t, t)

    def bpd(num_timesteps=num_timesteps) -> None:
        bits_per_dim(unet, scheduler, images, generator=torch.Generator().manual_seed(1), num_timesteps=num_timesteps)

    bpd(2), plain(timesteps[:2])  # warm-up on a 2-step chain: the timed runs are long enough to need no more
    times = interleaved({"bpd": bpd, "plain": plain}, repeats, warmup=0)
    med = medians(times)
    overhead = paired_ratio(times, "bpd", "plain") - 1
    chain_text = "all T = 1000 timesteps" if num_timesteps is None else f"a {n}-step respaced chain"
    return [
        Row(
            section="bpd",
            what=f"`bits_per_dim` over {chain_text}, {size}x{size}x{channels} pixel model, batch {batch_size}",
            against=f"{n} plain UNet forwards",
            ours=f"{med['bpd']:.2f} s",
            reference=f"{med['plain']:.2f} s",
            ratio=f"{overhead * 100:+.1f}% time",
            goal="<= 10% overhead",
            met=met(overhead <= 0.10, f"{overhead * 100:.0f}% > 10%"),
            note="the per-step overhead is the same on the full chain" if num_timesteps else "",
        )
    ]


def _na_row(section: str, why: str) -> Row:
    return Row(section=section, what=section, against="-", ours="-", reference="-", ratio="-", goal="-", met="n/a",
               note=why)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    rows = bench_sampling_loop(args.batch_size, args.steps, args.repeats)
    rows += bench_latent_vs_pixel(args.batch_size, (args.steps // 2, args.steps * 3 // 2), max(3, args.repeats // 2))
    rows += bench_previews_overhead(args.batch_size, args.steps, max(3, args.repeats // 2))
    rows += bench_bits_per_dim(args.batch_size, 100, max(3, args.repeats // 2))
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()

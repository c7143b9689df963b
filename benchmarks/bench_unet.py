# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""The UNet forward: `DDPMUNet2DModel` against `diffusers.UNet2DModel` (same architecture, same weights), the
memory-format / precision options on this CPU, FLOPs against the measured matmul peak, and `torch.compile`.

The two models are one `diffusers.UNet2DModel` in the DDPM layout with random weights and the `DDPMUNet2DModel`
converted from it with `DDPMUNet2DModel.from_diffusers_unet`; both get the same input, interleaved.

    python benchmarks/bench_unet.py [--repeats 21] [--batch-size 16 --batch-size 1] [--compile]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (  # noqa: E402
    Row,
    count_parameters,
    fmt_ratio,
    interleaved,
    latent_unet_kwargs,
    medians,
    met,
    paired_ratio,
    pixel_unet_kwargs,
    unet_pair,
)

MODELS = {"pixel": pixel_unet_kwargs, "latent": latent_unet_kwargs}


def model_kwargs(name: str) -> dict:
    """UNet arguments of the bundled model `name` ("pixel" / "latent"), or a literal kwargs dict passed through."""
    return MODELS[name]()


def _autocast(mode: str):
    if mode == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _inputs(kwargs: dict, batch_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    size = kwargs["sample_size"]
    x = torch.randn(batch_size, kwargs["in_channels"], size, size, generator=gen)
    t = torch.randint(0, 1000, (batch_size,), generator=gen)
    return x, t


def forward_fn(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, mode: str = "fp32"):
    """A no-argument callable running one forward of `model` without gradients, under `mode` ("fp32" / "bf16")."""

    def run() -> None:
        with torch.no_grad(), _autocast(mode):
            model(x, t)

    return run


def describe(name: str, kwargs: dict) -> str:
    size, c = kwargs["sample_size"], kwargs["in_channels"]
    return f"{name} UNet ({size}x{size}x{c}, {kwargs['model_channels']} ch x {tuple(kwargs['channel_mult'])})"


# ---------------------------------------------------------------------------------------------------- vs diffusers
def bench_unet_forward(
    models: tuple[str, ...] = ("pixel", "latent"),
    batch_sizes: tuple[int, ...] = (16, 1),
    modes: tuple[str, ...] = ("fp32", "bf16"),
    repeats: int = 21,
    kwargs_override: dict | None = None,
) -> list[Row]:
    """
    Images/s of our UNet forward against diffusers' `UNet2DModel`, same weights and input, interleaved; one row per
    model, batch size and mode ("fp32", or "bf16" = `torch.autocast("cpu", torch.bfloat16)` around both).
    The ratio is ours / diffusers in images/s (higher is better), goal >= 1.0.
    """
    rows = []
    for name in models:
        kwargs = kwargs_override or model_kwargs(name)
        reference, ours = unet_pair(kwargs)
        for batch_size in batch_sizes:
            x, t = _inputs(kwargs, batch_size)
            with torch.no_grad():
                max_diff = (reference(x, t).sample - ours(x, t).sample).abs().max().item()
            for mode in modes:
                variants = {"ours": forward_fn(ours, x, t, mode), "diffusers": forward_fn(reference, x, t, mode)}
                times = interleaved(variants, repeats, warmup=2)
                med = medians(times)
                ratio = paired_ratio(times, "diffusers", "ours")  # = images/s ours / diffusers
                rows.append(
                    Row(
                        section="unet",
                        what=f"UNet forward, {describe(name, kwargs)}, batch {batch_size}, {mode}",
                        against="`diffusers.UNet2DModel`, same weights",
                        ours=f"{batch_size / med['ours']:.1f} img/s",
                        reference=f"{batch_size / med['diffusers']:.1f} img/s",
                        ratio=f"{fmt_ratio(ratio)} img/s",
                        goal=">= 1.0x img/s",
                        met=met(ratio >= 1.0, f"{(1 - ratio) * 100:.0f}% short"),
                        note=f"{count_parameters(ours) / 1e6:.2f}M params; outputs max abs diff {max_diff:.1e} (fp32)",
                    )
                )
    return rows


# ---------------------------------------------------------------------------------------------------- options
def bench_unet_options(
    models: tuple[str, ...] = ("pixel", "latent"), batch_size: int = 16, repeats: int = 15
) -> list[Row]:
    """
    What helps our UNet forward on this CPU: channels-last, bf16 autocast (with and without channels-last) and bf16
    weights, each against our plain fp32 forward (contiguous), interleaved. Ratio in images/s (higher is better).
    """
    rows = []
    for name in models:
        kwargs = model_kwargs(name)
        _, ours = unet_pair(kwargs)
        ours_cl = copy.deepcopy(ours).to(memory_format=torch.channels_last)
        ours_bf16 = copy.deepcopy(ours).to(torch.bfloat16)
        x, t = _inputs(kwargs, batch_size)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        x_bf16 = x.bfloat16()

        variants = {
            "fp32": forward_fn(ours, x, t),
            "fp32, channels-last": forward_fn(ours_cl, x_cl, t),
            "bf16 autocast": forward_fn(ours, x, t, "bf16"),
            "bf16 autocast, channels-last": forward_fn(ours_cl, x_cl, t, "bf16"),
            "bf16 weights (`unet.to(torch.bfloat16)`)": forward_fn(ours_bf16, x_bf16, t),
        }
        with torch.no_grad():
            base_out = ours(x, t).sample
            cl_diff = (ours_cl(x_cl, t).sample - base_out).abs().max().item()
        times = interleaved(variants, repeats, warmup=2)
        med = medians(times)
        for variant in list(variants)[1:]:
            ratio = paired_ratio(times, "fp32", variant)
            rows.append(
                Row(
                    section="options",
                    what=f"UNet forward, {name}, batch {batch_size}: {variant}",
                    against="ours, fp32, contiguous",
                    ours=f"{batch_size / med[variant]:.1f} img/s",
                    reference=f"{batch_size / med['fp32']:.1f} img/s",
                    ratio=f"{fmt_ratio(ratio)} img/s",
                    goal="(measure)",
                    met="helps" if ratio > 1.03 else "hurts" if ratio < 0.97 else "neutral",
                    note=f"max abs diff vs contiguous {cl_diff:.1e}" if variant == "fp32, channels-last" else "",
                )
            )
    return rows


# ---------------------------------------------------------------------------------------------------- FLOPs
def count_flops(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> int:
    """FLOPs of one forward (`torch.utils.flop_counter.FlopCounterMode`: convolutions, matmuls, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, t)
    return counter.get_total_flops()


def bench_flops(
    models: tuple[str, ...] = ("pixel", "latent"),
    batch_size: int = 16,
    repeats: int = 9,
    matmul_size: int = 2048,
) -> list[Row]:
    """
    Achieved FLOP/s of our UNet forward (FLOPs from `FlopCounterMode`) as a fraction of the measured peak: a large
    square matmul of the same dtype, timed interleaved with the forward so that both see the same machine load.
    """
    rows = []
    for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        gen = torch.Generator().manual_seed(0)
        a = torch.randn(matmul_size, matmul_size, generator=gen).to(dtype)
        b = torch.randn(matmul_size, matmul_size, generator=gen).to(dtype)
        matmul_flops = 2 * matmul_size**3
        for name in models:
            kwargs = model_kwargs(name)
            _, ours = unet_pair(kwargs)
            x, t = _inputs(kwargs, batch_size)
            flops = count_flops(ours, x, t)
            mode = "bf16" if dtype is torch.bfloat16 else "fp32"
            variants = {"matmul": lambda a=a, b=b: torch.mm(a, b), "unet": forward_fn(ours, x, t, mode)}
            times = interleaved(variants, repeats, warmup=2)
            med = medians(times)
            peak = matmul_flops / med["matmul"]
            fraction = paired_ratio(times, "matmul", "unet") * flops / matmul_flops
            rows.append(
                Row(
                    section="hardware",
                    what=f"UNet forward FLOP/s, {name}, batch {batch_size}, {mode}",
                    against=f"peak: {matmul_size}^3 {dtype_name} matmul",
                    ours=f"{flops / med['unet'] / 1e9:.1f} GFLOP/s ({flops / batch_size / 1e9:.3f} GFLOP/img)",
                    reference=f"{peak / 1e9:.1f} GFLOP/s",
                    ratio=f"{fraction * 100:.0f}% of peak",
                    goal="(report)",
                    met="n/a",
                )
            )
    return rows


# ---------------------------------------------------------------------------------------------------- compile
def bench_compile(model: str = "latent", batch_size: int = 1, repeats: int = 15) -> list[Row]:
    """
    `torch.compile(unet)` (inductor, default mode) on a small model: the first call's compile time with an empty
    inductor cache (a fresh cache folder, FX graph cache off), and the compiled forward against eager, interleaved.
    """
    import torch._dynamo
    import torch._inductor.config as inductor_config

    what = f"`torch.compile(unet)`, {model} UNet, batch {batch_size}, fp32"
    kwargs = model_kwargs(model)
    _, ours = unet_pair(kwargs)
    x, t = _inputs(kwargs, batch_size)
    saved = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    try:
        with (
            tempfile.TemporaryDirectory(prefix="inductor_cache_") as cache,
            inductor_config.patch(fx_graph_cache=False),
        ):
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
            torch._dynamo.reset()
            compiled = torch.compile(ours)
            start = time.perf_counter()
            with torch.no_grad():
                out = compiled(x, t).sample
            compile_s = time.perf_counter() - start
            with torch.no_grad():
                max_diff = (out - ours(x, t).sample).abs().max().item()

            variants = {"eager": forward_fn(ours, x, t), "compiled": forward_fn(compiled, x, t)}
            times = interleaved(variants, repeats, warmup=2)
    except Exception as error:  # noqa: BLE001 - report, do not abort the suite
        return [_failed_compile_row(what, f"compile failed on this CPU: {type(error).__name__}: {str(error)[:200]}")]
    finally:
        if saved is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = saved
        torch._dynamo.reset()
    med = medians(times)
    ratio = paired_ratio(times, "eager", "compiled")
    return [
        Row(
            section="options",
            what=what,
            against="ours, eager",
            ours=f"{batch_size / med['compiled']:.1f} img/s",
            reference=f"{batch_size / med['eager']:.1f} img/s",
            ratio=f"{fmt_ratio(ratio)} img/s",
            goal="(measure, with compile time)",
            met="helps" if ratio > 1.03 else "hurts" if ratio < 0.97 else "neutral",
            note=f"first call (compile) {compile_s:.0f} s with an empty cache; max abs diff {max_diff:.1e}",
        )
    ]


def start_compile_subprocess(model: str = "latent", batch_size: int = 1, repeats: int = 15):
    """
    Starts `bench_compile` in a fresh interpreter (so that it can run beside measurements that do not time anything,
    such as the memory subprocesses); returns a function that waits for it and returns its rows.
    """
    cmd = [sys.executable, os.path.abspath(__file__), "--compile-child", f"{model},{batch_size},{repeats}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    what = f"`torch.compile(unet)`, {model} UNet, batch {batch_size}, fp32"

    def finish(timeout: float = 1800) -> list[Row]:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return [_failed_compile_row(what, f"did not finish within {timeout:.0f} s")]
        lines = [line for line in out.splitlines() if line.startswith("ROWS ")]
        if proc.returncode != 0 or not lines:
            return [_failed_compile_row(what, f"subprocess failed: {(err.strip().splitlines() or ['?'])[-1][:200]}")]
        return [Row(**row) for row in json.loads(lines[-1][len("ROWS ") :])]

    return finish


def _failed_compile_row(what: str, why: str) -> Row:
    return Row(
        section="options", what=what, against="ours, eager", ours="-", reference="-", ratio="-", goal="(measure)",
        met="n/a", note=why,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--batch-size", type=int, action="append")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (minutes)")
    parser.add_argument("--compile-child", help=argparse.SUPPRESS)  # "model,batch_size,repeats"
    args = parser.parse_args(argv)
    if args.compile_child:
        model, batch_size, repeats = args.compile_child.split(",")
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
        rows = bench_compile(model, int(batch_size), int(repeats))
        print("ROWS " + json.dumps([dataclasses.asdict(row) for row in rows]))
        return
    batch_sizes = tuple(args.batch_size or (16, 1))
    rows = bench_unet_forward(batch_sizes=batch_sizes, repeats=args.repeats)
    rows += bench_unet_options(batch_size=batch_sizes[0], repeats=max(3, args.repeats // 2))
    rows += bench_flops(batch_size=batch_sizes[0])
    if args.compile:
        rows += bench_compile()
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()

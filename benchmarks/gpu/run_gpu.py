# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""The benchmark table on a CUDA GPU: ours against diffusers with fp16 / bf16 autocast, `torch.compile`, batch sizes
that fill the card, and peak memory from `torch.cuda.max_memory_allocated`.

    python benchmarks/gpu/run_gpu.py                      # on a machine with a CUDA GPU (about 10 minutes)
    python benchmarks/gpu/run_gpu.py --dry-run            # CPU, tiny sizes, 1 repeat: proves the script runs
    bash benchmarks/gpu/run_gpu.sh                        # the same, with the repository's venv when present

Same method as the CPU suite (`benchmarks/run_all.py`): side by side in one process, warm-up, interleaved repeats,
medians; every timed call ends with `torch.cuda.synchronize()`. Writes a markdown table to `--output`
(default `benchmarks/gpu/RESULTS_GPU.md`) and prints it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys
import time
from collections.abc import Callable

import torch

GPU_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(GPU_DIR))  # benchmarks/
sys.path.insert(0, os.path.dirname(os.path.dirname(GPU_DIR)))  # the repository

from common import (  # noqa: E402
    DDPM_256,
    TINY_UNET_KWARGS,
    Row,
    count_parameters,
    fmt_ratio,
    interleaved,
    latent_unet_kwargs,
    machine_info,
    medians,
    met,
    paired_ratio,
    pixel_unet_kwargs,
    unet_pair,
)


class Bench:
    """Settings of one run: device, sizes, repeats; timing with device synchronisation."""

    def __init__(self, device: torch.device, dry_run: bool, repeats: int, max_batch: int):
        self.device = device
        self.dry_run = dry_run
        self.repeats = 1 if dry_run else repeats
        self.max_batch = 2 if dry_run else max_batch

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def synced(self, fn: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            fn()
            self.sync()

        return run

    def interleaved(self, variants: dict[str, Callable[[], object]], repeats: int | None = None, warmup: int = 2):
        self.sync()
        return interleaved({k: self.synced(v) for k, v in variants.items()}, repeats or self.repeats, warmup=warmup)

    def models(self) -> dict[str, dict]:
        if self.dry_run:
            return {"tiny": dict(TINY_UNET_KWARGS)}
        return {"pixel": pixel_unet_kwargs(), "latent": latent_unet_kwargs(), "ddpm256": dict(DDPM_256)}

    def autocast(self, mode: str):
        if mode == "fp32":
            return contextlib.nullcontext()
        dtype = torch.float16 if mode == "fp16" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype)

    def modes(self) -> tuple[str, ...]:
        if self.device.type == "cuda":
            return ("fp32", "fp16", "bf16") if torch.cuda.is_bf16_supported() else ("fp32", "fp16")
        return ("fp32", "bf16")

    def peak_memory_reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_memory_mb(self) -> float | None:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return None


def _is_oom(error: Exception) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def fill_batch(bench: Bench, model: torch.nn.Module, kwargs: dict, mode: str, cap: int) -> int:
    """The largest power-of-two batch (<= cap) whose forward fits in 60% of the device memory (all of it on CPU)."""
    size, channels = kwargs["sample_size"], kwargs["in_channels"]
    total = torch.cuda.get_device_properties(bench.device).total_memory if bench.device.type == "cuda" else None
    best, batch = 1, 1
    while batch <= min(cap, bench.max_batch):
        try:
            bench.peak_memory_reset()
            x = torch.randn(batch, channels, size, size, device=bench.device)
            with torch.no_grad(), bench.autocast(mode):
                model(x, torch.full((batch,), 10, device=bench.device))
            bench.sync()
        except Exception as error:  # noqa: BLE001 - OOM ends the search
            if not _is_oom(error):
                raise
            break
        if total is not None and torch.cuda.max_memory_allocated(bench.device) > 0.6 * total:
            break
        best, batch = batch, batch * 2
    bench.peak_memory_reset()
    return best


# ---------------------------------------------------------------------------------------------------- sections
def scheduler_rows(bench: Bench) -> list[Row]:
    from diffusers import DDPMScheduler

    from ddpm_plugin import GaussianDDPMScheduler

    ours, reference = GaussianDDPMScheduler(num_train_timesteps=1000), DDPMScheduler(num_train_timesteps=1000)
    for s in (ours, reference):
        s.set_timesteps(1000, device=bench.device)
    shapes = ((2, 1, 8, 8),) if bench.dry_run else ((64, 1, 32, 32), (4, 3, 256, 256))
    rows = []
    for shape in shapes:
        sample = torch.randn(shape, device=bench.device)
        model_output = torch.randn(shape, device=bench.device)

        def run(scheduler, sample=sample, model_output=model_output) -> None:
            generator = torch.Generator(bench.device).manual_seed(0)
            for t in (999, 500, 1, 0):
                scheduler.step(model_output, t, sample, generator=generator)

        times = bench.interleaved({"ours": lambda: run(ours), "diffusers": lambda: run(reference)}, bench.repeats * 3)
        ratio = paired_ratio(times, "ours", "diffusers")
        med = medians(times)
        rows.append(
            Row("scheduler", f"`step`, batch {'x'.join(map(str, shape))}", "`DDPMScheduler.step`",
                f"{med['ours'] / 4 * 1e3:.3f} ms/step", f"{med['diffusers'] / 4 * 1e3:.3f} ms/step",
                f"{fmt_ratio(ratio)} time", "<= 0.7x time", met(ratio <= 0.7, f"{ratio / 0.7:.2f}x over"))
        )  # fmt: skip
    return rows


def unet_rows(bench: Bench, compile_models: bool) -> list[Row]:
    """Forward images/s against `UNet2DModel` per model and precision at a batch that fills the card; compile."""
    rows = []
    caps = {"pixel": 1024, "latent": 4096, "ddpm256": 64, "tiny": 2}
    for name, kwargs in bench.models().items():
        reference, ours = (m.to(bench.device) for m in unet_pair(kwargs))
        size, channels = kwargs["sample_size"], kwargs["in_channels"]
        for mode in bench.modes():
            batch = fill_batch(bench, ours, kwargs, mode, caps.get(name, 256))
            x = torch.randn(batch, channels, size, size, device=bench.device)
            t = torch.randint(0, 1000, (batch,), device=bench.device)

            def fwd(model, mode=mode, x=x, t=t):
                def run() -> None:
                    with torch.no_grad(), bench.autocast(mode):
                        model(x, t)

                return run

            variants = {"ours": fwd(ours), "diffusers": fwd(reference)}
            if mode != "fp32":
                ours_cl = copy.deepcopy(ours).to(memory_format=torch.channels_last)
                x_cl = x.contiguous(memory_format=torch.channels_last)
                variants["ours, channels-last"] = fwd(ours_cl, x=x_cl)
            bench.peak_memory_reset()
            times = bench.interleaved(variants)
            peak = bench.peak_memory_mb()
            med = medians(times)
            ratio = paired_ratio(times, "diffusers", "ours")
            note = f"{count_parameters(ours) / 1e6:.1f}M params" + (f"; peak {peak:.0f} MB" if peak else "")
            if "ours, channels-last" in times:
                note += f"; channels-last {paired_ratio(times, 'ours', 'ours, channels-last'):.2f}x ours"
            rows.append(
                Row("unet", f"UNet forward, {name}, batch {batch}, {mode}", "`UNet2DModel`, same weights",
                    f"{batch / med['ours']:.0f} img/s", f"{batch / med['diffusers']:.0f} img/s",
                    f"{fmt_ratio(ratio)} img/s", ">= 1.0x img/s", met(ratio >= 1.0, f"{(1 - ratio) * 100:.0f}% short"),
                    note)
            )  # fmt: skip
            if compile_models and mode == bench.modes()[-1]:
                rows.append(compile_row(bench, name, ours, x, t, mode))
        del reference, ours
        bench.peak_memory_reset()
    return rows


def compile_row(bench: Bench, name: str, model, x, t, mode: str) -> Row:
    """`torch.compile` of our UNet: first-call (compile) time and the speed against eager."""
    import torch._dynamo

    torch._dynamo.reset()
    what = f"`torch.compile(unet)`, {name}, batch {x.shape[0]}, {mode}"
    try:
        compiled = torch.compile(model)
        start = time.perf_counter()
        with torch.no_grad(), bench.autocast(mode):
            compiled(x, t)
        bench.sync()
        compile_s = time.perf_counter() - start

        def fwd(m):
            def run() -> None:
                with torch.no_grad(), bench.autocast(mode):
                    m(x, t)

            return run

        times = bench.interleaved({"eager": fwd(model), "compiled": fwd(compiled)})
    except Exception as error:  # noqa: BLE001 - report, keep going
        return Row("options", what, "eager", "-", "-", "-", "(measure)", "n/a", f"failed: {str(error)[:200]}")
    finally:
        torch._dynamo.reset()
    ratio = paired_ratio(times, "eager", "compiled")
    med = medians(times)
    return Row("options", what, "ours, eager", f"{x.shape[0] / med['compiled']:.0f} img/s",
               f"{x.shape[0] / med['eager']:.0f} img/s", f"{fmt_ratio(ratio)} img/s", "(measure)",
               "helps" if ratio > 1.03 else "hurts" if ratio < 0.97 else "neutral",
               f"compile (first call) {compile_s:.0f} s")  # fmt: skip


def hardware_rows(bench: Bench) -> list[Row]:
    """UNet FLOP/s (FlopCounterMode) as a fraction of a large matmul's FLOP/s, per precision."""
    from torch.utils.flop_counter import FlopCounterMode

    n = 256 if bench.dry_run else 8192
    rows = []
    name, kwargs = next(iter(bench.models().items())) if bench.dry_run else ("pixel", pixel_unet_kwargs())
    _, ours = unet_pair(kwargs)
    ours = ours.to(bench.device)
    batch = 2 if bench.dry_run else 256
    x = torch.randn(batch, kwargs["in_channels"], kwargs["sample_size"], kwargs["sample_size"], device=bench.device)
    t = torch.randint(0, 1000, (batch,), device=bench.device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        ours(x, t)
    flops = counter.get_total_flops()
    for mode in bench.modes():
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[mode]
        a = torch.randn(n, n, device=bench.device, dtype=dtype)
        b = torch.randn(n, n, device=bench.device, dtype=dtype)

        def forward(mode=mode) -> None:
            with torch.no_grad(), bench.autocast(mode):
                ours(x, t)

        times = bench.interleaved({"matmul": lambda a=a, b=b: a @ b, "unet": forward})
        med = medians(times)
        fraction = paired_ratio(times, "matmul", "unet") * flops / (2 * n**3)
        rows.append(
            Row("hardware", f"UNet forward FLOP/s, {name}, batch {batch}, {mode}", f"{n}^3 {mode} matmul",
                f"{flops / med['unet'] / 1e12:.2f} TFLOP/s", f"{2 * n**3 / med['matmul'] / 1e12:.2f} TFLOP/s",
                f"{fraction * 100:.0f}% of peak", "(report)", "n/a")
        )  # fmt: skip
    return rows


def sampling_rows(bench: Bench) -> list[Row]:
    """The full sampling loop against `DDPMPipeline`, and latent vs pixel per image."""
    from diffusers import DDPMPipeline, DDPMScheduler

    from ddpm_plugin import GaussianDDPMScheduler, PixelDDPMPipeline

    kwargs = dict(TINY_UNET_KWARGS) if bench.dry_run else pixel_unet_kwargs()
    reference_unet, our_unet = unet_pair(kwargs)
    ours = PixelDDPMPipeline(unet=our_unet, scheduler=GaussianDDPMScheduler(num_train_timesteps=1000))
    reference = DDPMPipeline(unet=reference_unet, scheduler=DDPMScheduler(num_train_timesteps=1000))
    batch, steps = (2, 2) if bench.dry_run else (256, 50)
    rows = []
    for mode in ("fp32", bench.modes()[-1]):
        for pipe in (ours, reference):
            pipe.to(bench.device)
            pipe.set_progress_bar_config(disable=True)

        def run(pipe, mode=mode) -> None:
            with bench.autocast(mode):
                pipe(batch_size=batch, generator=torch.Generator(bench.device).manual_seed(0),
                     num_inference_steps=steps, output_type="np")  # fmt: skip

        times = bench.interleaved({"ours": lambda: run(ours), "diffusers": lambda: run(reference)}, warmup=1)
        med = medians(times)
        ratio = paired_ratio(times, "diffusers", "ours")
        rows.append(
            Row("sampling", f"sampling loop, pixel model, batch {batch}, {steps} steps, {mode}", "`DDPMPipeline`",
                f"{batch / med['ours']:.1f} img/s", f"{batch / med['diffusers']:.1f} img/s",
                f"{fmt_ratio(ratio)} img/s", ">= 1.0x img/s", met(ratio >= 1.0, f"{(1 - ratio) * 100:.0f}% short"))
        )  # fmt: skip
    if not bench.dry_run:
        rows += latent_vs_pixel_rows(bench)
    return rows


def latent_vs_pixel_rows(bench: Bench) -> list[Row]:
    from common import bundled_or_random_pipeline

    pipes = {kind: bundled_or_random_pipeline(kind)[0].to(bench.device) for kind in ("pixel", "latent")}
    batch, (k1, k2) = 64, (20, 60)

    def run(pipe, n):
        return lambda: pipe(batch_size=batch, generator=torch.Generator(bench.device).manual_seed(0),
                            num_inference_steps=n, output_type="np")  # fmt: skip

    times = bench.interleaved({f"{k}@{n}": run(p, n) for k, p in pipes.items() for n in (k1, k2)}, warmup=1)
    med = medians(times)
    per_image = {}
    for kind, pipe in pipes.items():
        per_step = max(med[f"{kind}@{k2}"] - med[f"{kind}@{k1}"], 0.0) / (k2 - k1)
        fixed = max(med[f"{kind}@{k1}"] - k1 * per_step, 0.0)
        per_image[kind] = (fixed + pipe.config.default_num_inference_steps * per_step) / batch
    ratio = per_image["pixel"] / per_image["latent"]
    return [
        Row("sampling", f"latent vs pixel default pipeline, s/img at default steps, batch {batch}", "each other",
            f"latent {per_image['latent'] * 1e3:.1f} ms/img", f"pixel {per_image['pixel'] * 1e3:.1f} ms/img",
            f"latent {fmt_ratio(ratio)} faster", "latent >= 5x faster", met(ratio >= 5, f"{ratio:.1f}x of 5x"))
    ]  # fmt: skip


def training_rows(bench: Bench) -> list[Row]:
    """Training step (L_simple, AdamW, clipping) images/s against the same loop with `UNet2DModel` +
    `DDPMScheduler`, per precision, with peak CUDA memory."""
    import torch.nn.functional as F
    from diffusers import DDPMScheduler

    from ddpm_plugin import GaussianDDPMScheduler
    from ddpm_plugin.losses import simple_loss

    kwargs = dict(TINY_UNET_KWARGS) if bench.dry_run else pixel_unet_kwargs()
    batch = 2 if bench.dry_run else 512
    size, channels = kwargs["sample_size"], kwargs["in_channels"]
    rows = []
    for mode in ("fp32", bench.modes()[-1]):
        reference, ours = (m.to(bench.device).train() for m in unet_pair(kwargs))
        our_s, ref_s = GaussianDDPMScheduler(num_train_timesteps=1000), DDPMScheduler(num_train_timesteps=1000)

        def make(model, scheduler, loss_fn, mode=mode):
            optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4)
            generator = torch.Generator(bench.device).manual_seed(0)
            scaler = torch.amp.GradScaler(bench.device.type, enabled=mode == "fp16")

            def step() -> None:
                x0 = torch.rand(batch, channels, size, size, device=bench.device, generator=generator) * 2 - 1
                noise = torch.randn(x0.shape, device=bench.device, generator=generator)
                t = torch.randint(0, 1000, (batch,), device=bench.device, generator=generator)
                with bench.autocast(mode):
                    out = model(scheduler.add_noise(x0, noise, t), t).sample
                    loss = loss_fn(out, x0, noise, t)
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)

            return step

        our_step = make(ours, our_s, lambda o, x0, e, t, s=our_s: simple_loss(o.float(), x0, e, t, s))
        ref_step = make(reference, ref_s, lambda o, x0, e, t: F.mse_loss(o.float(), e.float()))
        bench.peak_memory_reset()
        times = bench.interleaved({"ours": our_step, "diffusers": ref_step})
        peak = bench.peak_memory_mb()
        med = medians(times)
        ratio = paired_ratio(times, "diffusers", "ours")
        rows.append(
            Row("training", f"training step, pixel model, batch {batch}, {mode}", "same loop, `UNet2DModel`",
                f"{batch / med['ours']:.0f} img/s", f"{batch / med['diffusers']:.0f} img/s",
                f"{fmt_ratio(ratio)} img/s",
                ">= 1.0x img/s", met(ratio >= 1.0, f"{(1 - ratio) * 100:.0f}% short"),
                f"peak {peak:.0f} MB (both models)" if peak else "")
        )  # fmt: skip
    return rows


def memory_rows(bench: Bench) -> list[Row]:
    """`torch.cuda.max_memory_allocated` of sampling (batch 1 and 16, 3 steps) and of a training step (AdamW)."""
    from ddpm_plugin import DDPMUNet2DModel, GaussianDDPMScheduler, PixelDDPMPipeline
    from ddpm_plugin.losses import simple_loss

    def mb(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f} MB"

    def allocated() -> float | None:
        return torch.cuda.memory_allocated(bench.device) / 2**20 if bench.device.type == "cuda" else None

    rows = []
    for name, kwargs in bench.models().items():
        for batch in (1,) if bench.dry_run else (1, 16):
            torch.manual_seed(0)
            unet = DDPMUNet2DModel(**kwargs).to(bench.device).eval()
            pipe = PixelDDPMPipeline(unet=unet, scheduler=GaussianDDPMScheduler(num_train_timesteps=1000))
            pipe.set_progress_bar_config(disable=True)
            bench.peak_memory_reset()
            base = allocated()
            pipe(batch_size=batch, num_inference_steps=3, output_type="np")
            sample_peak = bench.peak_memory_mb()
            scheduler = GaussianDDPMScheduler(num_train_timesteps=1000)
            optimizer = torch.optim.AdamW(unet.parameters(), lr=2e-4)
            unet.train()
            size, channels = kwargs["sample_size"], kwargs["in_channels"]
            bench.peak_memory_reset()
            train_peak: float | str | None
            try:
                for _ in range(2):
                    x0 = torch.rand(batch, channels, size, size, device=bench.device) * 2 - 1
                    noise, t = torch.randn_like(x0), torch.randint(0, 1000, (batch,), device=bench.device)
                    out = unet(scheduler.add_noise(x0, noise, t), t).sample
                    simple_loss(out, x0, noise, t, scheduler).backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                train_peak = mb(bench.peak_memory_mb())
            except Exception as error:  # noqa: BLE001 - an out-of-memory is a result here
                if not _is_oom(error):
                    raise
                train_peak = "out of memory"
                out = None
            rows.append(
                Row("memory", f"{name}, batch {batch}", "weights", f"sampling peak {mb(sample_peak)}", mb(base),
                    f"training step peak {train_peak}", "(report)", "n/a",
                    "fp32, AdamW" if bench.device.type == "cuda" else "no CUDA device: no numbers")
            )  # fmt: skip
            del unet, pipe, optimizer
            bench.peak_memory_reset()
    return rows


# ---------------------------------------------------------------------------------------------------- main
def render(rows: list[Row], header: str) -> str:
    lines = [header, "", "| section | what | against | ours | reference | ratio | goal | met? | notes |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        cells = (r.section, r.what, r.against, r.ours, r.reference, r.ratio, r.goal, r.met, r.note)
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, 1 repeat (no GPU needed)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--max-batch", type=int, default=4096)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--only", help="comma-separated: scheduler,unet,hardware,sampling,training,memory")
    parser.add_argument("--output", default=os.path.join(GPU_DIR, "RESULTS_GPU.md"))
    args = parser.parse_args(argv)

    if args.dry_run:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32; TF32 is a separate choice
    else:
        parser.error("no CUDA GPU found; use --dry-run to check the script on a CPU")
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    bench = Bench(device, args.dry_run, args.repeats, args.max_batch)
    sections = {
        "scheduler": lambda: scheduler_rows(bench),
        "unet": lambda: unet_rows(bench, compile_models=not args.no_compile and not args.dry_run),
        "hardware": lambda: hardware_rows(bench),
        "sampling": lambda: sampling_rows(bench),
        "training": lambda: training_rows(bench),
        "memory": lambda: memory_rows(bench),
    }
    only = set(args.only.split(",")) if args.only else set(sections)
    rows: list[Row] = []
    start = time.perf_counter()
    for name, run in sections.items():
        if name not in only:
            continue
        t0 = time.perf_counter()
        try:
            rows += run()
        except Exception as error:  # noqa: BLE001 - keep the other sections' results
            if args.dry_run:
                raise
            rows.append(Row(name, name, "-", "-", "-", "-", "-", "n/a", f"{type(error).__name__}: {str(error)[:200]}"))
        print(f"[{name}] {time.perf_counter() - t0:.0f} s", flush=True)
    info = machine_info()
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none (dry run on CPU)"
    header = (
        f"GPU: **{gpu}**; host CPU {info['cpu']} ({info['cores']} cores); torch {info['torch']}, diffusers "
        f"{info['diffusers']}; {info['date']}; {time.perf_counter() - start:.0f} s"
        + (" (dry run: tiny sizes, 1 repeat, numbers meaningless)" if args.dry_run else "")
    )
    text = render(rows, header)
    print(text)
    with open(args.output, "w", encoding="utf-8") as f:
        f.write(text)
    return rows


if __name__ == "__main__":
    main()

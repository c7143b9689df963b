# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""Peak memory (CPU RSS) of sampling and training, each measurement in a fresh subprocess.

A child process builds the models, records its resident set size (RSS, `/proc/self/statm`) once set up, runs the
measurement and reports its peak RSS: `VmHWM` of `/proc/self/status` (the high-water mark of the child's own address
space). Not `resource.getrusage(RUSAGE_SELF).ru_maxrss`: on Linux that also holds the RSS of the process image the
child was forked from (the kernel carries the pre-exec high-water mark over exec), i.e. the parent's RSS at spawn time;
a child of a 1 GB parent that touches 14 MB reports ru_maxrss 967 MB and VmHWM 14 MB. ru_maxrss is the fallback where
/proc is missing. "Working" memory is the peak minus the RSS after setup (imports, weights).

Also checks that sampling memory does not grow with the number of steps: one child samples with 10 and then with 100
steps, and the second run must not raise the peak by more than a few MB.

    python benchmarks/bench_memory.py [--skip-256] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import DDPM_256, Row, met  # noqa: E402

FLAT_TOLERANCE_MB = 5.0


def _rss_mb() -> float:
    with open("/proc/self/statm", encoding="utf-8") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    """Peak RSS of this process's own address space (VmHWM), MiB."""
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ---------------------------------------------------------------------------------------------------- in the child
def _child(spec: dict) -> dict:
    """Runs one measurement described by `spec`; returns RSS after setup and peak RSS, in MiB."""
    import torch
    from common import bundled_or_random_pipeline, latent_unet_kwargs, pixel_unet_kwargs

    torch.set_num_threads(spec.get("threads", 1))
    kind, task = spec["model"], spec["task"]
    batch_size, steps = spec["batch_size"], spec["steps"]
    from ddpm_plugin import DDPMUNet2DModel, GaussianDDPMScheduler, PixelDDPMPipeline

    if task == "sample":
        if kind in ("pixel", "latent"):
            pipe, _ = bundled_or_random_pipeline(kind)
        else:
            torch.manual_seed(0)
            unet = DDPMUNet2DModel(**DDPM_256).eval()
            pipe = PixelDDPMPipeline(unet=unet, scheduler=GaussianDDPMScheduler(num_train_timesteps=1000))
            pipe.set_progress_bar_config(disable=True)
        setup = _rss_mb()
        start = time.perf_counter()
        peaks = []
        for n in steps if isinstance(steps, list) else [steps]:  # a list: the peak after each run, in order
            generator = torch.Generator().manual_seed(0)
            pipe(batch_size=batch_size, generator=generator, num_inference_steps=n, output_type="np")
            peaks.append(_peak_rss_mb())
        return {"setup_mb": setup, "peak_mb": peaks[-1], "peaks_mb": peaks, "seconds": time.perf_counter() - start}
    else:
        from diffusers.training_utils import EMAModel

        from ddpm_plugin.losses import simple_loss

        kwargs = {"pixel": pixel_unet_kwargs, "latent": latent_unet_kwargs}.get(kind, lambda: dict(DDPM_256))()
        torch.manual_seed(0)
        unet = DDPMUNet2DModel(**kwargs, dropout=0.1).train()
        scheduler = GaussianDDPMScheduler(num_train_timesteps=1000)
        optimizer = torch.optim.AdamW(unet.parameters(), lr=2e-4)
        ema = EMAModel(unet.parameters(), decay=0.999)
        # AdamW's two moment buffers exist from the first step on; create them now (a zero-gradient step) so that
        # one timed step shows the steady-state peak
        for p in unet.parameters():
            p.grad = torch.zeros_like(p)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        size, channels = kwargs["sample_size"], kwargs["in_channels"]
        setup = _rss_mb()
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(0)
        for _ in range(steps):  # Ho Algorithm 1 with L_simple, clipping, AdamW and EMA, as the trainer does
            x0 = torch.rand(batch_size, channels, size, size, generator=generator) * 2 - 1
            noise = torch.randn(x0.shape, generator=generator)
            timesteps = torch.randint(0, 1000, (batch_size,), generator=generator)
            output = unet(scheduler.add_noise(x0, noise, timesteps), timesteps).sample
            simple_loss(output, x0, noise, timesteps, scheduler).backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            ema.step(unet.parameters())
    return {"setup_mb": setup, "peak_mb": _peak_rss_mb(), "seconds": time.perf_counter() - start}


# ---------------------------------------------------------------------------------------------------- the parent
def measure(spec: dict, timeout: float = 900) -> dict:
    """Runs `_child(spec)` in a fresh interpreter; returns its result, or `{"error": ...}`."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    env = {**os.environ, "OMP_NUM_THREADS": str(spec.get("threads", 1))}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]}
    return json.loads(lines[-1][len("RESULT ") :])


def _label(spec: dict) -> str:
    layout = "DDPM-256 layout (256x256x3, 128 ch x (1,1,2,2,4,4), attn 16)"
    steps = spec["steps"]
    if spec["task"] == "sample":
        model = {"pixel": "bundled pixel pipeline", "latent": "bundled latent pipeline (UNet + VAE decode)"}
        plural = "s" if steps != 1 else ""
        return f"sampling, {model.get(spec['model'], layout)}, batch {spec['batch_size']}, {steps} step{plural}"
    model = {"pixel": "bundled pixel config", "latent": "bundled latent config (UNet on 7x7x4 latents, no VAE)"}
    return f"training step, {model.get(spec['model'], layout)}, batch {spec['batch_size']} (AdamW + EMA, dropout 0.1)"


def bench_memory(
    sample_models: tuple[str, ...] = ("pixel", "latent"),
    sample_batch: int = 16,
    train_batches: dict[str, int] | None = None,
    flat_steps: tuple[int, int] = (10, 100),
    flat_batch: int = 4,
    include_256: bool = True,
    threads: int = 1,
    parallel: int = 3,
    timeout: float = 900,
) -> list[Row]:
    """
    Peak RSS of sampling and of a training step at the bundled configurations (and the DDPM-256 layout, batch 1),
    plus the flatness check of sampling memory in the number of steps. Subprocesses run `parallel` at a time (memory
    does not depend on speed). Returns rows of the results table.
    """
    train_batches = {"pixel": 64, "latent": 128} if train_batches is None else train_batches
    specs = [{"model": m, "task": "sample", "batch_size": sample_batch, "steps": 10} for m in sample_models]
    specs += [{"model": m, "task": "train", "batch_size": b, "steps": 1} for m, b in train_batches.items()]
    if include_256:
        specs += [
            {"model": "ddpm256", "task": "sample", "batch_size": 1, "steps": 1},
            {"model": "ddpm256", "task": "train", "batch_size": 1, "steps": 1},
        ]
    # one child runs the short chain and then the long one: if memory grew with the steps, the long run would
    # raise the peak (VmHWM) above the one reached after the short run
    flat = {"model": "pixel", "task": "sample", "batch_size": flat_batch, "steps": list(flat_steps)}
    for spec in [*specs, flat]:
        spec["threads"] = threads
    # the longest (DDPM-256) first, so that the pool's workers finish together
    order = sorted([*specs, flat], key=lambda s: s["model"] != "ddpm256")
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        results = dict(zip(map(json.dumps, order), pool.map(lambda s: measure(s, timeout), order), strict=True))

    rows = []
    for spec in specs:
        result = results[json.dumps(spec)]
        if "error" in result:
            rows.append(Row("memory", _label(spec), "-", "-", "-", "-", "(report)", "n/a", result["error"]))
            continue
        rows.append(
            Row(
                section="memory",
                what=_label(spec),
                against="RSS after setup (weights, imports)",
                ours=f"peak {result['peak_mb']:.0f} MB",
                reference=f"{result['setup_mb']:.0f} MB",
                ratio=f"+{result['peak_mb'] - result['setup_mb']:.0f} MB working",
                goal="(report)",
                met="n/a",
                note=f"{result['seconds']:.1f} s",
            )
        )
    result = results[json.dumps(flat)]
    if "error" in result:
        rows.append(Row("memory", "flat in steps", "-", "-", "-", "-", "flat", "n/a", result["error"]))
    else:
        short, long = result["peaks_mb"]
        growth = long - short
        rows.append(
            Row(
                section="memory",
                what=f"sampling memory flat in the number of steps (bundled pixel pipeline, batch {flat_batch})",
                against=f"{flat_steps[0]} steps",
                ours=f"then {flat_steps[1]} steps: peak {long:.0f} MB",
                reference=f"peak {short:.0f} MB",
                ratio=f"{growth:+.1f} MB",
                goal=f"same within {FLAT_TOLERANCE_MB:.0f} MB",
                met=met(abs(growth) <= FLAT_TOLERANCE_MB, f"grows {growth:.0f} MB"),
            )
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--skip-256", action="store_true", help="skip the DDPM-256 layout (minutes on a CPU)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(_child(json.loads(args.child))))
        return
    for row in bench_memory(include_256=not args.skip_256, threads=args.threads):
        print(row)


if __name__ == "__main__":
    main()

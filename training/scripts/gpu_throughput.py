"""GPU throughput of the trainer on the bundled configs: images/s and peak memory, in fp32 / bf16 / fp16.

Runs `training.train` in-process for a few steps per (config, precision) on one CUDA device (checkpoints, samples
and evaluation off) and records the trainer's images/s (after `--warmup-steps`) and `torch.cuda.max_memory_allocated`.
The latent config needs a VAE: a few steps of `mnist_vae.yaml` make one first (its speed is recorded too).

    python training/scripts/gpu_throughput.py [--steps 200] [--batch-size 256] [--out gpu_throughput.json]

Prints a markdown table; writes the rows as JSON to `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from training.config import config_from_dict, load_config_file  # noqa: E402
from training.loop import train  # noqa: E402


def _reset_accelerate() -> None:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def run_one(name: str, precision: str, steps: int, batch_size: int | None, output_dir: str, **extra) -> dict:
    values = load_config_file(REPO / "training" / "configs" / f"{name}.yaml")
    values.update(
        output_dir=output_dir, max_train_steps=steps, mixed_precision=precision, checkpointing_steps=0,
        sample_steps=0, eval_steps=0, final_eval_num_images=0, report_to="none", progress_bar=False,
        logging_steps=steps, card_grid_inference_steps=1, lr_warmup_steps=0, dataloader_num_workers=2, **extra,
    )  # fmt: skip
    if batch_size:
        values["train_batch_size"] = batch_size
    _reset_accelerate()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = train(config_from_dict(values).validate(), argv=["gpu_throughput"])
    wall = time.perf_counter() - start
    return {
        "config": name,
        "precision": precision,
        "batch_size": values["train_batch_size"],
        "steps": steps,
        "images_per_second": round(result.metrics["train/images_per_second"], 1),
        "peak_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1),
        "final_loss": round(float(result.metrics.get("train/loss", float("nan"))), 5),
        "wall_seconds": round(wall, 1),
        "final_dir": str(result.final_dir),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=None, help="default: each config's train_batch_size")
    parser.add_argument("--precisions", nargs="+", default=["no", "bf16", "fp16"])
    parser.add_argument("--configs", nargs="+", default=["mnist_pixel", "mnist_vae", "mnist_latent"])
    parser.add_argument("--out", default="gpu_throughput.json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("gpu_throughput: no CUDA device; this script measures GPU training throughput.")
    device = torch.cuda.get_device_name(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        vae_dir = None
        for name in [c for c in args.configs if c == "mnist_vae"] + [c for c in args.configs if c != "mnist_vae"]:
            for precision in args.precisions:
                extra = {}
                if name == "mnist_latent":
                    if vae_dir is None:
                        vae_dir = run_one("mnist_vae", "no", 20, None, os.path.join(tmp, "vae-for-latent"))[
                            "final_dir"
                        ]
                    extra["vae_path"] = vae_dir
                out = os.path.join(tmp, f"{name}-{precision}")
                try:
                    row = run_one(name, precision, args.steps, args.batch_size, out, **extra)
                except Exception as error:  # noqa: BLE001 - record and go on (e.g. fp16 overflow)
                    row = {"config": name, "precision": precision, "error": f"{type(error).__name__}: {error}"}
                row["device"] = device
                rows.append(row)
                print(json.dumps(row), flush=True)
                if name == "mnist_vae" and precision == "no" and "error" not in row:
                    vae_dir = row["final_dir"]
    print()
    print(f"device: {device}, torch {torch.__version__}")
    print("| config | precision | batch | images/s | peak memory (MiB) | final loss |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        if "error" in row:
            print(f"| {row['config']} | {row['precision']} | - | error: {row['error'][:80]} | - | - |")
        else:
            print(
                f"| {row['config']} | {row['precision']} | {row['batch_size']} | {row['images_per_second']} | "
                f"{row['peak_memory_mib']} | {row['final_loss']} |"
            )
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()

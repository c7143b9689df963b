# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""Training throughput: our training step against the same step written with plain diffusers, side by side.

Both loops train the bundled pixel configuration (`training/configs/mnist_pixel.yaml`) on the built-in MNIST with the
same architecture and the same starting weights (`diffusers.UNet2DModel` in the DDPM layout, and the
`DDPMUNet2DModel` converted from it), AdamW, gradient clipping and an EMA; they differ only where the libraries do:

- ours: `DDPMUNet2DModel` + `GaussianDDPMScheduler.add_noise` + `ddpm_plugin.losses.simple_loss`;
- diffusers: `UNet2DModel` + `DDPMScheduler.add_noise` + `F.mse_loss` (diffusers' `train_unconditional.py` step).

After a warm-up the two run in turn (order swapped every repeat); each repeat times `--steps` optimizer steps and the
median images/s is reported. With `--trainer`, the real trainer (`training.train`: accelerate, DataLoader, EMA,
checkpointing off) also runs `--trainer-steps` steps on its own, so its number carries the machine's load of that
moment. Prints markdown table rows.

    python benchmarks/bench_training.py [--steps 5] [--repeats 3] [--batch-size 64] [--trainer]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import (  # noqa: E402
    count_parameters,
    interleaved,
    load_training_config,
    machine_info,
    medians,
    paired_ratio,
    pixel_unet_kwargs,
    unet_pair,
)


def make_step(model, scheduler, loss_fn, images: torch.Tensor, batch_size: int, seed: int):
    """One optimizer step of `model` on a random MNIST batch: noise, forward, loss, backward, clip, AdamW, EMA."""
    from diffusers.training_utils import EMAModel

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4)
    ema = EMAModel(model.parameters(), decay=0.999)
    generator = torch.Generator().manual_seed(seed)
    num_train = scheduler.config.num_train_timesteps

    def step() -> None:
        index = torch.randint(0, images.shape[0], (batch_size,), generator=generator)
        x0 = images[index]  # (B, 1, 28, 28)
        noise = torch.randn(x0.shape, generator=generator)
        timesteps = torch.randint(0, num_train, (batch_size,), generator=generator)
        noisy = scheduler.add_noise(x0, noise, timesteps)
        output = model(noisy, timesteps, return_dict=False)[0]
        loss = loss_fn(output, x0, noise, timesteps)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(model.parameters())

    return step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of each loop")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's train_batch_size")
    parser.add_argument("--trainer", action="store_true", help="also time the real trainer (python -m training)")
    parser.add_argument("--trainer-steps", type=int, default=30)
    args = parser.parse_args(argv)

    from diffusers import DDPMScheduler

    from ddpm_plugin import GaussianDDPMScheduler
    from ddpm_plugin.losses import simple_loss
    from training.data import mnist_split

    config = load_training_config("mnist_pixel")
    batch_size = args.batch_size or int(config.get("train_batch_size", 64))
    train_images = torch.from_numpy(mnist_split()[0]).float()[:, None] / 127.5 - 1.0  # (4500, 1, 28, 28)
    kwargs = pixel_unet_kwargs()
    reference, ours = unet_pair(kwargs, seed=0)
    schedule = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02}
    our_scheduler = GaussianDDPMScheduler(**schedule)
    ref_scheduler = DDPMScheduler(**schedule)

    our_step = make_step(
        ours, our_scheduler, lambda out, x0, eps, t: simple_loss(out, x0, eps, t, our_scheduler), train_images,
        batch_size, seed=1,
    )  # fmt: skip
    ref_step = make_step(
        reference, ref_scheduler, lambda out, x0, eps, t: F.mse_loss(out.float(), eps.float()), train_images,
        batch_size, seed=1,
    )  # fmt: skip

    def many(step):
        return lambda: [step() for _ in range(args.steps)]

    times = interleaved({"ours": many(our_step), "diffusers": many(ref_step)}, repeats=args.repeats, warmup=1)
    med = medians(times)
    images = args.steps * batch_size
    ours_ips, ref_ips = images / med["ours"], images / med["diffusers"]
    ratio = paired_ratio(times, "diffusers", "ours")  # time ratio = throughput ratio ours / diffusers

    info = machine_info()
    print(f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']} ({info['torch_threads']} threads), "
          f"diffusers {info['diffusers']}, load average {info['load average (1, 5, 15 min)']}, {info['date']}")  # fmt: skip
    print()
    print("| loop | model | params | batch | images/s (ours) | images/s (plain diffusers) | ours / diffusers |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| training step (MNIST 28x28, AdamW + clip + EMA) | mnist_pixel UNet | {count_parameters(ours) / 1e6:.2f}M | "
        f"{batch_size} | {ours_ips:.1f} | {ref_ips:.1f} | {ratio:.2f}x |"
    )
    if args.trainer:
        from training.config import config_from_dict
        from training.loop import train

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "training", "configs")
            from training.config import load_config_file

            values = load_config_file(os.path.join(path, "mnist_pixel.yaml"))
            values.update(
                output_dir=tmp, max_train_steps=args.trainer_steps, train_batch_size=batch_size,
                checkpointing_steps=0, sample_steps=0, eval_steps=0, final_eval_num_images=0, report_to="none",
                progress_bar=False, lr_warmup_steps=0, logging_steps=args.trainer_steps, card_grid_inference_steps=1,
            )  # fmt: skip
            result = train(config_from_dict(values).validate(), argv=["bench"])
            trainer_ips = result.metrics["train/images_per_second"]
        print(
            f"| full trainer (`python -m training`, accelerate, {args.trainer_steps} steps) | mnist_pixel UNet | "
            f"{count_parameters(ours) / 1e6:.2f}M | {batch_size} | {trainer_ips:.1f} | - | - |"
        )


if __name__ == "__main__":
    main()

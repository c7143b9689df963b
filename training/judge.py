"""Training of the digit judge (`ddpm_plugin.judge.DigitJudge`) that scores generated MNIST samples.

python -m training.judge --train --out ddpm_plugin/pretrained/judge   # train, save, write reference_stats.npz
python -m training.judge --write-reference --out FOLDER               # (re)write the judge's reference statistics
python -m training.judge [--out FOLDER]                               # held-out accuracy of a judge
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ddpm_plugin.data import mnist_split
from ddpm_plugin.judge import (
    DEFAULT_JUDGE_DIR,
    JUDGE_RESOLUTION,
    DigitJudge,
    compute_reference,
    load_judge,
    to_judge_input,
    write_reference,
)

__all__ = ["main", "train_judge"]


def _random_shift(batch: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shifts each image by up to `max_shift` pixels in x and y, filling with background (-1)."""
    size = batch.shape[-1]
    padded = F.pad(batch, (max_shift,) * 4, value=-1.0)
    offsets = torch.randint(0, 2 * max_shift + 1, (batch.shape[0], 2), generator=generator)
    return torch.stack([padded[i, :, dy : dy + size, dx : dx + size] for i, (dy, dx) in enumerate(offsets.tolist())])


def _outliers(
    images: torch.Tensor, labels: torch.Tensor, num: int, num_classes: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Non-digits with soft targets, for outlier exposure (Hendrycks et al. 2019): without them a classifier is as
    confident on noise as on digits, and the confident share would pass an untrained model. A third each of
    pixel noise (gray level and contrast drawn per image), smooth blobs (upsampled coarse noise, thresholded) with
    the uniform target, and overlays of two digits of different classes with the target 1/2 on each.

    Returns:
        `(images, targets)` of shapes `(num, 1, 28, 28)` in [-1, 1] and `(num, num_classes)`.
    """
    size = images.shape[-1]
    n_noise, n_blob = num // 3, num // 3
    n_overlay = num - n_noise - n_blob
    uniform = torch.full((1, num_classes), 1.0 / num_classes)

    level = torch.rand(n_noise, 1, 1, 1, generator=generator) * 2 - 1.5  # mean gray level in [-1.5, 0.5]
    spread = torch.rand(n_noise, 1, 1, 1, generator=generator) * 1.2 + 0.1
    noise = (level + spread * torch.randn(n_noise, 1, size, size, generator=generator)).clamp(-1, 1)

    coarse = torch.randn(n_blob, 1, 7, 7, generator=generator)
    smooth = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    cut = torch.rand(n_blob, 1, 1, 1, generator=generator) * 1.5  # how much of the image the blobs cover
    blobs = ((smooth - cut) * 4).clamp(-1, 1)

    first = torch.randint(0, len(images), (n_overlay,), generator=generator)
    second = torch.randint(0, len(images), (n_overlay,), generator=generator)
    keep = labels[first] != labels[second]
    first, second = first[keep], second[keep]
    overlay = torch.maximum(images[first], images[second])
    overlay_targets = 0.5 * F.one_hot(labels[first], num_classes) + 0.5 * F.one_hot(labels[second], num_classes)

    outliers = torch.cat([noise, blobs, overlay])
    targets = torch.cat([uniform.expand(n_noise + n_blob, -1), overlay_targets.float()])
    return outliers, targets


@torch.no_grad()
def _accuracy(judge: DigitJudge, images: torch.Tensor, labels: torch.Tensor) -> float:
    judge.eval()
    predictions = torch.cat([judge(images[i : i + 500]).argmax(-1) for i in range(0, len(images), 500)])
    return (predictions == labels).double().mean().item()


@torch.no_grad()
def _confident_share(judge: DigitJudge, images: torch.Tensor, threshold: float = 0.9) -> float:
    judge.eval()
    probs = torch.cat([torch.softmax(judge(images[i : i + 500]), -1) for i in range(0, len(images), 500)])
    return (probs.max(-1).values >= threshold).double().mean().item()


def train_judge(
    out: str | os.PathLike,
    epochs: int = 20,
    batch_size: int = 64,
    learning_rate: float = 2e-3,
    max_shift: int = 2,
    outlier_fraction: float = 0.25,
    seed: int = 0,
) -> dict:
    """
    Trains the judge on the 4,500 training digits of `ddpm_plugin.data.mnist_split(seed=0)` (AdamW, one-cycle learning
    rate, random shifts of up to `max_shift` pixels, plus `outlier_fraction` non-digits per batch with soft targets,
    see `_outliers`) and saves it to `out` with its metrics on the 500 held-out digits in `out/judge_metrics.json`.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    train_x, train_y, heldout_x, heldout_y = mnist_split(seed=0)
    train_images, heldout_images = to_judge_input(train_x), to_judge_input(heldout_x)
    train_labels, heldout_labels = torch.from_numpy(train_y).long(), torch.from_numpy(heldout_y).long()

    judge = DigitJudge()
    num_classes = judge.config.num_classes
    optimizer = torch.optim.AdamW(judge.parameters(), lr=learning_rate, weight_decay=5e-4)
    steps_per_epoch = -(-len(train_images) // batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, learning_rate, total_steps=epochs * steps_per_epoch)
    start = time.perf_counter()
    for epoch in range(epochs):
        judge.train()
        order = torch.randperm(len(train_images), generator=generator)
        total = 0.0
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            digits = _random_shift(train_images[idx], max_shift, generator)
            outliers, outlier_targets = _outliers(
                train_images, train_labels, round(outlier_fraction * len(idx)), num_classes, generator
            )
            logits = judge(torch.cat([digits, outliers]))
            loss = F.cross_entropy(logits[: len(idx)], train_labels[idx])
            # cross-entropy to the soft targets, weighted by the outliers' share of the batch
            log_probs = F.log_softmax(logits[len(idx) :], dim=-1)
            loss = loss + outlier_fraction * -(outlier_targets * log_probs).sum(-1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(idx)
        accuracy = _accuracy(judge, heldout_images, heldout_labels)
        print(
            f"epoch {epoch + 1}/{epochs}  loss {total / len(order):.4f}  held-out accuracy {accuracy:.4f}  "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    judge.eval()
    reference = compute_reference(judge)
    noise_generator = torch.Generator().manual_seed(seed + 1)
    noise = torch.rand(500, 1, JUDGE_RESOLUTION, JUDGE_RESOLUTION, generator=noise_generator) * 2 - 1
    metrics = {
        "heldout_accuracy": _accuracy(judge, heldout_images, heldout_labels),
        "heldout_confident_share": _confident_share(judge, heldout_images),
        "train_accuracy": _accuracy(judge, train_images, train_labels),
        "uniform_noise_confident_share": _confident_share(judge, noise),
        "frechet_reference": reference["frechet_reference"],
        "num_heldout": len(heldout_images),
        "num_train": len(train_images),
        "epochs": epochs,
        "seed": seed,
        "data": "ddpm_plugin.data.mnist_split(seed=0)",
    }
    judge.save_pretrained(out, safe_serialization=True)
    with open(Path(out) / "judge_metrics.json", "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=2)
    write_reference(judge, out, reference)
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train (or check) the digit judge used by ddpm_plugin.evaluate.")
    parser.add_argument("--train", action="store_true", help="train the judge and save it to --out")
    parser.add_argument(
        "--write-reference", action="store_true", help="(re)write --out/reference_stats.npz for the judge in --out"
    )
    parser.add_argument("--out", default=str(DEFAULT_JUDGE_DIR), help="folder of the judge (default: the shipped one)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the CPU is shared)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.train:
        metrics = train_judge(args.out, epochs=args.epochs, seed=args.seed)
    elif args.write_reference:
        judge = load_judge(args.out)
        print(f"wrote {write_reference(judge, args.out)}")
        metrics = {}
    else:
        _, _, heldout_x, heldout_y = mnist_split(seed=0)
        judge = load_judge(args.out)
        metrics = {"heldout_accuracy": _accuracy(judge, to_judge_input(heldout_x), torch.from_numpy(heldout_y))}
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()

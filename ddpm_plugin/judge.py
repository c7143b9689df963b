# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""The digit judge: a small CNN classifier of 28x28 MNIST digits, used to score generated samples.

It gives two things to `ddpm_plugin.evaluate`: the class probabilities (is a sample a confidently recognisable digit,
and which one) and the activations of its penultimate layer, the feature space of the Frechet distance (the MNIST
analogue of FID's Inception features).

The real-data side of the metrics lives here too: the statistics of the judge's features of the 500 held-out digits
and the real-vs-real reference Frechet distance (`compute_reference`), stored next to the weights with the judge's
fingerprint (`write_reference`) and read back for these very weights (`reference_frechet_distance`).

Trained on the 4,500 training digits of `ddpm_plugin.data.mnist_split(seed=0)` with small random shifts; the weights
ship with the package in `ddpm_plugin/pretrained/judge/` (safetensors + config.json). Retrain from a checkout with

    python -m training.judge --train --out ddpm_plugin/pretrained/judge
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .data import cached_mnist_split
from .metrics import feature_statistics, frechet_distance, judge_summary

__all__ = [
    "DEFAULT_JUDGE_DIR",
    "REFERENCE_STATS_NAME",
    "DigitJudge",
    "compute_reference",
    "judge_fingerprint",
    "judge_images",
    "load_judge",
    "reference_frechet_distance",
    "to_judge_input",
    "write_reference",
]

DEFAULT_JUDGE_DIR = Path(__file__).resolve().parent / "pretrained" / "judge"
JUDGE_RESOLUTION = 28


class DigitJudge(ModelMixin, ConfigMixin):
    """
    A VGG-style CNN for 28x28 grayscale digits: two blocks of two 3x3 convolutions (BatchNorm, ReLU, 2x2 max pool),
    a third 3x3 convolution, a linear feature layer of `feature_dim` units and a linear classifier.

    Args:
        num_classes (`int`): number of classes (10 digits).
        block_channels (`tuple[int, int, int]`): channels of the three convolution stages (28x28, 14x14, 7x7).
        feature_dim (`int`): width of the penultimate layer, the feature space of the Frechet distance.
        dropout (`float`): dropout before the classifier (training only).
    """

    @register_to_config
    def __init__(
        self,
        num_classes: int = 10,
        block_channels: tuple[int, int, int] = (32, 64, 64),
        feature_dim: int = 64,
        dropout: float = 0.3,
    ):
        super().__init__()
        c1, c2, c3 = block_channels

        def conv(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.conv = nn.Sequential(
            *conv(1, c1), *conv(c1, c1), nn.MaxPool2d(2),  # (B, c1, 14, 14)
            *conv(c1, c2), *conv(c2, c2), nn.MaxPool2d(2),  # (B, c2, 7, 7)
            *conv(c2, c3), nn.MaxPool2d(2),  # (B, c3, 3, 3)
        )  # fmt: skip
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(c3 * 9, feature_dim), nn.ReLU(inplace=True))
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(feature_dim, num_classes)

    def forward(self, sample: torch.Tensor, return_features: bool = False):
        """
        Args:
            sample (`torch.Tensor`): digits of shape `(batch_size, 1, 28, 28)` in [-1, 1] (background -1).
            return_features (`bool`): also return the penultimate activations.

        Returns:
            logits `(batch_size, num_classes)`, or `(logits, features)` with features `(batch_size, feature_dim)`.
        """
        if sample.ndim != 4 or tuple(sample.shape[1:]) != (1, JUDGE_RESOLUTION, JUDGE_RESOLUTION):
            raise ValueError(
                f"the digit judge takes images of shape (batch_size, 1, 28, 28) in [-1, 1], got {tuple(sample.shape)}."
            )
        features = self.features(self.conv(sample))
        logits = self.classifier(self.drop(features))
        return (logits, features) if return_features else logits


def load_judge(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> DigitJudge:
    """The trained judge from `path` (default: the weights shipped in `ddpm_plugin/pretrained/judge/`), in eval mode."""
    path = Path(path) if path is not None else DEFAULT_JUDGE_DIR
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"no digit judge in {str(path)!r} (config.json missing); train one with "
            f"`python -m training.judge --train --out {path}` (from a checkout of the repository)."
        )
    try:
        judge = DigitJudge.from_pretrained(path, use_safetensors=True)
    except Exception as error:
        raise OSError(f"cannot load the digit judge from {str(path)!r}: {type(error).__name__}: {error}") from error
    return judge.to(device).eval()


def to_judge_input(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """
    Pipeline outputs or dataset digits -> the judge's input `(batch_size, 1, 28, 28)` float32 in [-1, 1].

    Accepts a `torch.Tensor` `(batch_size, num_channels, height, width)` in [0, 1] (`output_type="pt"`), a float
    `np.ndarray` `(batch_size, height, width, num_channels)` in [0, 1] (`output_type="np"`) or a uint8 array
    `(batch_size, height, width)` / `(batch_size, height, width, num_channels)` in 0..255. Color images are averaged
    to gray; images larger than 28x28 (e.g. 32x32 models of padded MNIST) are center-cropped to 28x28.
    """
    if isinstance(images, np.ndarray):
        array = images
        if array.ndim == 3:
            array = array[..., None]  # (B, H, W, 1)
        if array.ndim != 4:
            raise ValueError(f"expected images of shape (batch_size, height, width[, channels]), got {array.shape}.")
        scale = 255.0 if array.dtype == np.uint8 else 1.0
        tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2))).float() / scale
    elif isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ValueError(
                f"expected images of shape (batch_size, channels, height, width), got {tuple(images.shape)}."
            )
        tensor = images.detach().float().cpu()
        if images.dtype == torch.uint8:
            tensor = tensor / 255.0
    else:
        raise TypeError(f"images must be a torch.Tensor or a numpy array, got {type(images).__name__}.")
    if tensor.shape[1] not in (1, 3):
        raise ValueError(f"expected 1 (gray) or 3 (RGB) channels, got {tensor.shape[1]}.")
    tensor = tensor.mean(dim=1, keepdim=True)  # (B, 1, H, W)
    height, width = tensor.shape[-2:]
    if height < JUDGE_RESOLUTION or width < JUDGE_RESOLUTION:
        raise ValueError(f"the judge needs images of at least 28x28 pixels, got {height}x{width}.")
    top, left = (height - JUDGE_RESOLUTION) // 2, (width - JUDGE_RESOLUTION) // 2
    tensor = tensor[:, :, top : top + JUDGE_RESOLUTION, left : left + JUDGE_RESOLUTION]  # (B, 1, 28, 28)
    return tensor * 2.0 - 1.0


@torch.no_grad()
def judge_images(
    judge: DigitJudge, images: torch.Tensor | np.ndarray, batch_size: int = 500
) -> tuple[np.ndarray, np.ndarray]:
    """
    Class probabilities and penultimate features of `images` (any format `to_judge_input` takes).

    Returns:
        `(probs, features)`: float64 arrays of shapes `(num_images, num_classes)` and `(num_images, feature_dim)`.
    """
    inputs = to_judge_input(images)
    device = next(judge.parameters()).device
    probs, features = [], []
    for start in range(0, inputs.shape[0], batch_size):
        logits, feats = judge(inputs[start : start + batch_size].to(device), return_features=True)
        probs.append(torch.softmax(logits.double(), dim=-1).cpu())
        features.append(feats.double().cpu())
    return torch.cat(probs).numpy(), torch.cat(features).numpy()


# ---------------------------------------------------------------------------------------------------- reference
_REFERENCE_CACHE: dict[str, dict] = {}
REFERENCE_STATS_NAME = "reference_stats.npz"


def judge_fingerprint(judge: DigitJudge) -> str:
    """SHA-256 of the judge's weights and buffers: which judge a stored reference belongs to."""
    digest = hashlib.sha256()
    for name, tensor in sorted(judge.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def compute_reference(judge: DigitJudge) -> dict:
    """
    The real-data side of the metrics, from `ddpm_plugin.data.mnist_split(seed=0)`: the mean and covariance of the
    judge's features of the 500 held-out digits (what generated samples are compared with), the real-vs-real
    reference Frechet distance (held-out against the 4,500 training digits), and the judge's held-out accuracy and
    confident share.
    """
    train_x, _, heldout_x, heldout_y = cached_mnist_split(seed=0)
    heldout_probs, heldout_features = judge_images(judge, heldout_x)
    _, train_features = judge_images(judge, train_x)
    heldout_mu, heldout_sigma = feature_statistics(heldout_features)
    return {
        "heldout_mu": heldout_mu,
        "heldout_sigma": heldout_sigma,
        "frechet_reference": frechet_distance(heldout_mu, heldout_sigma, *feature_statistics(train_features)),
        "judge_heldout_accuracy": float((heldout_probs.argmax(axis=1) == heldout_y).mean()),
        "heldout_confident_share": judge_summary(heldout_probs)["confident_share"],
    }


def write_reference(judge: DigitJudge, folder: str | os.PathLike, reference: dict | None = None) -> Path:
    """Stores `reference` (default: `compute_reference(judge)`) with the judge's fingerprint in
    `folder/reference_stats.npz`."""
    path = Path(folder) / REFERENCE_STATS_NAME
    reference = compute_reference(judge) if reference is None else reference
    np.savez(path, fingerprint=judge_fingerprint(judge), **reference)
    return path


def reference_frechet_distance(judge: DigitJudge) -> dict:
    """
    `compute_reference(judge)`, read from the `reference_stats.npz` next to the judge's weights when it was stored for
    these very weights (the shipped judge has one: no pass over the 5,000 real digits), computed otherwise; cached.
    """
    fingerprint = judge_fingerprint(judge)
    if fingerprint not in _REFERENCE_CACHE:
        path = Path(str(getattr(judge.config, "_name_or_path", ""))) / REFERENCE_STATS_NAME
        reference = None
        if path.is_file():
            with np.load(path) as stored:
                if str(stored["fingerprint"]) == fingerprint:
                    reference = {k: (stored[k] if stored[k].ndim else stored[k].item()) for k in stored.files}
                    del reference["fingerprint"]
        _REFERENCE_CACHE[fingerprint] = reference if reference is not None else compute_reference(judge)
    return _REFERENCE_CACHE[fingerprint]

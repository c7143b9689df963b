# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""Uploaded images, safely: the file size and the pixel count (read from the header, before anything is decoded) are
checked against the operator's limits, then the image is converted to what the model expects.

Conversion to grayscale ("L") or RGB:
- 16-bit and 32-bit integer images ("I;16", "I") are scaled to 8 bits (v / 257, rounded), not clipped at 255;
- transparency (RGBA, LA, palette with a transparent index) is composited over black, the background of MNIST;
- palette, CMYK and bilevel images are expanded by Pillow first; EXIF orientation is applied.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["check_upload", "open_upload", "to_model_mode"]

_WIDE_INTEGER_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _not_an_image(name: str, err: Exception) -> ValueError:
    return ValueError(
        f"The upload {name!r} is not an image ({type(err).__name__}); upload a PNG or JPEG picture of a digit."
    )


def check_upload(path: str, max_bytes: int, max_pixels: int, shown_name: str | None = None) -> tuple[int, int]:
    """
    Checks an uploaded file's size and, from its header only, its width x height; returns (width, height).

    Raises:
        `ValueError` naming the upload and the limit it is over, or saying that it is not an image.
    """
    name = shown_name or os.path.basename(str(path))
    size = os.path.getsize(path)
    if size > max_bytes:
        raise ValueError(
            f"The upload {name!r} is {size / 1e6:.1f} MB; this app accepts images up to {max_bytes / 1e6:g} MB."
        )
    try:
        with Image.open(path) as image:  # reads the header, decodes nothing
            width, height = image.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise _not_an_image(name, err) from None
    if width * height > max_pixels:
        raise ValueError(
            f"The upload {name!r} is {width}x{height} = {width * height:,} pixels; this app accepts images up to "
            f"{max_pixels:,} pixels (a digit needs far fewer)."
        )
    return width, height


def to_model_mode(image: Image.Image, channels: int) -> Image.Image:
    """`image` in any Pillow mode -> "L" (`channels == 1`) or "RGB", as described in the module docstring."""
    target = "L" if channels == 1 else "RGB"
    if image.mode in _WIDE_INTEGER_MODES:
        array = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.rint(array / 257.0), 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        scale = 255.0 if array.size and np.nanmax(array) <= 1.0 else 1.0  # [0, 1] floats, else 8-bit values
        array = np.nan_to_num(array * scale, nan=0.0)
        image = Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode == "PA":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba).convert("RGB")
    elif image.mode == "CMYK":
        image = image.convert("RGB")
    return image.convert(target)


def open_upload(
    path: str, channels: int, max_bytes: int, max_pixels: int, shown_name: str | None = None
) -> Image.Image:
    """The uploaded image, checked (`check_upload`), decoded, turned upright and converted (`to_model_mode`)."""
    name = shown_name or os.path.basename(str(path))
    check_upload(path, max_bytes, max_pixels, name)
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image) or image
            return to_model_mode(image, channels)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise _not_an_image(name, err) from None

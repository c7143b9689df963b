"""Training module of ddpm_plugin: the VAE and the DDPM UNet (pixel or latent space) with accelerate.

```sh
python -m training --config training/configs/mnist_pixel.yaml --output_dir /work/runs/mnist-pixel
```
"""

from importlib import import_module

__all__ = ["TrainingConfig", "TrainResult", "mnist_split", "parse_args", "train"]

_LAZY = {
    "TrainingConfig": "training.config",
    "parse_args": "training.config",
    "mnist_split": "training.data",
    "train": "training.loop",
    "TrainResult": "training.loop",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'training' has no attribute {name!r}")

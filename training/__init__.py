"""Training module of ddpm_plugin: the VAE and the DDPM UNet (pixel or latent space) with accelerate.

From a checkout this is the package `training`; installed, it is `ddpm_plugin_training`, with the command `ddpm-train`:

```sh
python -m training --config training/configs/mnist_pixel.yaml --output_dir /work/runs/mnist-pixel
ddpm-train --config training/configs/mnist_pixel.yaml --output_dir /work/runs/mnist-pixel
```
"""

from importlib import import_module

__all__ = ["TrainingConfig", "TrainResult", "mnist_split", "parse_args", "train"]

# public name -> module of this package (relative: the package is `training` in a checkout and
# `ddpm_plugin_training` when installed)
_LAZY = {
    "TrainingConfig": ".config",
    "parse_args": ".config",
    "mnist_split": ".data",
    "train": ".loop",
    "TrainResult": ".loop",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

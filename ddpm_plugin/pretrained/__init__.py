# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""The bundled default pipelines, loaded offline from the package folder.

`ddpm_plugin/pretrained/mnist-latent/` (`LatentDDPMPipeline`) and `ddpm_plugin/pretrained/mnist-pixel/`
(`PixelDDPMPipeline`) are plain pipeline folders as `save_pretrained` writes them (model_index.json, component configs,
safetensors, a model card and a `checksums.sha256` manifest); they hold no code. `load_default_pipeline` checks a folder
before loading it (every JSON file parses, every safetensors file opens, and every file of the manifest has its
recorded SHA-256), so that a damaged installation fails with the name of the damaged file rather than deep inside
diffusers. `load_pipeline_folder` loads any local pipeline folder the same way, including a `save_for_hub` folder,
whose copied model code it never runs (the installed classes load it).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

__all__ = [
    "CHECKSUMS_NAME",
    "DEFAULT_PIPELINES",
    "PRETRAINED_DIR",
    "check_pipeline_folder",
    "load_default_pipeline",
    "load_pipeline_folder",
    "write_checksums",
]

# where the bundled pipelines live; module-level so tests (and repackagers) can point it elsewhere
PRETRAINED_DIR = Path(__file__).resolve().parent
# kind -> (folder under PRETRAINED_DIR, pipeline class)
DEFAULT_PIPELINES = {
    "latent": ("mnist-latent", "LatentDDPMPipeline"),
    "pixel": ("mnist-pixel", "PixelDDPMPipeline"),
}
CHECKSUMS_NAME = "checksums.sha256"
# the pipelines this package assembles itself from a folder (whatever module files the folder names)
PIPELINE_CLASSES = ("PixelDDPMPipeline", "LatentDDPMPipeline")


def load_default_pipeline(
    kind: str = "latent",
    *,
    root: str | os.PathLike | None = None,
    torch_dtype=None,
    device: str | None = None,
    **kwargs,
):
    """
    The bundled MNIST pipeline of `kind`, loaded from the package folder without any network access.

    Args:
        kind (`str`): `"latent"` (`LatentDDPMPipeline`, the default) or `"pixel"` (`PixelDDPMPipeline`).
        root (`str`, *optional*): folder holding `mnist-latent/` and `mnist-pixel/` (default: `PRETRAINED_DIR`, the
            package's own `ddpm_plugin/pretrained/`).
        torch_dtype (`torch.dtype`, *optional*): dtype to load the weights in (default: as saved, float32).
        device (`str`, *optional*): device to move the pipeline to (default: CPU).
        kwargs: passed on to `from_pretrained`.

    Returns:
        the pipeline (`LatentDDPMPipeline` or `PixelDDPMPipeline`).

    Raises:
        `ValueError`: an unknown `kind`.
        `FileNotFoundError`: the bundled model is not present in the installation.
        `OSError`: a bundled file is damaged (truncated or corrupted safetensors, invalid JSON, checksum mismatch);
            the message names the file.

    Example:
        ```py
        >>> from ddpm_plugin import load_default_pipeline

        >>> pipe = load_default_pipeline("pixel")
        >>> images = pipe(batch_size=4, num_inference_steps=100).images
        ```
    """
    if kind not in DEFAULT_PIPELINES:
        raise ValueError(f"unknown kind={kind!r}; the bundled pipelines are {sorted(DEFAULT_PIPELINES)}.")
    folder_name, class_name = DEFAULT_PIPELINES[kind]
    folder = Path(root if root is not None else PRETRAINED_DIR) / folder_name
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the bundled {kind} model is not present: {str(folder)!r} "
            + ("has no model_index.json" if folder.is_dir() else "does not exist")
            + ". Reinstall ddpm_plugin, or train it (see training/) and save the pipeline there."
        )
    return load_pipeline_folder(
        folder, expected_class=class_name, torch_dtype=torch_dtype, device=device, local_files_only=True, **kwargs
    )


def load_pipeline_folder(
    folder: str | os.PathLike,
    *,
    expected_class: str | None = None,
    torch_dtype=None,
    device: str | None = None,
    **kwargs,
):
    """
    Loads a pipeline folder written by `save_pretrained` with the class named in its `model_index.json`
    (`PixelDDPMPipeline`, `LatentDDPMPipeline` or a diffusers pipeline), safetensors only, after `check_pipeline_folder`.
    A `save_for_hub` folder (whose `model_index.json` names copied module files) is assembled from the installed
    classes, so its code files are never executed.

    Raises:
        `FileNotFoundError`: `folder` is not a pipeline folder.
        `OSError`: a damaged file (named), or a pipeline class other than `expected_class`.
    """
    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"{str(folder)!r} is not a pipeline folder: it has no model_index.json.")
    check_pipeline_folder(folder)
    with open(folder / "model_index.json", encoding="utf-8") as f:
        model_index = json.load(f)
    class_name = model_index.get("_class_name")
    hub_format = isinstance(class_name, list)  # a `save_for_hub` folder: [module file, class]
    if hub_format:
        class_name = class_name[-1]
    if expected_class is not None and class_name != expected_class:
        raise OSError(
            f"{str(folder / 'model_index.json')!r} names the pipeline class {class_name!r}, expected {expected_class!r}."
        )
    pipeline_class = _pipeline_class(class_name, folder)
    kwargs.setdefault("use_safetensors", True)
    if hub_format and class_name in PIPELINE_CLASSES:
        pipe = _assemble(pipeline_class, folder, model_index, kwargs)
    else:
        pipe = pipeline_class.from_pretrained(str(folder), **kwargs)
    if torch_dtype is not None:  # cast after loading: the loader's dtype keyword differs across diffusers versions
        pipe = pipe.to(dtype=torch_dtype)
    if device is not None:
        pipe = pipe.to(device)
    return pipe


def _assemble(pipeline_class, folder: Path, model_index: dict, kwargs: dict):
    """
    Builds a ddpm_plugin pipeline from a `save_for_hub` folder with the installed classes: each component from its
    subfolder (ddpm_plugin classes by name, whatever module file the folder names, so the copied code is never
    executed; other classes from diffusers), and the pipeline's own settings (e.g. `default_num_inference_steps`) from
    `model_index.json`.
    """
    import inspect

    import diffusers
    from diffusers.models.modeling_utils import ModelMixin

    import ddpm_plugin

    parameters = inspect.signature(pipeline_class.__init__).parameters
    init_kwargs = {}
    for name, value in model_index.items():
        if name.startswith("_") or name not in parameters:
            continue
        if name in kwargs:  # a component or setting given by the caller
            init_kwargs[name] = kwargs[name]
        elif isinstance(value, list) and len(value) == 2:
            library, class_name = value
            if class_name in ddpm_plugin._LAZY:
                component_class = getattr(ddpm_plugin, class_name)
            elif library in ("diffusers", None) or hasattr(diffusers, str(class_name)):
                component_class = getattr(diffusers, str(class_name), None)
            else:
                component_class = None
            if component_class is None:
                raise OSError(
                    f"{str(folder / 'model_index.json')!r}: component {name!r} is the class {class_name!r} of "
                    f"{library!r}, which neither ddpm_plugin nor diffusers provides."
                )
            extra = {}
            if issubclass(component_class, ModelMixin):
                extra = {"use_safetensors": kwargs.get("use_safetensors", True)}
            init_kwargs[name] = component_class.from_pretrained(str(folder), subfolder=name, **extra)
        else:
            init_kwargs[name] = value
    return pipeline_class(**init_kwargs)


def _pipeline_class(class_name: str | None, folder: Path):
    import ddpm_plugin

    if class_name in PIPELINE_CLASSES:
        return getattr(ddpm_plugin, class_name)
    import diffusers

    pipeline_class = getattr(diffusers, str(class_name), None)
    if pipeline_class is None:
        raise OSError(
            f"{str(folder / 'model_index.json')!r} names the pipeline class {class_name!r}, which is neither a "
            "ddpm_plugin pipeline (PixelDDPMPipeline, LatentDDPMPipeline) nor a diffusers pipeline."
        )
    return pipeline_class


def check_pipeline_folder(folder: str | os.PathLike) -> None:
    """
    Checks every file of a pipeline folder that loading reads: each `*.json` parses, each `*.safetensors` has a
    complete header and data, and each file listed in `checksums.sha256` (if present) has its recorded SHA-256.

    Raises:
        `OSError`: naming the first damaged file and what is wrong with it.
    """
    from safetensors import safe_open

    folder = Path(folder)
    for path in sorted(folder.rglob("*.json")):
        try:
            with open(path, encoding="utf-8") as f:
                json.load(f)
        except (ValueError, UnicodeDecodeError) as error:
            raise OSError(f"the file {str(path)!r} is damaged: it is not valid JSON ({error}).") from None
    for path in sorted(folder.rglob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as f:
                f.keys()
        except Exception as error:  # noqa: BLE001 - safetensors raises its own error type
            raise OSError(
                f"the weight file {str(path)!r} is damaged (truncated or corrupted safetensors): {error}"
            ) from None
    manifest = folder / CHECKSUMS_NAME
    if manifest.is_file():
        for line_number, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            digest, _, name = line.strip().partition("  ")
            path = folder / name
            if not name or len(digest) != 64:
                raise OSError(f"the checksum file {str(manifest)!r} is damaged at line {line_number}: {line!r}.")
            if not path.is_file():
                raise OSError(f"the file {str(path)!r} listed in {CHECKSUMS_NAME} is missing.")
            if _sha256(path) != digest:
                raise OSError(
                    f"the file {str(path)!r} is damaged: its SHA-256 does not match the one in {CHECKSUMS_NAME}."
                )


def write_checksums(folder: str | os.PathLike) -> Path:
    """
    Writes `checksums.sha256` (`sha256sum` format, paths relative to `folder`) for the files loading reads (every
    `*.json` and `*.safetensors`; the model card may change freely), so that `check_pipeline_folder` also catches
    damage inside the tensor data. Run it after (re)saving a bundled pipeline; returns the manifest's path (written
    atomically: a temporary file renamed over it).
    """
    folder = Path(folder)
    lines = [
        f"{_sha256(path)}  {path.relative_to(folder).as_posix()}"
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".json", ".safetensors"))
    ]
    manifest = folder / CHECKSUMS_NAME
    tmp = manifest.with_name(f"{manifest.name}.tmp-{os.getpid()}")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, manifest)
    return manifest


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

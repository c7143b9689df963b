# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""Sharing on the Hugging Face Hub: `save_for_hub` writes a self-contained repository folder, `push_to_hub` uploads it.

A repository written by `save_for_hub` loads where ddpm_plugin is not installed, with diffusers' remote-code
mechanism (`DiffusionPipeline.from_pretrained(repo, trust_remote_code=True)`):

- `model_index.json` names the pipeline as `"_class_name": ["pipeline_pixel_ddpm", "PixelDDPMPipeline"]` with
  `pipeline_pixel_ddpm.py` at the repository root (diffusers' `_resolve_custom_pipeline_and_cls`), and each
  ddpm_plugin component as `["<module file name>", "<ClassName>"]` with the `.py` file in the component's folder,
  e.g. `unet/unet_ddpm_2d.py` (`get_class_obj_and_candidates` / `_get_custom_components_and_folders`);
  diffusers' own components (`AutoencoderKL`, `DDIMScheduler`, ...) stay `["diffusers", "<ClassName>"]`.
- The code files are copied from the installed package at save time (one source of truth), with the sibling modules
  they import relatively (diffusers' `get_cached_module_file` copies direct relative imports only, so a copied
  module must import every sibling it needs directly). Each copied file is checked to import nothing but the
  standard library, torch, diffusers, numpy, PIL and safetensors (diffusers' own requirements).
- Weights are safetensors only.

`README.md` is a model card (`huggingface_hub.ModelCard`): metadata (`library_name: diffusers`, tags, datasets,
license, model-index with the measured metrics), a sample grid `samples.png` drawn with fixed seeds, metrics table,
training command and usage.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.utils import make_image_grid
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from PIL import Image

__all__ = ["push_to_hub", "save_for_hub"]

TASK = "unconditional-image-generation"
BASE_TAGS = [TASK, "ddpm_plugin", "diffusers"]
# top-level modules that copied model code may import (besides the standard library): diffusers and what it requires
ALLOWED_IMPORTS = frozenset({"torch", "diffusers", "numpy", "PIL", "safetensors"})
_RELATIVE_IMPORT_RES = (
    re.compile(r"^\s*from\s+\.(\S+)\s+import", flags=re.MULTILINE),  # the patterns of diffusers'
    re.compile(r"^\s*import\s+\.(\S+)\s*$", flags=re.MULTILINE),  # `get_relative_imports`
)
_ABSOLUTE_IMPORT_RES = (
    re.compile(r"^\s*from\s+([A-Za-z_][\w.]*)\s+import", flags=re.MULTILINE),
    re.compile(r"^\s*import\s+([A-Za-z_][\w.]*(?:\s*,\s*[A-Za-z_][\w.]*)*)", flags=re.MULTILINE),
)
_BAD_RELATIVE_RE = re.compile(r"^\s*from\s+\.+\s+import|^\s*from\s+\.\.", flags=re.MULTILINE)


def save_for_hub(
    pipeline: Any,
    folder: str | os.PathLike,
    *,
    repo_id: str | None = None,
    model_name: str | None = None,
    description: str | None = None,
    datasets: str | list[str] | None = None,
    metrics: dict[str, float] | None = None,
    training_command: str | None = None,
    license: str = "apache-2.0",
    base_model: str | None = None,
    tags: list[str] | None = None,
    sample_grid: bool = True,
    grid_seed: int = 0,
    grid_rows: int = 4,
    grid_cols: int = 4,
    grid_num_inference_steps: int | None = None,
) -> Path:
    """
    Writes a self-contained Hub repository folder for a ddpm_plugin pipeline.

    The folder holds the pipeline (`save_pretrained`, safetensors only), the model code (so that
    `DiffusionPipeline.from_pretrained(folder_or_repo, trust_remote_code=True)` works where ddpm_plugin is not
    installed and samples the same images), a model card `README.md` and, unless `sample_grid=False`, a sample grid
    `samples.png`.

    Args:
        pipeline (`PixelDDPMPipeline` or `LatentDDPMPipeline`): the pipeline to share.
        folder (`str` or `os.PathLike`): where to write; created if needed, files of the same name are overwritten.
        repo_id (`str`, *optional*): the Hub id, used in the card's usage example.
        model_name (`str`, *optional*): the card's title (defaults to `repo_id`'s name or the pipeline class).
        description (`str`, *optional*): a paragraph for the card.
        datasets (`str` or `list[str]`, *optional*): Hub ids of the training data (card metadata `datasets`).
        metrics (`dict[str, float]`, *optional*): measured metrics, e.g. `{"bits_per_dim": 1.9, "fid": 12.3}`; shown
            as a table and, when `datasets` is given, as model-index evaluation results on its first dataset.
        training_command (`str`, *optional*): the command that trained the model, shown in the card.
        license (`str`, defaults to `"apache-2.0"`): card metadata `license`.
        base_model (`str`, *optional*): card metadata `base_model` (e.g. the Hub id of the VAE's source).
        tags (`list[str]`, *optional*): extra tags, added to `unconditional-image-generation`, `ddpm_plugin`,
            `diffusers`.
        sample_grid (`bool`, defaults to `True`): draw `grid_rows * grid_cols` samples into `samples.png`.
        grid_seed (`int`, defaults to 0): image `i` of the grid uses `torch.Generator().manual_seed(grid_seed + i)`.
        grid_rows, grid_cols (`int`, default to 4): the grid's shape.
        grid_num_inference_steps (`int`, *optional*): steps for the grid; `None` is the pipeline's default.

    Returns:
        `pathlib.Path`: the folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if metrics is not None:
        for key, value in metrics.items():
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"metrics[{key!r}]={value!r} is not allowed: metrics must be finite numbers.")
    datasets = [datasets] if isinstance(datasets, str) else list(datasets or [])
    component_entries = _component_entries(pipeline)  # checks the components before anything is written

    # 1. the pipeline, safetensors only
    pipeline.save_pretrained(folder, safe_serialization=True)
    for path in folder.rglob("*"):
        if path.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"):
            path.unlink()

    # 2. the model code, copied from the installed package, and model_index.json pointing at it
    pipeline_module = sys.modules[type(pipeline).__module__]
    pipeline_files = _copy_module(pipeline_module, folder, direct_only=True)
    index_path = folder / "model_index.json"
    model_index = json.loads(index_path.read_text(encoding="utf-8"))
    model_index["_class_name"] = [Path(pipeline_files[0]).stem, type(pipeline).__name__]
    for name, (module, class_name) in component_entries.items():
        if module is None:
            model_index[name] = ["diffusers", class_name]
        else:
            files = _copy_module(module, folder / name, direct_only=False)
            model_index[name] = [Path(files[0]).stem, class_name]
    index_path.write_text(json.dumps(model_index, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    # 3. the sample grid
    if sample_grid:
        _sample_grid(pipeline, grid_rows, grid_cols, grid_seed, grid_num_inference_steps).save(folder / "samples.png")

    # 4. the model card
    card = _model_card(
        pipeline,
        repo_id=repo_id,
        model_name=model_name,
        description=description,
        datasets=datasets,
        metrics=metrics or {},
        training_command=training_command,
        license=license,
        base_model=base_model,
        tags=tags or [],
        grid=(grid_rows, grid_cols, grid_seed, grid_num_inference_steps) if sample_grid else None,
    )
    card.save(folder / "README.md")
    return folder


def push_to_hub(
    pipeline: Any,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload DDPM pipeline (ddpm_plugin)",
    create_pr: bool = False,
    **card_fields: Any,
):
    """
    `save_for_hub` into a temporary folder, then create the Hub repository (if needed) and upload the folder.

    Args:
        pipeline: the pipeline to share.
        repo_id (`str`): `"user_or_org/name"`.
        private (`bool`, defaults to `False`): create the repository as private.
        token (`str`, *optional*): a Hub token; defaults to the logged-in user's.
        commit_message (`str`): the commit message.
        create_pr (`bool`, defaults to `False`): open a pull request instead of committing to `main`.
        **card_fields: the keyword arguments of `save_for_hub` (`datasets`, `metrics`, `training_command`, ...).

    Returns:
        `huggingface_hub.CommitInfo`: the commit (`.commit_url`, `.oid`, `.pr_url`).
    """
    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"repo_id={repo_id!r} is not allowed: give it as 'user_or_org/name'.")
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="ddpm_plugin_hub_") as tmp:
        save_for_hub(pipeline, tmp, repo_id=repo_id, **card_fields)
        repo_url = api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
        return api.upload_folder(
            repo_id=getattr(repo_url, "repo_id", repo_id),
            folder_path=tmp,
            repo_type="model",
            commit_message=commit_message,
            create_pr=create_pr,
        )


# ---------------------------------------------------------------------------------------------------- model code
def _component_entries(pipeline: Any) -> dict[str, tuple[Any, str]]:
    """For each saved component: (its ddpm_plugin module to copy, or `None` for a diffusers class, class name)."""
    from diffusers.pipelines.pipeline_utils import DiffusionPipeline

    if not isinstance(pipeline, DiffusionPipeline):
        raise ValueError(f"save_for_hub needs a diffusers DiffusionPipeline, got {type(pipeline).__name__}.")
    if not type(pipeline).__module__.startswith("ddpm_plugin."):
        raise ValueError(
            f"save_for_hub shares ddpm_plugin pipelines (PixelDDPMPipeline, LatentDDPMPipeline), got "
            f"{type(pipeline).__module__}.{type(pipeline).__name__}; use its own save_pretrained / push_to_hub."
        )
    entries = {}
    for name, value in pipeline.config.items():
        if name.startswith("_") or not isinstance(value, tuple | list) or value[0] is None:
            continue
        component = getattr(pipeline, name)
        cls = type(component)
        root = cls.__module__.split(".")[0]
        if root == "ddpm_plugin":
            entries[name] = (sys.modules[cls.__module__], cls.__name__)
        elif root == "diffusers" and getattr(__import__("diffusers"), cls.__name__, None) is cls:
            entries[name] = (None, cls.__name__)
        else:
            raise ValueError(
                f"pipeline.{name} is a {cls.__module__}.{cls.__name__}; a Hub repository of ddpm_plugin can hold "
                "ddpm_plugin components and diffusers' own classes only."
            )
    return entries


def _copy_module(module: Any, destination: Path, *, direct_only: bool) -> list[str]:
    """
    Copies a module's file and the sibling modules it imports relatively into `destination`; returns the file names,
    the module's own first. Checks that the files import only the standard library and `ALLOWED_IMPORTS`; with
    `direct_only`, that every needed sibling is imported by the module itself (diffusers copies only those for a
    pipeline file).
    """
    main = Path(inspect.getfile(module))
    destination.mkdir(parents=True, exist_ok=True)
    files, todo = [], [main]
    direct = set(_relative_imports(main))
    while todo:
        path = todo.pop(0)
        if path.name in files:
            continue
        text = path.read_text(encoding="utf-8")
        _check_imports(path, text)
        files.append(path.name)
        for name in _relative_imports(path):
            sibling = main.parent / f"{name}.py"
            if not sibling.is_file():
                raise ValueError(f"{path} imports .{name}, which is not a module file next to it ({sibling}).")
            if direct_only and name not in direct:
                raise ValueError(
                    f"{path} imports .{name}, which {main.name} does not import itself: diffusers' remote-code loader "
                    f"copies only the direct relative imports of {main.name}; add `from .{name} import ...` to it."
                )
            todo.append(sibling)
    for name in files:
        shutil.copyfile(main.parent / name, destination / name)
    return files


def _relative_imports(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    names = sorted({m for pattern in _RELATIVE_IMPORT_RES for m in pattern.findall(text)})
    bad = [n for n in names if n.startswith(".") or "." in n]
    if bad or _BAD_RELATIVE_RE.search(text):
        raise ValueError(
            f"{path} has a relative import diffusers' remote-code loader cannot follow ({bad or 'from . / from ..'}); "
            "import sibling modules as `from .module import name`."
        )
    return names


def _check_imports(path: Path, text: str) -> None:
    modules = set()
    for pattern in _ABSOLUTE_IMPORT_RES:
        for match in pattern.findall(text):
            modules.update(part.strip().split(".")[0] for part in match.split(","))
    bad = sorted(m for m in modules if m not in ALLOWED_IMPORTS and m not in sys.stdlib_module_names)
    if bad:
        raise ValueError(
            f"{path} imports {bad}; code copied into a Hub repository may import only the standard library and "
            f"{sorted(ALLOWED_IMPORTS)} (it must load where ddpm_plugin is not installed)."
        )


# ---------------------------------------------------------------------------------------------------- card, grid
def _sample_grid(pipeline: Any, rows: int, cols: int, seed: int, num_inference_steps: int | None) -> Image.Image:
    """`rows * cols` samples, image i from `torch.Generator().manual_seed(seed + i)`, tiled into one image."""
    if rows < 1 or cols < 1:
        raise ValueError(f"grid_rows and grid_cols must be positive, got {rows} x {cols}.")
    generators = [torch.Generator().manual_seed(seed + i) for i in range(rows * cols)]
    images = pipeline(
        batch_size=rows * cols, generator=generators, num_inference_steps=num_inference_steps, output_type="np"
    ).images  # (N, H, W, C) in [0, 1]
    grayscale = images.shape[-1] == 1
    tiles = [Image.fromarray(x[..., 0] if grayscale else x) for x in (images * 255).round().astype(np.uint8)]
    grid = make_image_grid(tiles, rows=rows, cols=cols)  # always RGB
    return grid.convert("L") if grayscale else grid


def _model_card(
    pipeline: Any,
    *,
    repo_id: str | None,
    model_name: str | None,
    description: str | None,
    datasets: list[str],
    metrics: dict[str, float],
    training_command: str | None,
    license: str,
    base_model: str | None,
    tags: list[str],
    grid: tuple[int, int, int, int | None] | None,
) -> ModelCard:
    cls_name = type(pipeline).__name__
    title = model_name or (repo_id.split("/")[-1] if repo_id else cls_name)
    latent = "vae" in pipeline.components
    eval_results = None
    if metrics and datasets:
        eval_results = [
            EvalResult(
                task_type=TASK,
                dataset_type=datasets[0],
                dataset_name=datasets[0],
                metric_type=key,
                metric_name=key,
                metric_value=float(value),
            )
            for key, value in metrics.items()
        ]
    card_data = ModelCardData(
        library_name="diffusers",
        pipeline_tag=TASK,
        license=license,
        tags=BASE_TAGS + [t for t in tags if t not in BASE_TAGS],
        datasets=datasets or None,
        base_model=base_model,
        model_name=title,
        eval_results=eval_results,
    )
    repo = repo_id or "path/to/this/folder"
    unet_config = dict(pipeline.unet.config)
    scheduler = pipeline.scheduler
    num_params = sum(p.numel() for p in pipeline.unet.parameters())
    lines = [
        f"# {title}",
        "",
        description
        or (
            "An unconditional DDPM (Ho, Jain & Abbeel 2020) "
            + ("in the latent space of a frozen VAE (latent diffusion). " if latent else "in pixel space. ")
            + "Made with `ddpm_plugin`, a DDPM plugin for Hugging Face diffusers."
        ),
        "",
    ]
    if grid is not None:
        rows, cols, seed, steps = grid
        lines += [
            "![samples](samples.png)",
            "",
            f"*{rows * cols} samples, image i drawn with `torch.Generator().manual_seed({seed} + i)`, "
            f"{steps or pipeline.config.default_num_inference_steps} steps of `{type(scheduler).__name__}` "
            "(capped at the number of training timesteps).*",
            "",
        ]
    lines += [
        "## Usage",
        "",
        "Without installing anything but diffusers (the model code ships with this repository):",
        "",
        "```python",
        "import torch",
        "from diffusers import DiffusionPipeline",
        "",
        f'pipe = DiffusionPipeline.from_pretrained("{repo}", trust_remote_code=True)',
        "images = pipe(batch_size=4, generator=torch.Generator().manual_seed(0)).images  # list of PIL images",
        "```",
        "",
        "Step previews (the predicted clean image x0_hat after every 50 steps):",
        "",
        "```python",
        "for preview in pipe.iter_previews(preview_every=50):",
        "    preview.step, preview.timestep, preview.pred_original_sample  # ..., preview.images on the last item",
        "```",
        "",
        "Faster sampling with another diffusers scheduler:",
        "",
        "```python",
        "from diffusers import DDIMScheduler",
        "",
        "pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)",
        "images = pipe(num_inference_steps=50).images",
        "```",
        "",
    ]
    if metrics:
        lines += ["## Evaluation", "", "| metric | value |", "|---|---|"]
        lines += [f"| {key} | {value:.6g} |" for key, value in metrics.items()]
        lines += [""]
        if datasets:
            lines += [f"Measured on `{datasets[0]}`.", ""]
    if datasets or training_command:
        lines += ["## Training", ""]
        if datasets:
            lines += ["Data: " + ", ".join(f"[{d}](https://huggingface.co/datasets/{d})" for d in datasets), ""]
        if training_command:
            lines += ["```bash", training_command, "```", ""]
    lines += [
        "## Model",
        "",
        f"- pipeline: `{cls_name}`, default {pipeline.config.default_num_inference_steps} inference steps",
        f"- noise predictor: `{type(pipeline.unet).__name__}`, {num_params / 1e6:.2f}M parameters, "
        f"sample size {unet_config.get('sample_size')}, {unet_config.get('in_channels')} channels",
        f"- scheduler: `{type(scheduler).__name__}`, {scheduler.config.get('num_train_timesteps')} training timesteps, "
        f"`{scheduler.config.get('beta_schedule')}` betas, `{scheduler.config.get('prediction_type')}` prediction",
    ]
    if latent:
        lines += [
            f"- VAE: `{type(pipeline.vae).__name__}`, {pipeline.vae.config.latent_channels} latent channels, "
            f"scaling factor s = {pipeline.vae.config.scaling_factor:.6g}"
        ]
    lines += [
        "",
        "## Citation",
        "",
        "```bibtex",
        "@inproceedings{ho2020denoising,",
        "  title={Denoising Diffusion Probabilistic Models},",
        "  author={Ho, Jonathan and Jain, Ajay and Abbeel, Pieter},",
        "  booktitle={Advances in Neural Information Processing Systems},",
        "  year={2020}",
        "}",
        "```",
        "",
    ]
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines))

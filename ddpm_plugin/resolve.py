# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""One way to name a model: a bundled model, a local folder or a Hugging Face Hub id, and a policy saying which of
them may be loaded.

- Bundled models: `"bundled:latent"` and `"bundled:pixel"` (the canonical spelling, also the app's); `"latent"` and
  `"pixel"` are accepted as the same models. A bundled name wins over a folder of the same name in the working
  directory: write `./latent` for the folder.
- A local folder: any existing directory (a pipeline folder written by `save_pretrained`, a `save_for_hub` folder, or,
  for `--init_from`, a model folder with `config.json`). Under a policy with `allowed_dirs`, only folders whose real
  path lies inside one of them, named by their path or relative to an allowed directory; nothing outside is looked at.
- A Hub id `owner/name`: downloaded with `HfApi.snapshot_download`, restricted to the files a pipeline needs
  (`ModelPolicy.hub_allow_patterns`); under a size cap, at the revision whose file sizes were checked; with
  `HF_HUB_OFFLINE=1` only the local Hub cache is read.

`ModelPolicy` is the one place that decides what may be loaded: `CLI_POLICY` (the command-line tools) allows all
three; the app narrows it. `resolve_model` decides (no network), `model_folder` makes the model a local folder (the
download), `load_pipeline` does both and loads the pipeline. Repository code is never run: ddpm_plugin's installed
classes load a `save_for_hub` folder.

Example:
    ```py
    >>> from ddpm_plugin.resolve import load_pipeline, resolve_model

    >>> resolve_model("latent").display_name
    'bundled:latent'
    >>> pipe = load_pipeline("bundled:pixel")
    ```
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = [
    "BUNDLED_PREFIX",
    "CLI_POLICY",
    "ModelNotAllowedError",
    "ModelPolicy",
    "ResolvedModel",
    "load_pipeline",
    "model_folder",
    "resolve_model",
]

BUNDLED_PREFIX = "bundled:"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class ModelNotAllowedError(ValueError):
    """A model that names something real, but that the policy does not allow."""


@dataclass(frozen=True)
class ModelPolicy:
    """
    What may be loaded.

    Args:
        allow_bundled (`bool`): the bundled models (`"bundled:latent"`, `"bundled:pixel"`).
        allow_hub (`bool`): Hub ids `owner/name`.
        allowed_dirs (`tuple` of paths, *optional*): local folders must lie inside one of these (after resolving
            symbolic links); `None` allows any local folder, `()` none.
        hub_allow_patterns (`tuple[str, ...]`): the files of a Hub repository that are downloaded (`fnmatch`
            patterns, as `snapshot_download`'s `allow_patterns`); code and pickles are never fetched.
        max_hub_bytes (`int`, *optional*): refuse a Hub repository whose allowed files add up to more bytes than this
            (checked from the Hub's file list before downloading and from the cached files when offline).
        pipeline_classes (`tuple[str, ...]`, *optional*): the pipeline classes `load_pipeline` accepts (the
            `_class_name` of `model_index.json`); `None` accepts any. When set, a Hub repository without
            `model_index.json` is refused before downloading.
        bundled_aliases (`bool`): `"latent"` / `"pixel"` name the bundled models too; `False`: only `"bundled:..."`
            does (where a folder inside `allowed_dirs` may be called `pixel`).
        expand_user (`bool`): a leading `~` in a folder name is a home directory; `False`: it is an ordinary character
            (a policy for visitors never looks into home directories).
    """

    allow_bundled: bool = True
    allow_hub: bool = True
    allowed_dirs: tuple[str | os.PathLike, ...] | None = None
    hub_allow_patterns: tuple[str, ...] = ("*.json", "*.safetensors", "README.md")
    max_hub_bytes: int | None = None
    pipeline_classes: tuple[str, ...] | None = None
    bundled_aliases: bool = True
    expand_user: bool = True

    def allowed(self) -> str:
        """What this policy allows, in words (for error messages)."""
        kinds = []
        if self.allow_bundled:
            kinds.append(f"a bundled model ({', '.join(repr(n) for n in bundled_names())})")
        if self.allowed_dirs is None:
            kinds.append("a local folder")
        elif self.allowed_dirs:
            kinds.append(f"a folder inside {[str(d) for d in self.allowed_dirs]}")
        if self.allow_hub:
            kinds.append("a Hub id 'owner/name'")
        return ", ".join(kinds[:-1]) + (" or " if len(kinds) > 1 else "") + kinds[-1] if kinds else "nothing"


# the command-line tools (`ddpm_plugin.sample`, `ddpm_plugin.evaluate`, `ddpm-train --init_from`): anything
CLI_POLICY = ModelPolicy()


@dataclass(frozen=True)
class ResolvedModel:
    """
    What a model name refers to.

    Attributes:
        kind: `"bundled"`, `"folder"` or `"hub"`.
        display_name: the canonical name to show (`"bundled:latent"`, the folder as given, the Hub id).
        path: the local folder (bundled and folder kinds; `None` for a Hub id until `model_folder` downloads it).
        repo_id: the Hub id (hub kind).
    """

    kind: Literal["bundled", "folder", "hub"]
    display_name: str
    path: Path | None = None
    repo_id: str | None = None

    @property
    def bundled_kind(self) -> str | None:
        """`"latent"` / `"pixel"` for a bundled model (the `kind` of `load_default_pipeline`), else `None`."""
        return self.display_name.removeprefix(BUNDLED_PREFIX) if self.kind == "bundled" else None


def bundled_names() -> list[str]:
    """The canonical names of the bundled models, e.g. `['bundled:latent', 'bundled:pixel']`."""
    from .pretrained import DEFAULT_PIPELINES

    return [BUNDLED_PREFIX + kind for kind in sorted(DEFAULT_PIPELINES)]


def resolve_model(name: str, policy: ModelPolicy = CLI_POLICY) -> ResolvedModel:
    """
    Decides what `name` refers to (no download): a bundled model, an existing local folder or a Hub id, and whether
    `policy` allows it. Under `policy.allowed_dirs`, a relative name is looked up in each allowed directory, then in
    the working directory, and a folder counts only when its real path (symbolic links followed) lies inside an
    allowed directory; nothing outside them is looked at, so the answer does not tell what exists there.

    Raises:
        `ModelNotAllowedError`: `name` is a bundled model, folder or Hub id that `policy` does not allow.
        `ValueError`: `name` is none of them (the message names it and what is allowed).
    """
    from . import pretrained

    if not isinstance(name, str) or not name.strip() or "\x00" in name:
        raise ValueError(f"no model given (model={name!r}); give {policy.allowed()}.")
    name = name.strip()
    kind = name.removeprefix(BUNDLED_PREFIX)
    if kind in pretrained.DEFAULT_PIPELINES and (name != kind or policy.bundled_aliases):
        if not policy.allow_bundled:
            raise ModelNotAllowedError(f"the bundled model {name!r} is not allowed here; give {policy.allowed()}.")
        folder = Path(pretrained.PRETRAINED_DIR) / pretrained.DEFAULT_PIPELINES[kind][0]
        return ResolvedModel("bundled", BUNDLED_PREFIX + kind, path=folder)
    if name.startswith(BUNDLED_PREFIX):
        raise ValueError(f"{name!r} is not a bundled model; the bundled models are {bundled_names()}.")
    refused = False
    for candidate in _folder_candidates(name, policy):
        real = candidate.resolve()
        if not _folder_allowed(real, policy):
            refused = True
            continue
        if real.exists():
            if not real.is_dir():
                raise ValueError(f"{name!r} is a file, not a model folder; give {policy.allowed()}.")
            return ResolvedModel("folder", name, path=candidate if policy.allowed_dirs is None else real)
    looks_like_path = name.startswith(("/", ".", "~")) or "\\" in name
    if not looks_like_path and _HUB_ID.match(name):
        if not policy.allow_hub:
            raise ModelNotAllowedError(f"the Hub id {name!r} is not allowed here; give {policy.allowed()}.")
        return ResolvedModel("hub", name, repo_id=name)
    if refused and looks_like_path:
        raise ModelNotAllowedError(f"the folder {name!r} is not allowed here; give {policy.allowed()}.")
    raise ValueError(
        f"model {name!r} is neither a bundled model, an existing folder nor a Hub id 'owner/name'; "
        f"give {policy.allowed()}."
    )


def _folder_candidates(name: str, policy: ModelPolicy) -> list[Path]:
    path = Path(name).expanduser() if policy.expand_user else Path(name)
    if path.is_absolute() or policy.allowed_dirs is None:
        return [path]
    return [Path(d).expanduser() / path for d in policy.allowed_dirs] + [path]


def _folder_allowed(real: Path, policy: ModelPolicy) -> bool:
    if policy.allowed_dirs is None:
        return True
    return any(real.is_relative_to(Path(d).expanduser().resolve()) for d in policy.allowed_dirs)


def model_folder(
    model: ResolvedModel, policy: ModelPolicy = CLI_POLICY, *, api=None, cache_dir: str | os.PathLike | None = None
) -> Path:
    """
    The local folder of a resolved model: the bundled or given folder, or the Hub snapshot of the files matching
    `policy.hub_allow_patterns`. Under `policy.max_hub_bytes` (or `policy.pipeline_classes`), the Hub's file list is
    checked first (`HfApi.model_info(files_metadata=True)`, `HfApi.get_paths_info` for sizes it leaves out) and the
    snapshot is downloaded at the revision that was checked. With `HF_HUB_OFFLINE` set, only the local Hub cache is
    read (and its files are held to the cap).

    Args:
        api (`huggingface_hub.HfApi`, *optional*): the client to ask (a default one when not given).
        cache_dir (path, *optional*): the Hub cache (huggingface_hub's default when not given).

    Raises:
        `ValueError`: the Hub id cannot be fetched (offline and not cached, unknown id, no network, not a pipeline),
            naming it.
        `ModelNotAllowedError`: the repository's allowed files add up to more than `policy.max_hub_bytes`.
    """
    if model.kind != "hub":
        return Path(model.path)
    from huggingface_hub import HfApi, snapshot_download

    patterns = list(policy.hub_allow_patterns)
    if _hub_offline():
        try:
            folder = Path(
                snapshot_download(model.repo_id, allow_patterns=patterns, local_files_only=True, cache_dir=cache_dir)
            )
        except Exception:  # noqa: BLE001 - not in the cache, whichever way huggingface_hub says it
            raise ValueError(
                f"cannot load the Hub id {model.repo_id!r}: the Hub is offline here (HF_HUB_OFFLINE) and the model is "
                "not in the local Hub cache. Give a local folder or a bundled model, or download it first."
            ) from None
        if policy.max_hub_bytes is not None:
            files = [
                p for p in folder.rglob("*") if p.is_file() and _matches(p.relative_to(folder).as_posix(), policy)
            ]
            _check_size(model.repo_id, sum(p.stat().st_size for p in files), policy)
        return folder
    api = api or HfApi()
    revision = None
    if policy.max_hub_bytes is not None or policy.pipeline_classes is not None:
        revision = _checked_revision(model.repo_id, policy, api)
    try:
        return Path(
            api.snapshot_download(model.repo_id, revision=revision, allow_patterns=patterns, cache_dir=cache_dir)
        )
    except Exception as error:  # noqa: BLE001 - huggingface_hub raises many kinds; name the id and the cause
        raise ValueError(
            f"cannot download the Hub id {model.repo_id!r} ({type(error).__name__}: {error}); check the id and the "
            "network, or give a local folder."
        ) from None


def _hub_offline() -> bool:
    """`HF_HUB_OFFLINE` as huggingface_hub read it at import, or as set since (tests set it later)."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return bool(constants.HF_HUB_OFFLINE) or flag in ("1", "ON", "YES", "TRUE")


def _matches(filename: str, policy: ModelPolicy) -> bool:
    return any(fnmatch.fnmatch(filename, pattern) for pattern in policy.hub_allow_patterns)


def _checked_revision(repo_id: str, policy: ModelPolicy, api) -> str | None:
    """The commit of `repo_id` whose allowed files are a pipeline (when `policy.pipeline_classes` asks for one) and fit
    `policy.max_hub_bytes`, from the Hub's file list; nothing is downloaded."""
    try:
        info = api.model_info(repo_id, files_metadata=True)
    except Exception as error:  # noqa: BLE001
        raise ValueError(
            f"cannot read the file list of the Hub id {repo_id!r} ({type(error).__name__}: {error}); check the id "
            "(owner/name)."
        ) from None
    sizes = {s.rfilename: s.size for s in info.siblings or () if _matches(s.rfilename, policy)}
    if policy.pipeline_classes is not None and "model_index.json" not in sizes:
        raise ValueError(f"the Hub id {repo_id!r} is not a pipeline: it has no model_index.json.")
    if policy.max_hub_bytes is not None:
        unknown = [name for name, size in sizes.items() if size is None]
        if unknown:
            sizes.update(
                {p.path: getattr(p, "size", None) for p in api.get_paths_info(repo_id, unknown, revision=info.sha)}
            )
        if any(size is None for size in sizes.values()):
            raise ModelNotAllowedError(
                f"cannot tell the size of the files of the Hub id {repo_id!r}; it is not loaded."
            )
        _check_size(repo_id, sum(sizes.values()), policy)
    return info.sha


def _check_size(repo_id: str, size: int, policy: ModelPolicy) -> None:
    if size > policy.max_hub_bytes:
        raise ModelNotAllowedError(
            f"the Hub id {repo_id!r} holds {size / 1e6:.1f} MB of model files; at most "
            f"{policy.max_hub_bytes / 1e6:.1f} MB are allowed here."
        )


def load_pipeline(
    name: str | ResolvedModel,
    policy: ModelPolicy = CLI_POLICY,
    torch_dtype=None,
    device: str | None = None,
    *,
    api=None,
    cache_dir: str | os.PathLike | None = None,
):
    """
    The pipeline `name` refers to (`resolve_model`, or already resolved under `policy`; `model_folder` with `api` and
    `cache_dir`), loaded with the installed classes, safetensors only, after checking its files
    (`ddpm_plugin.pretrained.check_pipeline_folder`); a bundled model through `load_default_pipeline` (offline,
    checksums).

    Raises:
        `ValueError` / `ModelNotAllowedError`: as `resolve_model` and `model_folder`; also when the folder holds no
            pipeline, or a pipeline class that `policy.pipeline_classes` does not allow.
        `OSError`: a damaged file, named.
    """
    import json

    from .pretrained import load_default_pipeline, load_pipeline_folder

    model = name if isinstance(name, ResolvedModel) else resolve_model(name, policy)
    if model.kind == "bundled":
        return load_default_pipeline(model.bundled_kind, torch_dtype=torch_dtype, device=device)
    folder = model_folder(model, policy, api=api, cache_dir=cache_dir)
    index = folder / "model_index.json"
    if not index.is_file():
        raise ValueError(
            f"{model.display_name!r} is not a pipeline: it has no model_index.json (a pipeline folder is written by "
            "`pipeline.save_pretrained(...)`: model_index.json, unet/, scheduler/ and, for a latent model, vae/)."
        )
    if policy.pipeline_classes is not None:
        try:
            class_name = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
        except (ValueError, AttributeError) as error:
            raise OSError(f"the file {str(index)!r} is damaged: it is not a valid model index ({error}).") from None
        class_name = class_name[-1] if isinstance(class_name, list) else class_name
        if class_name not in policy.pipeline_classes:
            raise ModelNotAllowedError(
                f"{model.display_name!r} holds a {class_name!r} pipeline; allowed here: {list(policy.pipeline_classes)}."
            )
    return load_pipeline_folder(folder, torch_dtype=torch_dtype, device=device)

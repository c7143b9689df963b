# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""What a visitor of the app may load, and how it is kept: bundled models, Hub ids (pipeline files only, under a size
cap checked before downloading) and pipeline folders under the directories the operator allows; anything else gets
one message (`MODEL_UNAVAILABLE`) that says nothing about the server's files. `scrub_paths` takes server paths out of
any message a visitor sees; `PipelineLRU` keeps a bounded number of loaded pipelines.

The interface: `resolve_visitor_model(name, model_dirs, bundled)` -> `ModelSource` or `ModelNotAvailable`; for a Hub
source, `fetch_hub_pipeline(repo_id, max_bytes=...)` -> the local folder of its pipeline files. Nothing here imports
gradio.
"""

from __future__ import annotations

import fnmatch
import os
import re
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "HUB_PIPELINE_FILES",
    "MODEL_UNAVAILABLE",
    "ModelNotAvailable",
    "ModelSource",
    "PipelineLRU",
    "fetch_hub_pipeline",
    "resolve_visitor_model",
    "scrub_paths",
]

# the files a diffusers pipeline of this package needs: configs, weights (safetensors only), the model card
HUB_PIPELINE_FILES = ("*.json", "*.safetensors", "README.md")
MODEL_UNAVAILABLE = (
    "This model is not available here. Choose a bundled model, a Hugging Face Hub id of the form 'owner/name', "
    "or the name of a model folder this app offers."
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
# an absolute POSIX or Windows path of two or more parts (not a Hub id "owner/name", not inside a URL)
_SERVER_PATH = re.compile(r"(?<![\w.:/\\-])(?:[A-Za-z]:)?[/\\](?:[^\s'\"`()<>,;/\\]+[/\\])+([^\s'\"`()<>,;/\\]*)")


class ModelNotAvailable(ValueError):
    """The visitor's model is not one this app may load; the message is always `MODEL_UNAVAILABLE`."""

    def __init__(self):
        super().__init__(MODEL_UNAVAILABLE)


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: `kind` "bundled" (its name), "folder" (its real path) or "hub" (its repo id)."""

    kind: Literal["bundled", "folder", "hub"]
    location: str

    @property
    def key(self) -> str:
        """The cache key: a folder by its real path, anything else by its name."""
        return self.location


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def _pipeline_folder(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "model_index.json"))


def resolve_visitor_model(name: str, model_dirs: Sequence[str] = (), bundled: Collection[str] = ()) -> ModelSource:
    """
    What a visitor's model string names: a bundled model, a pipeline folder under one of `model_dirs` (given by its
    name relative to that directory, or by its full path; symbolic links may not leave the directory), or a Hub id.
    Nothing is expanded (`~` is not a home directory) and nothing outside `model_dirs` is looked at.

    Raises:
        `ModelNotAvailable` (one message for every case) when it is none of these.
    """
    name = (name or "").strip() if isinstance(name, str) else ""
    if name in bundled:
        return ModelSource("bundled", name)
    if not name or "\x00" in name or name.startswith("~"):
        raise ModelNotAvailable()
    roots = [os.path.realpath(d) for d in model_dirs]
    candidates = [name] if os.path.isabs(name) else [os.path.join(root, name) for root in roots]
    for candidate in candidates:
        real = os.path.realpath(candidate)
        if any(_inside(real, root) for root in roots) and _pipeline_folder(real):
            return ModelSource("folder", real)
    if not os.path.isabs(name) and _HUB_ID.match(name) and ".." not in name:
        return ModelSource("hub", name)
    raise ModelNotAvailable()


def scrub_paths(text: str) -> str:
    """`text` with every absolute path of two or more parts replaced by `…/` and its last part."""
    return _SERVER_PATH.sub(lambda m: "…/" + m.group(1), text)


def _is_pipeline_file(filename: str) -> bool:
    return any(fnmatch.fnmatch(filename, pattern) for pattern in HUB_PIPELINE_FILES)


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return constants.is_offline_mode()


def fetch_hub_pipeline(
    repo_id: str,
    *,
    max_bytes: int,
    api: Any = None,
    cache_dir: str | None = None,
    offline: bool | None = None,
) -> Path:
    """
    The local folder of a Hub pipeline's files (`HUB_PIPELINE_FILES` only): from the local cache when it is there,
    else, unless the Hub is offline, downloaded at the revision whose file sizes were checked against `max_bytes`
    (`HfApi.model_info(files_metadata=True)`, `get_paths_info` for sizes it leaves out).

    Raises:
        `ValueError` naming the repo id and what is wrong (offline, not found, too large), without server paths.
    """
    from huggingface_hub import HfApi, snapshot_download

    try:
        return Path(
            snapshot_download(
                repo_id, allow_patterns=list(HUB_PIPELINE_FILES), local_files_only=True, cache_dir=cache_dir
            )
        )
    except Exception:
        pass
    if _hub_offline() if offline is None else offline:
        raise ValueError(
            f"Cannot load the Hub id {repo_id!r}: the Hugging Face Hub is offline here and the model is not in the "
            "app's cache. Choose a bundled model."
        )
    api = api or HfApi()
    try:
        info = api.model_info(repo_id, files_metadata=True)
    except Exception as err:
        raise ValueError(
            f"Cannot find the Hub model {repo_id!r} ({type(err).__name__}); check the id (owner/name)."
        ) from None
    files = {s.rfilename: s.size for s in info.siblings or () if _is_pipeline_file(s.rfilename)}
    if "model_index.json" not in files:
        raise ValueError(f"The Hub repository {repo_id!r} is not a diffusers pipeline (it has no model_index.json).")
    unknown = [name for name, size in files.items() if size is None]
    if unknown:
        files.update(
            {p.path: getattr(p, "size", None) for p in api.get_paths_info(repo_id, unknown, revision=info.sha)}
        )
    if any(size is None for size in files.values()):
        raise ValueError(f"Cannot tell the size of the Hub model {repo_id!r}'s files; it is not loaded.")
    total = sum(files.values())
    if total > max_bytes:
        raise ValueError(
            f"The Hub model {repo_id!r} has {total / 1e6:,.1f} MB of pipeline files; this app loads at most "
            f"{max_bytes / 1e6:,.0f} MB."
        )
    try:
        folder = api.snapshot_download(
            repo_id, revision=info.sha, allow_patterns=list(HUB_PIPELINE_FILES), cache_dir=cache_dir
        )
    except Exception as err:
        raise ValueError(f"Cannot download the Hub model {repo_id!r} ({type(err).__name__}).") from None
    return Path(folder)


class PipelineLRU:
    """
    Loaded pipelines by key, at most `max_size` of them (the least recently used is dropped first); thread-safe, and
    two visitors asking for the same model at once load it once. `load_counts` counts the loads per key.
    """

    def __init__(self, max_size: int):
        self.max_size = max_size
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self.load_counts: Counter[str] = Counter()

    def _hit(self, key: str):
        self._items.move_to_end(key)
        return self._items[key]

    def get(self, key: str, load: Callable[[], Any]):
        """The item for `key`, made by `load()` when it is not kept."""
        with self._lock:
            if key in self._items:
                return self._hit(key)
            key_lock = self._locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._items:
                    return self._hit(key)
            item = load()
            with self._lock:
                self._items[key] = item
                self.load_counts[key] += 1
                while len(self._items) > self.max_size:
                    old, _ = self._items.popitem(last=False)
                    self._locks.pop(old, None)
        return item

    def keys(self) -> list[str]:
        """The kept keys, least recently used first."""
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

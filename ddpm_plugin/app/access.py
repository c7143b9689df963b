# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""What a visitor of the app may load, in the app's words: `visitor_policy` turns the operator's settings into the
library's `ddpm_plugin.resolve.ModelPolicy` (bundled models, Hub ids with pipeline files only under a size cap checked
before downloading, pipeline folders under the directories the operator allows), and `resolve_visitor_model` answers
every name that policy refuses with one message (`MODEL_UNAVAILABLE`) that says nothing about the server's files.
`scrub_paths` takes server paths out of any message a visitor sees; `PipelineLRU` keeps a bounded number of loaded
pipelines. Nothing here imports gradio.
"""

from __future__ import annotations

import re
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any

from ..pretrained import PIPELINE_CLASSES
from ..resolve import ModelPolicy, ResolvedModel, resolve_model
from .limits import AppSettings

__all__ = [
    "MODEL_UNAVAILABLE",
    "ModelNotAvailable",
    "PipelineLRU",
    "resolve_visitor_model",
    "scrub_paths",
    "visitor_policy",
]

MODEL_UNAVAILABLE = (
    "This model is not available here. Choose a bundled model, a Hugging Face Hub id of the form 'owner/name', "
    "or the name of a model folder this app offers."
)
# an absolute POSIX or Windows path of two or more parts (not a Hub id "owner/name", not inside a URL)
_SERVER_PATH = re.compile(r"(?<![\w.:/\\-])(?:[A-Za-z]:)?[/\\](?:[^\s'\"`()<>,;/\\]+[/\\])+([^\s'\"`()<>,;/\\]*)")


class ModelNotAvailable(ValueError):
    """The visitor's model is not one this app may load; the message is always `MODEL_UNAVAILABLE`."""

    def __init__(self):
        super().__init__(MODEL_UNAVAILABLE)


def visitor_policy(settings: AppSettings) -> ModelPolicy:
    """
    What a visitor may load under `settings`: the bundled models (`"bundled:..."` only, so that an allowed folder may
    be called `pixel`), pixel and latent DDPM pipelines from Hub ids (at most `settings.max_model_mb` of pipeline
    files) and from folders inside `settings.model_dirs`; `~` is never a home directory.
    """
    return ModelPolicy(
        allow_bundled=True,
        allow_hub=True,
        allowed_dirs=tuple(settings.model_dirs),
        max_hub_bytes=int(settings.max_model_mb * 1e6),
        pipeline_classes=PIPELINE_CLASSES,
        bundled_aliases=False,
        expand_user=False,
    )


def resolve_visitor_model(name: str, policy: ModelPolicy) -> ResolvedModel:
    """
    `ddpm_plugin.resolve.resolve_model` under the visitor's `policy`; a folder comes back by its real path.

    Raises:
        `ModelNotAvailable` (one message for every case) when `policy` does not allow `name` or it names nothing.
    """
    try:
        return resolve_model(name, policy)
    except ValueError:
        raise ModelNotAvailable() from None


def scrub_paths(text: str) -> str:
    """`text` with every absolute path of two or more parts replaced by `…/` and its last part."""
    return _SERVER_PATH.sub(lambda m: "…/" + m.group(1), text)


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

"""Atomic training checkpoints.

A checkpoint is written into a hidden temporary folder (`.tmp-checkpoint-<step>`), every file is fsynced, a marker file
`checkpoint_complete.json` is written last, and only then is the folder renamed to `checkpoint-<step>` (`os.replace`,
atomic on POSIX). `latest` is the complete checkpoint (marker present) with the highest step, so a run killed at any
moment of a save resumes from the last complete checkpoint; leftovers of interrupted saves are removed on the next
save or resume.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from pathlib import Path

__all__ = [
    "CHECKPOINT_MARKER",
    "CheckpointError",
    "fsync_tree",
    "list_checkpoints",
    "prune_checkpoints",
    "read_marker",
    "remove_incomplete",
    "resolve_checkpoint",
    "save_checkpoint_atomic",
]

CHECKPOINT_MARKER = "checkpoint_complete.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")
_TMP_PREFIX = ".tmp-checkpoint-"
_TRASH_PREFIX = ".trash-checkpoint-"
# hidden test hook: SIGKILL this process inside the save of this step, after part of the files are written
DEBUG_KILL_ENV = "DDPM_TRAIN_DEBUG_KILL_IN_SAVE"


class CheckpointError(ValueError):
    """A checkpoint path that does not exist or is not a complete checkpoint."""


def _fsync_path(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: str | os.PathLike) -> None:
    """fsyncs every file and folder under `folder` (then `folder` itself)."""
    for root, dirs, files in os.walk(folder):
        for name in files:
            _fsync_path(os.path.join(root, name))
        for name in dirs:
            _fsync_path(os.path.join(root, name))
    _fsync_path(folder)


def read_marker(checkpoint: str | os.PathLike) -> dict | None:
    """The content of the completion marker of `checkpoint`, or None when it is absent or unreadable."""
    try:
        with open(os.path.join(checkpoint, CHECKPOINT_MARKER), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def list_checkpoints(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints under `root` as `(step, path)`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _NAME.match(child.name)
        if match and child.is_dir() and read_marker(child) is not None:
            found.append((int(match.group(1)), child))
    return sorted(found)


def resolve_checkpoint(resume: str, root: str | os.PathLike) -> Path | None:
    """
    `resume="latest"` -> the newest complete checkpoint under `root` (None when there is none yet: a fresh start);
    otherwise `resume` is a checkpoint folder, which must exist and be complete.
    """
    if resume == "latest":
        checkpoints = list_checkpoints(root)
        return checkpoints[-1][1] if checkpoints else None
    path = Path(resume)
    if not path.is_dir():
        raise CheckpointError(
            f"resume={resume!r}: no such checkpoint folder (use 'latest' or a checkpoint-<step> path)."
        )
    if read_marker(path) is None:
        raise CheckpointError(
            f"resume={resume!r} is not a complete checkpoint (no {CHECKPOINT_MARKER}: the save was interrupted); "
            f"use 'latest' to pick the newest complete one."
        )
    return path


def remove_incomplete(root: str | os.PathLike) -> None:
    """Removes leftovers of interrupted saves and deletions (hidden temporary folders) under `root`."""
    root = Path(root)
    if not root.is_dir():
        return
    for child in root.iterdir():
        if child.name.startswith((_TMP_PREFIX, _TRASH_PREFIX)):
            shutil.rmtree(child, ignore_errors=True)


def _atomic_delete(path: Path) -> None:
    """Renames first (atomic), so a half-deleted folder is never taken for a checkpoint, then deletes."""
    trash = path.with_name(_TRASH_PREFIX + path.name)
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def prune_checkpoints(root: str | os.PathLike, total_limit: int | None) -> None:
    """Keeps the newest `total_limit` complete checkpoints under `root` (all when None)."""
    if total_limit is None:
        return
    checkpoints = list_checkpoints(root)
    for _, path in checkpoints[: max(0, len(checkpoints) - total_limit)]:
        _atomic_delete(path)


def save_checkpoint_atomic(accelerator, root: str | os.PathLike, step: int, write_extra, marker: dict) -> Path:
    """
    Writes checkpoint `root/checkpoint-<step>` atomically; called on every process.

    Args:
        accelerator (`accelerate.Accelerator`): `save_state` stores models, optimizers, LR schedulers, RNG states,
            the dataloader sampler and the registered objects (the EMA).
        root (`str` or `os.PathLike`): the checkpoints folder.
        step (`int`): the global optimizer step.
        write_extra (`Callable[[Path], None]`): writes each process's own extra files into the temporary folder.
        marker (`dict`): JSON content of the completion marker (written last, by the main process).

    Returns:
        `Path` of the complete checkpoint.
    """
    root = Path(root)
    final = root / f"checkpoint-{step}"
    tmp = root / f"{_TMP_PREFIX}{step}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    write_extra(tmp)
    if os.environ.get(DEBUG_KILL_ENV) == str(step) and accelerator.is_main_process:
        os.kill(os.getpid(), signal.SIGKILL)  # test hook: die with part of the checkpoint written
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        fsync_tree(tmp)
        with open(tmp / CHECKPOINT_MARKER, "w", encoding="utf-8") as f:
            json.dump(marker, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        _fsync_path(tmp)
        if final.exists():  # a re-save of the same step (e.g. the final save right after a periodic one)
            _atomic_delete(final)
        os.replace(tmp, final)
        _fsync_path(root)
    accelerator.wait_for_everyone()
    return final

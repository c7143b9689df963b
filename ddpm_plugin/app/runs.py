# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""Per-run pipeline copies that let several visitors sample at once, and stopping a run between steps."""

from __future__ import annotations

import copy
import threading

__all__ = ["RunRegistry", "make_run_pipeline", "stop_callback"]


def make_run_pipeline(pipe, scheduler):
    """A shallow copy of `pipe` sharing its modules (read-only) but with its own `scheduler` and interrupt flag."""
    run = copy.copy(pipe)
    run.scheduler = scheduler  # DiffusionPipeline.__setattr__ re-registers the config of the copy only
    run._interrupt = False
    run._stop_requested = False
    return run


def stop_callback(pipe, step: int, timestep, callback_kwargs: dict) -> dict:
    """`callback_on_step_end` that turns a Stop request (`RunRegistry.stop`) into an interrupt at the next step, also
    when it came before the pipeline's loop started (the loop clears `_interrupt` when it starts)."""
    if getattr(pipe, "_stop_requested", False):
        pipe._interrupt = True
    return callback_kwargs


class RunRegistry:
    """The pipelines running for each browser session (or API client), so that a Stop request reaches them."""

    def __init__(self):
        self._runs: dict[str, set] = {}
        self._lock = threading.Lock()

    def add(self, session: str, run) -> None:
        with self._lock:
            self._runs.setdefault(session, set()).add(run)

    def remove(self, session: str, run) -> None:
        with self._lock:
            runs = self._runs.get(session)
            if runs is not None:
                runs.discard(run)
                if not runs:
                    del self._runs[session]

    def stop(self, session: str) -> int:
        """Asks every run of `session` to stop at its next step; returns how many were running."""
        with self._lock:
            runs = list(self._runs.get(session, ()))
        for run in runs:
            run._stop_requested = True
            run._interrupt = True
        return len(runs)

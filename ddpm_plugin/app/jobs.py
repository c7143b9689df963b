# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""Jobs of the app that end on time: each run (sampling, likelihood) is a `Job` with a deadline, a Stop flag and a
check that its client is still there, and the library's loops look at it at every step.

A sampling pipeline sees the job through `callback_on_step_end` (an interrupt at the next step, the images made so far
are kept); the likelihood through its model, wrapped by `checked_model` so that a call past the deadline, after Stop or
after the client left raises `JobStopped`. Nothing here imports gradio.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["Job", "JobRegistry", "JobStopped", "checked_model"]


class JobStopped(ValueError):
    """A job ended early: Stop, its time limit, or its client left; the message says which."""


class Job:
    """One run of one session: `reason()` says why it should stop now (None: keep going)."""

    def __init__(self, session: str, max_seconds: float, client_alive: Callable[[], bool] | None = None):
        self.session = session
        self.max_seconds = max_seconds
        self.deadline = time.monotonic() + max_seconds
        self.stop_requested = False
        self._client_alive = client_alive or (lambda: True)

    def reason(self) -> str | None:
        if self.stop_requested:
            return "stop"
        if time.monotonic() > self.deadline:
            return "time"
        if not self._client_alive():
            return "gone"
        return None

    def describe(self, reason: str) -> str:
        return {
            "stop": "Stopped",
            "time": f"Stopped by the time limit of {self.max_seconds:g} s",
            "gone": "Stopped: the client left",
        }[reason]

    def check(self, what: str = "The job") -> None:
        """Raises `JobStopped` naming the reason when the job should stop."""
        reason = self.reason()
        if reason == "time":
            raise JobStopped(
                f"{what} ran past the time limit of {self.max_seconds:g} s; ask for less work (fewer images or steps)."
            )
        if reason is not None:
            raise JobStopped(f"{what} was stopped ({'Stop was pressed' if reason == 'stop' else 'the client left'}).")

    def step_callback(self, pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        """`callback_on_step_end` of a pipeline: an interrupt at the next step once the job should stop."""
        if self.reason() is not None:
            pipe._interrupt = True
        return callback_kwargs


class JobRegistry:
    """The jobs running for each session, so that Stop reaches them (and only them)."""

    def __init__(self):
        self._jobs: dict[str, set[Job]] = {}
        self._lock = threading.Lock()

    @contextmanager
    def start(self, session: str, max_seconds: float, client_alive: Callable[[], bool] | None = None) -> Iterator[Job]:
        job = Job(session, max_seconds, client_alive)
        with self._lock:
            self._jobs.setdefault(session, set()).add(job)
        try:
            yield job
        finally:
            with self._lock:
                jobs = self._jobs.get(session, set())
                jobs.discard(job)
                if not jobs:
                    self._jobs.pop(session, None)

    def stop(self, session: str) -> int:
        """Asks every job of `session` to stop; returns how many were running."""
        with self._lock:
            jobs = list(self._jobs.get(session, ()))
        for job in jobs:
            job.stop_requested = True
        return len(jobs)

    def running(self) -> int:
        with self._lock:
            return sum(len(jobs) for jobs in self._jobs.values())


class _CheckedModel:
    def __init__(self, model, job: Job, what: str):
        self.model, self.job, self.what = model, job, what

    def __call__(self, *args, **kwargs):
        self.job.check(self.what)
        return self.model(*args, **kwargs)

    def parameters(self):  # the likelihood places its tensors by the model's parameters
        return self.model.parameters()


def checked_model(model, job: Job, what: str = "The job"):
    """`model` (called as `model(x_t, t)`) that checks `job` before every call."""
    return _CheckedModel(model, job, what)

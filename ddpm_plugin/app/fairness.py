# Copyright 2026 The ddpm_plugin authors. Apache-2.0.
"""A queue no visitor can fill alone: limits on what one session may have queued or running, per concurrency group,
checked when a job joins Gradio's queue; the cheap endpoints named `exempt` (Stop) always get in.

`limit_queue` wraps the `push` of a `gradio.queueing.Queue` (the object behind `Blocks.queue()`; Gradio 6 has no
per-session limit of its own), and `client_alive` reads its record of a session's connection. Both use attributes of
that object that Gradio does not document (`push`, `event_ids_to_events`, `active_jobs`); the app's tests exercise
them, so a Gradio upgrade that changes them fails there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping

__all__ = ["client_alive", "limit_queue"]


def limit_queue(
    queue,
    *,
    max_size: int,
    per_session: Mapping[str, int],
    exempt: Collection[str] = (),
    grace_seconds: float = 1.0,
) -> None:
    """
    Limits `queue` (a `gradio.queueing.Queue`): at most `max_size` jobs queued or running in all, and at most
    `per_session[group]` of one session in concurrency group `group` (groups not named are not limited per session).
    Functions whose `api_name` is in `exempt`, and functions outside the queue (`queue=False`), always get in.

    A job just finished may still be counted for a moment after its client got the result, so a session at its
    limit is re-checked for `grace_seconds` before it is turned away.
    """
    push = queue.push
    lock = asyncio.Lock()

    def count(session: str | None, group: str | None = None) -> int:
        return sum(
            1
            for event in list(queue.event_ids_to_events.values())
            if event.fn.api_name not in exempt
            and event.fn.queue
            and (session is None or event.session_hash == session)
            and (group is None or event.concurrency_id == group)
        )

    async def limited_push(body, request, username):
        fn = queue.blocks.fns.get(body.fn_index) if body.fn_index is not None else None
        if fn is None or fn.api_name in exempt or not fn.queue:
            return await push(body, request, username)
        limit = per_session.get(fn.concurrency_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_seconds
        while True:
            async with lock:  # the count and the push at once: two joins of one session cannot both slip in
                if limit is None or count(body.session_hash, fn.concurrency_id) < limit:
                    if count(None) >= max_size:
                        return (
                            False,
                            f"The app is busy ({max_size} jobs queued or running); try again soon.",
                            "queue_full",
                        )
                    return await push(body, request, username)
            if loop.time() >= deadline:
                what = "a job" if limit == 1 else f"{limit} jobs"
                message = f"You already have {what} of this kind queued or running; wait for it or press Stop."
                return False, message, "queue_full"
            await asyncio.sleep(0.05)

    queue.max_size = None
    queue.push = limited_push


def client_alive(request) -> bool:
    """False once Gradio has seen the client of `request` (a `gr.Request`) disconnect while its job runs."""
    try:
        queue = request.request.app.get_blocks()._queue
        session = request.session_hash
        for jobs in list(queue.active_jobs):
            for event in jobs or ():
                if event.session_hash == session and not event.alive:
                    return False
    except (AttributeError, TypeError, RuntimeError):
        return True
    return True

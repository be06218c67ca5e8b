"""Gradio's queue looks for work every 1 ms on Linux and macOS (every 50 ms on Windows) and for progress to send every
10 ms, also while nothing is queued: an idle server woke ~1 100 times a second and used ~5% of a core (measured on
2 cores), and every wake-up takes the GIL from a running generation. Here the idle queue looks every 50 ms and
progress every 100 ms (Gradio's Windows values); a pushed event switches back to Gradio's own speed for a second,
so the events a click chains follow each other as quickly as before. The first event after a quiet second waits at
most 50 ms."""
from __future__ import annotations

import asyncio
import time

IDLE_POLL_S = 0.05  # how often a queue with nothing to do looks for work
PROGRESS_POLL_S = 0.1  # how often it looks for gr.Progress updates to send
BUSY_FOR_S = 1.0  # how long after an event's arrival the queue keeps Gradio's own polling speed


def calm_when_idle(demo) -> None:
    """Slow the idle polling of ``demo``'s queue; leaves a Gradio without these attributes as it is."""
    queue = getattr(demo, "_queue", None)
    push = getattr(queue, "push", None)
    busy_poll = getattr(queue, "sleep_when_free", None)
    progress_poll = getattr(queue, "progress_update_sleep_when_free", None)
    if push is None or not all(isinstance(v, (int, float)) for v in (busy_poll, progress_poll)):
        return
    idle_poll = max(busy_poll, IDLE_POLL_S)
    queue.progress_update_sleep_when_free = max(progress_poll, PROGRESS_POLL_S)
    queue.sleep_when_free = idle_poll
    last_push = [0.0]

    def calm_again() -> None:
        if time.monotonic() - last_push[0] >= BUSY_FOR_S * 0.99:
            queue.sleep_when_free = idle_poll

    async def push_and_poll_quickly(*args, **kwargs):
        last_push[0] = time.monotonic()
        queue.sleep_when_free = busy_poll
        asyncio.get_running_loop().call_later(BUSY_FOR_S, calm_again)
        return await push(*args, **kwargs)

    queue.push = push_and_poll_quickly

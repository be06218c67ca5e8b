"""A1111's `modules.call_queue`: extensions wrap their GPU work so it waits its turn behind generations."""
from __future__ import annotations

import functools
import html
import threading
import time
import traceback
from contextlib import contextmanager

from modules.a1111 import errors


class _QueueLock:
    """`queue_lock`: the engine's job queue turn (so an extension's work never runs beside a generation)."""

    def __init__(self):
        self._fallback = threading.RLock()
        self._turns = threading.local()

    def _queue(self):
        from modules import shared

        return shared.engine.queue if shared.engine is not None else None

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        queue = self._queue()
        if queue is None:
            return self._fallback.acquire(blocking, timeout)
        turn = queue.turn()
        turn.__enter__()
        self._turns.__dict__.setdefault("stack", []).append(turn)
        return True

    def release(self) -> None:
        stack = self._turns.__dict__.get("stack")
        if stack:
            stack.pop().__exit__(None, None, None)
        else:
            self._fallback.release()

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
        return False


queue_lock = _QueueLock()


def wrap_queued_call(func):
    @functools.wraps(func)
    def f(*args, **kwargs):
        with queue_lock:
            return func(*args, **kwargs)
    return f


@contextmanager
def _job(name: str):
    from modules import shared

    state = shared.state
    if state is not None:
        state.begin(name)
    try:
        yield
    finally:
        if state is not None:
            state.end()


def wrap_gradio_gpu_call(func, extra_outputs=None):
    """Run `func` in the job queue as one job (progress/interrupt work); errors become the UI's error outputs."""
    name = getattr(func, "__name__", "job")

    @functools.wraps(func)
    def f(*args, **kwargs):
        with queue_lock, _job(name):
            return func(*args, **kwargs)

    return wrap_gradio_call(f, extra_outputs=extra_outputs, add_stats=True)


def wrap_gradio_call(func, extra_outputs=None, add_stats=False):
    """A1111: exceptions are reported and turned into outputs (extra_outputs + an error html) instead of raising."""

    @functools.wraps(func)
    def f(*args, **kwargs):
        started = time.perf_counter()
        try:
            result = func(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - shown in the UI like A1111, never kills the server
            errors.report(f"Error completing request: {e}", exc_info=True)
            outputs = list(extra_outputs) if extra_outputs is not None else [None, ""]
            message = f"<div class='error'>{html.escape(type(e).__name__)}: {html.escape(str(e))}</div>"
            return tuple(outputs + [message])
        if add_stats and isinstance(result, (tuple, list)) and result and isinstance(result[-1], str):
            elapsed = time.perf_counter() - started
            result = tuple(list(result[:-1]) + [result[-1] + f"<p class='sd-time'>Time taken: {elapsed:.2f} s</p>"])
        return result

    return f


def wrap_gradio_call_no_job(func, extra_outputs=None, add_stats=False):
    return wrap_gradio_call(func, extra_outputs, add_stats)


def format_traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))

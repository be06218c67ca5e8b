"""A process's start-up without the cyclic garbage collector's passes, then its long-lived objects out of sight.

Importing torch, diffusers and gradio and building the engine and UI makes hundreds of thousands of objects that
live as long as the process. Each time the heap grows by a quarter the collector walks all of it again: 11 full
passes, 1.6 CPU-s of an 8 s server start on 2 cores, 0.8 s of a 6.5 s CLI run. `long_lived()` turns the collector
off while the block runs; when it ends, one pass frees the block's garbage and what remains is frozen
(`gc.freeze`), so later passes (the model manager's after a checkpoint switch, the automatic ones during jobs)
look only at what came after it. Use it before any model is loaded: a frozen object is never collected.
"""
from __future__ import annotations

import contextlib
import gc
from typing import Iterator


@contextlib.contextmanager
def long_lived() -> Iterator[None]:
    """The block runs with the collector off; on success its garbage is freed and the survivors frozen. On an
    error only the collector is turned back on (where it was on)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    except BaseException:
        if was_enabled:
            gc.enable()
        raise
    gc.collect()
    gc.freeze()
    if was_enabled:
        gc.enable()

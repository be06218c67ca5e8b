"""The collector told to look only at what a test makes."""
from __future__ import annotations

import contextlib
import gc


@contextlib.contextmanager
def gc_frozen():
    """The objects that exist now (torch's, diffusers', pytest's: most of a test process) are moved out of the
    collector's sight, so each `gc.collect()` (the model manager's on every model it drops) looks only at what came
    after: ~0.02 s instead of ~0.3 s. Models made after this are freed as before; a frozen object can only keep
    garbage alive (a failure), never free anything."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()

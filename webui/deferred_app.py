"""One Gradio app per page instead of four.

While a page is built, Gradio makes a whole FastAPI app (~85 routes, each with its pydantic body model, and the page
config over every block) in `Blocks.__init__` (its queue() call), in each later `queue()` and on leaving each
`with gr.Blocks()` — extensions' own tab Blocks included. Only the app `gr.mount_gradio_app` makes is ever served,
so inside `app_made_at_mount()` those throwaway apps are not made (`blocks.app` stays None until the mount): a
page build costs ~0.7 CPU-s less (measured on the 2-core machine: 2.3 → 1.6 s), which is start-up time.
"""
from __future__ import annotations

import contextlib
import contextvars

from gradio.routes import App

_DEFERRED = contextvars.ContextVar("gradio_app_made_at_mount", default=False)
_make_app = App.create_app


def _create_app(blocks, *args, **kwargs):
    if _DEFERRED.get():
        return None
    return _make_app(blocks, *args, **kwargs)


@contextlib.contextmanager
def app_made_at_mount():
    """Within: Blocks are built without the app Gradio would make for each (this thread/task only)."""
    if App.create_app is not _create_app:
        App.create_app = staticmethod(_create_app)
    token = _DEFERRED.set(True)
    try:
        yield
    finally:
        _DEFERRED.reset(token)

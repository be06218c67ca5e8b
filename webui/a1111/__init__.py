"""UI-side rows of the A1111 compatibility table (modules/a1111/__init__.py): modules extensions import that need
gradio. `install()` makes them importable and adds the UI functions to the engine-side shims."""
from __future__ import annotations

_installed = False


def install() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    from modules import a1111, infotext_utils
    from webui.a1111 import ui

    a1111.enable_ui_modules()
    for name in ("create_buttons", "bind_buttons", "connect_paste_params_buttons"):
        setattr(infotext_utils, name, getattr(ui, name))

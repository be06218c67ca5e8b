"""The engine the shims work over (bound at start-up by modules/shared.py)."""
from __future__ import annotations


def engine():
    from modules import shared

    if shared.engine is None:
        raise RuntimeError("the web UI has not started its engine yet (A1111 names are usable once it has)")
    return shared.engine


def engine_or_none():
    from modules import shared

    return shared.engine

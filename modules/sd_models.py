"""Compatibility shim: A1111's `modules.sd_models` names extensions read (`checkpoints_list`,
`checkpoint_aliases`, `select_checkpoint`, `model_hash`), over the engine bound in modules/shared.py."""
from __future__ import annotations

from modules import shared


def _registry():
    if shared.engine is None:
        raise RuntimeError("no engine is bound yet")
    return shared.engine.registry


def __getattr__(name: str):
    if name in ("checkpoints_list", "checkpoint_aliases"):
        registry = _registry()
        return {title: registry.get(title) for title in registry.titles()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def checkpoint_tiles(use_short=False) -> list[str]:
    return _registry().titles()


def list_models() -> None:
    _registry().refresh()


def get_closet_checkpoint_match(search_string: str):
    registry = _registry()
    return registry.get(search_string)


def select_checkpoint():
    engine = shared.engine
    return engine.models.resolve() if engine is not None else None


def reload_model_weights(sd_model=None, info=None):
    engine = shared.engine
    title = getattr(info, "title", None)
    return engine.models.select(title) if title else engine.models.get()

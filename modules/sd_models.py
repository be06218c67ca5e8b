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
        from modules.a1111.sd_model import CheckpointInfoView

        registry = _registry()
        infos = {title: CheckpointInfoView(registry.get(title)) for title in registry.titles()}
        if name == "checkpoint_aliases":
            infos.update({alias: info for info in list(infos.values()) for alias in info.ids})
        return infos
    from modules import a1111

    return a1111.names_from(__name__)(name)


def checkpoint_tiles(use_short=False) -> list[str]:
    return _registry().titles()


def list_models() -> None:
    _registry().refresh()


def get_closet_checkpoint_match(search_string: str):
    from modules.a1111.sd_model import CheckpointInfoView

    info = _registry().get(search_string)
    return CheckpointInfoView(info) if info is not None else None


def select_checkpoint():
    from modules.a1111.sd_model import CheckpointInfoView

    engine = shared.engine
    return CheckpointInfoView(engine.models.resolve()) if engine is not None else None


def reload_model_weights(sd_model=None, info=None, forced_reload=False):
    """Switch to `info`'s checkpoint (made the configured one, as A1111) or reload the current one."""
    from modules.a1111.sd_model import view

    engine = shared.engine
    title = getattr(info, "title", None)
    if forced_reload and not title:
        return view(engine.models.reload())
    return view(engine.models.select(title) if title else engine.models.get())

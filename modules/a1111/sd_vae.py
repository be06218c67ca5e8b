"""A1111's `modules.sd_vae`: the VAE list (`vae_dict`: file name → path) and the choice (`sd_vae` option)."""
from __future__ import annotations

from modules.a1111._engine import engine, engine_or_none

unspecified = object()
vae_ignore_keys = {"model_ema.decay", "model_ema.num_updates"}
base_vae = None
checkpoint_info = None


def _vaes():
    from modules.models.registry import list_vaes

    e = engine_or_none()
    return list_vaes(e.paths) if e is not None else []


def refresh_vae_list() -> None:
    vae_dict.clear()
    vae_dict.update({v.name: str(v.filename) for v in _vaes()})


class _VaeDict(dict):
    """Filled on first read, refreshed by `refresh_vae_list()` (A1111 keeps a module-level dict)."""

    def _fill(self):
        if not dict.__len__(self) and engine_or_none() is not None:
            dict.update(self, {v.name: str(v.filename) for v in _vaes()})

    def __getitem__(self, key):
        self._fill()
        return dict.__getitem__(self, key)

    def __iter__(self):
        self._fill()
        return dict.__iter__(self)

    def __len__(self):
        self._fill()
        return dict.__len__(self)

    def __contains__(self, key):
        self._fill()
        return dict.__contains__(self, key)

    def get(self, key, default=None):
        self._fill()
        return dict.get(self, key, default)

    def items(self):
        self._fill()
        return dict.items(self)

    def keys(self):
        self._fill()
        return dict.keys(self)

    def values(self):
        self._fill()
        return dict.values(self)


vae_dict: dict[str, str] = _VaeDict()


def get_filename(filepath) -> str:
    from pathlib import Path

    return Path(filepath).name


def find_vae_near_checkpoint(checkpoint_file):
    from pathlib import Path

    stem = Path(str(checkpoint_file)).name.rsplit(".", 1)[0]
    for name, path in vae_dict.items():
        if name.startswith(stem):
            return path
    return None


def _loaded_name():
    model = engine().models.current
    return getattr(model, "vae_name", None) if model is not None else None


def __getattr__(name):
    if name == "loaded_vae_file":
        vae = _loaded_name()
        return vae_dict.get(vae) if vae else None
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def resolve_vae(checkpoint_file):
    choice = engine().settings.get("sd_vae", "Automatic")
    return vae_dict.get(choice) if choice not in ("Automatic", "None") else find_vae_near_checkpoint(checkpoint_file)


def reload_vae_weights(sd_model=None, vae_file=unspecified):
    """Choose a VAE file (path or name; None = the checkpoint's own) and apply it to the loaded model."""
    from pathlib import Path

    e = engine()
    if vae_file is not unspecified:
        e.settings.set("sd_vae", "None" if vae_file is None else Path(str(vae_file)).name)
    model = e.models.get()
    return model


def load_vae(model, vae_file=None, vae_source="from unknown source"):
    return reload_vae_weights(model, vae_file)


def delete_base_vae() -> None:
    """A1111 keeps a copy of the checkpoint's VAE; ours is reloaded from the file when needed."""


def restore_base_vae(model) -> None:
    reload_vae_weights(model, None)


def store_base_vae(model) -> None:
    """See delete_base_vae."""

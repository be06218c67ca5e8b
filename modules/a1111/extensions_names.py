"""A1111's `modules.extensions` module-level state: the discovered `extensions` list (with A1111's attributes)
and `active()`, as of the running server's start-up."""
from __future__ import annotations

import os

__all__ = ["extensions", "extension_paths", "loaded_extensions", "active", "list_extensions", "find_extension",
           "extensions_dir", "extensions_builtin_dir"]

extensions: list = []  # modules.extensions.Extension objects (name, path, enabled, is_builtin, remote, …)
extension_paths: dict = {}
loaded_extensions: dict = {}


def set_discovered(found) -> None:
    """Called at start-up with what the extension manager found."""
    extensions[:] = list(found)
    extension_paths.clear()
    extension_paths.update({str(e.path): e for e in extensions})
    loaded_extensions.clear()
    loaded_extensions.update({e.name: e for e in extensions if e.enabled})


def active() -> list:
    return [e for e in extensions if e.enabled]


def list_extensions() -> None:
    """A1111 rescans here; the list is made once at start-up (installs apply after a restart)."""


def find_extension(filename):
    for ext in extensions:
        if os.path.commonpath([str(ext.path), str(filename)]) == str(ext.path):
            return ext
    return None


def __getattr__(name):
    from modules.a1111.paths_internal import __getattr__ as paths

    if name in ("extensions_dir", "extensions_builtin_dir"):
        return paths(name)
    raise AttributeError(name)

"""A1111's `modules.cache`: named subsections of a JSON cache extensions keep their own data in
(`cached_data_for_file(subsection, title, filename, func)` recomputes when the file's mtime changes).
Kept in `cache-extensions.json` beside our `cache.json`, written atomically."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from modules.a1111._engine import engine_or_none

_lock = threading.RLock()
_data: dict | None = None


def _path() -> Path:
    e = engine_or_none()
    base = Path(e.paths.cache_file).parent if e is not None else Path(os.environ.get("SD_WEBUI_CACHE_DIR", "."))
    return base / "cache-extensions.json"


def _load() -> dict:
    global _data
    if _data is None:
        try:
            _data = json.loads(_path().read_text(encoding="utf-8"))
            if not isinstance(_data, dict):
                _data = {}
        except (OSError, ValueError):
            _data = {}
    return _data


def dump_cache() -> None:
    from modules.fileio import atomic_write_text

    with _lock:
        atomic_write_text(_path(), json.dumps(_load(), indent=2))


def cache(subsection: str) -> dict:
    with _lock:
        return _load().setdefault(subsection, {})


def cached_data_for_file(subsection: str, title: str, filename, func):
    """`func()`'s value for `filename`, recomputed when the file changed since it was stored."""
    try:
        mtime = os.path.getmtime(filename)
    except OSError:
        return None
    entries = cache(subsection)
    entry = entries.get(title)
    if entry is not None and entry.get("mtime", 0) >= mtime:
        return entry.get("value")
    value = func()
    if value is None:
        return None
    with _lock:
        entries[title] = {"mtime": mtime, "value": value}
        dump_cache()
    return value

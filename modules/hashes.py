"""File hashes (A1111-compatible) and the ``cache.json`` hash cache.

* :func:`sha256_file` — sha256 of a whole file, read in 1 MiB blocks. A checkpoint's "short hash" is its first
  10 hex characters (``model.safetensors [6ce0161689]``).
* :func:`addnet_hash_safetensors` — A1111's LoRA hash: sha256 of a ``.safetensors`` file *after* its 8-byte
  header length and JSON header (so editing metadata does not change it). Shown as 12 hex characters.
* :func:`model_hash_legacy` — the old 8-hex "model hash": sha256 of 64 KiB read at offset 1 MiB.
* :class:`HashCache` — ``cache.json`` in A1111's shape::

      {"hashes": {"checkpoint/<name>": {"mtime": 1712345678.9, "sha256": "...", "size": 2132625894}},
       "hashes-addnet": {"lora/<name>": {...}}, ...}

  An entry is valid while the file's mtime (and size, which we also record; entries written by A1111 have none)
  are unchanged. Other sections found in the file are kept. Thread-safe; saved atomically after each new hash.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import BinaryIO, Callable

from modules.fileio import atomic_write_json

__all__ = ["sha256_file", "addnet_hash_safetensors", "model_hash_legacy", "HashCache", "BLOCK_SIZE"]

log = logging.getLogger(__name__)

BLOCK_SIZE = 1024 * 1024


def _hash_stream(f: BinaryIO, h=None, progress: Callable[[int], None] | None = None):
    h = h or hashlib.sha256()
    buf = bytearray(BLOCK_SIZE)
    view = memoryview(buf)
    while True:
        n = f.readinto(buf)
        if not n:
            return h
        h.update(view[:n])
        if progress is not None:
            progress(n)


def sha256_file(path: str | os.PathLike, progress: Callable[[int], None] | None = None) -> str:
    """Hex sha256 of the whole file, streamed in 1 MiB blocks (``progress(nbytes)`` after each block)."""
    with open(path, "rb") as f:
        return _hash_stream(f, progress=progress).hexdigest()


def addnet_hash_safetensors(path_or_file: str | os.PathLike | BinaryIO) -> str:
    """A1111's "addnet" hash: sha256 of the bytes after the 8-byte little-endian header length and the header."""
    if hasattr(path_or_file, "read"):
        return _addnet(path_or_file)  # type: ignore[arg-type]
    with open(path_or_file, "rb") as f:
        return _addnet(f)


def _addnet(f: BinaryIO) -> str:
    f.seek(0)
    header = f.read(8)
    n = int.from_bytes(header, "little")
    f.seek(n + 8)
    return _hash_stream(f).hexdigest()


def model_hash_legacy(path: str | os.PathLike) -> str:
    """The legacy 8-hex model hash (sha256 of 0x10000 bytes at offset 0x100000); ``'NOFILE'`` if missing."""
    try:
        with open(path, "rb") as f:
            f.seek(0x100000)
            return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]
    except FileNotFoundError:
        return "NOFILE"


class HashCache:
    """sha256 values cached in ``cache.json`` by title (``checkpoint/<name>``), valid while mtime+size hold."""

    SECTION = "hashes"
    ADDNET_SECTION = "hashes-addnet"

    def __init__(self, cache_file: str | os.PathLike | None):
        self.cache_file = Path(cache_file) if cache_file is not None else None
        self._lock = threading.RLock()
        self._key_locks: dict[tuple[str, str], threading.Lock] = {}
        self._data: dict = self._read()
        self.computed = 0  # how many hashes this object computed (for tests / logs)

    def _read(self) -> dict:
        if self.cache_file is None:
            return {}
        try:
            data = json.loads(self.cache_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, UnicodeDecodeError) as e:
            log.warning("hash cache %s is unreadable (%s); starting with an empty cache", self.cache_file, e)
            return {}
        if not isinstance(data, dict):
            log.warning("hash cache %s has an unexpected shape; starting with an empty cache", self.cache_file)
            return {}
        return data

    # --- raw entries --------------------------------------------------------------------------------------------

    def section(self, name: str) -> dict:
        """A copy of one section of cache.json (e.g. ``"hashes"``)."""
        with self._lock:
            sec = self._data.get(name)
            return dict(sec) if isinstance(sec, dict) else {}

    def get_entry(self, section: str, key: str):
        with self._lock:
            sec = self._data.get(section)
            return sec.get(key) if isinstance(sec, dict) else None

    def set_entry(self, section: str, key: str, value, *, save: bool = True) -> None:
        """Store any JSON value in any section (other caches, e.g. safetensors metadata, may share the file)."""
        with self._lock:
            sec = self._data.get(section)
            if not isinstance(sec, dict):
                sec = self._data[section] = {}
            sec[key] = value
            if save:
                self.save()

    def save(self) -> None:
        if self.cache_file is None:
            return
        with self._lock:
            try:
                atomic_write_json(self.cache_file, self._data)
            except OSError as e:  # a cache that cannot be written is not fatal
                log.warning("could not write hash cache %s: %s", self.cache_file, e)

    # --- hashes -------------------------------------------------------------------------------------------------

    @staticmethod
    def _stat(path: str | os.PathLike) -> tuple[float, int] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return st.st_mtime, st.st_size

    def cached(self, path: str | os.PathLike, title: str, *, use_addnet_hash: bool = False,
               stat: tuple[float, int] | None = None) -> str | None:
        """The cached sha256 for ``title`` if the entry matches the file's current mtime and size, else None.
        ``stat=(mtime, size)`` may be passed for things that are not plain files (diffusers folders)."""
        stat = stat or self._stat(path)
        if stat is None:
            return None
        entry = self.get_entry(self.ADDNET_SECTION if use_addnet_hash else self.SECTION, title)
        if not isinstance(entry, dict):
            return None
        sha = entry.get("sha256")
        if not isinstance(sha, str) or not sha:
            return None
        if entry.get("mtime") != stat[0]:
            return None
        if "size" in entry and entry.get("size") != stat[1]:
            return None
        return sha

    def store(self, title: str, sha256: str, mtime: float, size: int, *, use_addnet_hash: bool = False,
              save: bool = True) -> None:
        self.set_entry(self.ADDNET_SECTION if use_addnet_hash else self.SECTION, title,
                       {"mtime": mtime, "sha256": sha256, "size": size}, save=save)

    def sha256(self, path: str | os.PathLike, title: str, *, use_addnet_hash: bool = False,
               compute: Callable[[], str] | None = None, stat: tuple[float, int] | None = None) -> str | None:
        """Cached sha256 for ``title``, or compute it now (``compute()`` if given, else the file's sha256 / addnet
        hash), store it and save the cache. None if the file is gone. Concurrent calls for the same title compute
        the hash once."""
        section = self.ADDNET_SECTION if use_addnet_hash else self.SECTION
        with self._lock:
            key_lock = self._key_locks.setdefault((section, title), threading.Lock())
        with key_lock:
            stat = stat or self._stat(path)
            if stat is None:
                return None
            hit = self.cached(path, title, use_addnet_hash=use_addnet_hash, stat=stat)
            if hit:
                return hit
            try:
                if compute is not None:
                    value = compute()
                elif use_addnet_hash:
                    value = addnet_hash_safetensors(path)
                else:
                    value = sha256_file(path)
            except FileNotFoundError:
                return None
            self.computed += 1
            # Stored under the stat taken *before* reading: if the file changed while it was read, the entry no
            # longer matches the file and is recomputed next time instead of being silently wrong.
            self.store(title, value, stat[0], stat[1], use_addnet_hash=use_addnet_hash)
            return value


def __getattr__(name: str):
    """A1111's names beyond ours, for extensions (modules/a1111/hashes_names.py)."""
    from modules import a1111

    return a1111.names_from(__name__)(name)

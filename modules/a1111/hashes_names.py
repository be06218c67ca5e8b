"""A1111's `modules.hashes` functions over our hash cache (the engine's cache.json)."""
from __future__ import annotations

from modules.a1111._engine import engine_or_none

__all__ = ["sha256", "sha256_from_cache", "calculate_sha256", "cache"]


def _cache():
    from modules.hashes import HashCache

    e = engine_or_none()
    return e.registry.hash_cache if e is not None else HashCache(None)


def calculate_sha256(filename) -> str:
    from modules.hashes import sha256_file

    return sha256_file(filename)


def sha256_from_cache(filename, title, use_addnet_hash=False):
    """The cached sha256 of `filename` under `title` if the file has not changed since, else None."""
    return _cache().cached(filename, title, use_addnet_hash=use_addnet_hash)


def sha256(filename, title, use_addnet_hash=False):
    """The file's sha256 (or the addnet hash), computed once and kept in cache.json under `title`."""
    return _cache().sha256(filename, title, use_addnet_hash=use_addnet_hash)


def cache(subsection):
    from modules.a1111.cache import cache as extension_cache

    return extension_cache(subsection)

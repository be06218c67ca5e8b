"""Atomic file writes.

Everything the web UI persists (images, config.json, cache.json, params.txt, ...) is written through these
helpers, so that a crash, a kill or a full disk in the middle of a write never leaves a truncated file behind:
the data goes to a temporary file in the *same directory* (so the final rename cannot cross file systems),
is flushed and fsync'ed, and only then renamed over the target with ``os.replace`` (atomic on POSIX and
Windows). On any error the temporary file is removed and the previous file, if any, is left untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_open", "atomic_path",
           "sweep_stale_temp_files"]

_TMP_SUFFIX = ".tmp"
_TMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")  # what mkstemp(prefix=".NAME.", suffix=".tmp") makes


def _read_umask() -> int:
    """The process umask (read by setting and restoring it: there is no other portable way); read once at import,
    before any writer thread runs."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _honour_umask(fd_or_path) -> None:
    """mkstemp creates 0600 files; a finished file gets the mode a plain open() would give (0666 & ~umask)."""
    if os.name != "posix":
        return
    mode = 0o666 & ~_UMASK
    if isinstance(fd_or_path, int):
        os.fchmod(fd_or_path, mode)
    else:
        os.chmod(fd_or_path, mode)


def sweep_stale_temp_files(directories, min_age_s: float = 60.0, *, recursive: bool = True) -> list[Path]:
    """Remove the hidden temporary files a killed process left behind (`.NAME.XXXXXXXX.tmp`) in `directories`
    (and below, unless `recursive` is False); files younger than `min_age_s` may belong to a writer still running
    and are kept."""
    import time

    removed = []
    now = time.time()
    for directory in directories:
        root = Path(directory)
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")] if recursive else []
            for name in filenames:
                if not _TMP_NAME.match(name):
                    continue
                path = Path(dirpath) / name
                try:
                    if now - path.stat().st_mtime >= min_age_s:
                        path.unlink()
                        removed.append(path)
                except OSError:
                    continue
    return removed


def _tmp_prefix(path: Path) -> str:
    # A dot-prefixed name, so the temporary file is hidden and never mistaken for an output image
    # (e.g. by the "largest leading integer" file counter in modules/images.py).
    return f".{path.name}."


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX only; a no-op where directories cannot be opened)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _commit(tmp: str, path: Path, overwrite: bool) -> None:
    """Move the finished temporary file into place."""
    if overwrite:
        os.replace(tmp, path)
        return
    # No-overwrite: a hard link fails atomically with FileExistsError when the name is taken (also by another
    # process), which lets callers that pick numbered names retry with the next number.
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:
        # File systems without hard links: fall back to check-then-replace (racy only across processes).
        if path.exists():
            raise FileExistsError(str(path)) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", *, overwrite: bool = True,
                encoding: str | None = None, newline: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path`` for writing; it becomes ``path`` only if the block succeeds.

    For writers that want a file object (PIL ``Image.save``, ``json.dump``); writers that want a *path*
    (``safetensors.torch.save_file``) use :func:`atomic_path`. With ``overwrite=False`` an existing ``path``
    raises ``FileExistsError`` (atomically, on file systems with hard links) instead of being replaced.
    """
    if not any(c in mode for c in "wax") or "r" in mode:
        raise ValueError(f"atomic_open is for writing new content, not mode {mode!r}")
    mode = mode.replace("x", "w").replace("a", "w")
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    path = Path(path)
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=_TMP_SUFFIX, dir=directory)
    try:
        with os.fdopen(fd, mode, encoding=encoding, newline=newline) as f:
            yield f
            f.flush()
            _honour_umask(f.fileno())
            os.fsync(f.fileno())
        _commit(tmp, path, overwrite)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` for writers that only take a file name (safetensors, torch.save).

    The writer must have closed the file when the block ends; it is then fsync'ed and renamed to ``path``.
    If the block raises, the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=_TMP_SUFFIX, dir=directory)
    os.close(fd)
    try:
        yield Path(tmp)
        _honour_umask(tmp)
        fd = os.open(tmp, os.O_RDWR if os.name == "nt" else os.O_RDONLY)  # Windows fsync needs write access
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        _commit(tmp, path, overwrite)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, overwrite: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically: readers see the old file or the complete new one, never a part."""
    path = Path(path)
    with atomic_open(path, "wb", overwrite=overwrite) as f:
        f.write(memoryview(data))
    return path


def atomic_write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8", overwrite: bool = True) -> Path:
    """Write ``text`` atomically (UTF-8 by default, newlines written as given, never translated)."""
    return atomic_write_bytes(path, text.encode(encoding), overwrite=overwrite)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 4, overwrite: bool = True) -> Path:
    """Serialise ``obj`` first, then write it atomically, so an unserialisable value never truncates the file.

    Non-ASCII text is kept as is (like A1111's config.json), with a 4-space indent by default.
    """
    text = json.dumps(obj, indent=indent, ensure_ascii=False)
    return atomic_write_text(path, text, overwrite=overwrite)

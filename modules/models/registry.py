"""The list of checkpoints and VAEs on disk, with A1111's names, titles and lookup rules.

Checkpoints
    ``.safetensors`` / ``.ckpt`` files found recursively in each checkpoint dir (``models/Stable-diffusion``, then
    ``--ckpt-dir``), except ``*.vae.{safetensors,ckpt,pt}``, plus diffusers folders (a directory holding
    ``model_index.json``; its files are not listed separately), plus the ``--ckpt`` file. Hidden files and folders
    (name starting with ".") are skipped. Sorted by name (natural order, case-insensitive).

    ``name`` is the path relative to its checkpoint dir with forward slashes (``sub/model.safetensors``;
    a ``--ckpt`` outside the dirs uses its file name); ``model_name`` is ``name`` without the extension with
    ``/`` replaced by ``_`` (A1111); ``title`` is ``"name [shorthash]"`` (``shorthash`` = first 10 hex of the
    sha256) or just ``name`` until the hash is known.

Hashing stays off the start-up path
    :meth:`CheckpointRegistry.refresh` only lists and stats files and takes hashes from ``cache.json`` (entry
    ``checkpoint/<name>``, valid while mtime and size are unchanged). Missing hashes are computed by
    :meth:`~CheckpointRegistry.ensure_hash` (one file, blocking) or :meth:`~CheckpointRegistry.hash_all_in_background`
    (a daemon thread). ``--no-hashing`` disables computing (cached values are still used, like A1111).

Diffusers folders' hash (our own rule; A1111 has no diffusers folders)
    sha256 over the UTF-8 text made of one line ``"<relative/path>\\t<sha256 of that file>\\n"`` for every
    non-hidden regular file under the folder, in sorted relative-path order (configs included, since they change
    the model). Cached like a file, with mtime = the newest file's mtime and size = the total size.

Lookup (:meth:`CheckpointRegistry.get`), in order: exact title; name; model_name / file stem; short hash, full
sha256 or legacy 8-hex hash; a sha256 prefix of 8+ hex digits; the query with a trailing ``" [...]"`` removed,
tried the same way; and (``fuzzy=True``, A1111's ``get_closet_checkpoint_match``) the shortest title containing
the query.

VAEs
    ``models/VAE`` (and ``--vae-dir``): ``.safetensors .pt .ckpt`` recursively; next to checkpoints:
    ``*.vae.safetensors|.vae.pt|.vae.ckpt``. Named by file name (A1111); when two files share a name the later
    source wins, in A1111's order (near checkpoints in ``models/Stable-diffusion``, ``models/VAE``, near
    checkpoints in ``--ckpt-dir``, ``--vae-dir``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from modules.hashes import HashCache, model_hash_legacy, sha256_file

__all__ = ["CheckpointInfo", "CheckpointRegistry", "VaeInfo", "list_vaes", "find_vae_for_checkpoint",
           "natural_sort_key", "CHECKPOINT_EXTENSIONS", "VAE_EXTENSIONS"]

log = logging.getLogger(__name__)

CHECKPOINT_EXTENSIONS = (".safetensors", ".ckpt", ".gguf")
VAE_EXTENSIONS = (".safetensors", ".pt", ".ckpt")
VAE_SUFFIXES = tuple(".vae" + ext for ext in VAE_EXTENSIONS)  # *.vae.safetensors etc.
_HEX = re.compile(r"^[0-9a-fA-F]+$")


def natural_sort_key(s: str) -> list:
    """``model2`` before ``model10``, case-insensitive."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", s)]


@dataclass(eq=False)
class CheckpointInfo:
    filename: Path
    name: str
    model_name: str = ""
    is_diffusers: bool = False
    sha256: str | None = None
    hash: str | None = None  # legacy 8-hex hash (files only; filled in with the sha256)
    mtime: float = 0.0
    size: int = 0
    problem: str | None = None  # why the file cannot load, found from its header at listing (truncated, not a model)
    family: str | None = None  # what the header's shapes say it is ("SDXL", "Flux.1 dev"); None when unknown

    def __post_init__(self):
        self.filename = Path(self.filename)
        if not self.model_name:
            self.model_name = model_name_for(self.name, self.is_diffusers)

    @property
    def shorthash(self) -> str | None:
        return self.sha256[:10] if self.sha256 else None

    @property
    def title(self) -> str:
        return f"{self.name} [{self.shorthash}]" if self.shorthash else self.name

    @property
    def name_for_extra(self) -> str:
        """The file stem (A1111's name in extra-network cards), e.g. ``model`` for ``sub/model.safetensors``."""
        base = self.name.rsplit("/", 1)[-1]
        return base if self.is_diffusers else os.path.splitext(base)[0]

    @property
    def short_title(self) -> str:
        return f"{self.name_for_extra} [{self.shorthash}]" if self.shorthash else self.name_for_extra

    @property
    def hash_key(self) -> str:
        """The key of this checkpoint in ``cache.json`` (A1111: ``checkpoint/<name>``)."""
        return f"checkpoint/{self.name}"

    @property
    def config(self) -> Path | None:
        """A ``.yaml`` next to the checkpoint with the same stem (A1111: it overrides the detected config)."""
        if self.is_diffusers:
            return None
        yaml = self.filename.with_suffix(".yaml")
        return yaml if yaml.is_file() else None

    @property
    def ids(self) -> list[str]:
        """Every string A1111 accepts as an exact alias of this checkpoint."""
        out = [self.title, self.name, self.model_name, self.name_for_extra]
        if self.hash:
            out += [self.hash, f"{self.name} [{self.hash}]"]
        if self.shorthash:
            out += [self.shorthash, self.sha256, f"{self.name} [{self.shorthash}]", self.short_title]
        return out

    def __repr__(self) -> str:
        return f"CheckpointInfo({self.title!r}, {str(self.filename)!r})"


def model_name_for(name: str, is_diffusers: bool = False) -> str:
    flat = name.replace("/", "_").replace("\\", "_")
    return flat if is_diffusers else os.path.splitext(flat)[0]


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _walk(root: Path, hidden_dirs: bool = False) -> Iterator[tuple[Path, list[str], list[str]]]:
    """os.walk following links, sorted, link loops avoided; hidden files dropped, hidden folders too unless
    `hidden_dirs` (A1111's "Load models/files in hidden directories")."""
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted((d for d in dirnames if hidden_dirs or not _hidden(d)), key=natural_sort_key)
        yield Path(dirpath), dirnames, sorted((f for f in filenames if not _hidden(f)), key=natural_sort_key)


def _diffusers_files(folder: Path) -> list[tuple[str, Path]]:
    files = []
    for dirpath, _dirs, names in _walk(folder):
        for n in names:
            p = dirpath / n
            if p.is_file():
                files.append((p.relative_to(folder).as_posix(), p))
    files.sort(key=lambda t: t[0])
    return files


def _diffusers_stat(folder: Path) -> tuple[float, int]:
    mtime, size = 0.0, 0
    for _rel, p in _diffusers_files(folder):
        st = p.stat()
        mtime, size = max(mtime, st.st_mtime), size + st.st_size
    return mtime, size


def diffusers_folder_sha256(folder: str | os.PathLike) -> str:
    """The deterministic hash of a diffusers folder (see the module docstring)."""
    folder = Path(folder)
    h = hashlib.sha256()
    for rel, p in _diffusers_files(folder):
        h.update(f"{rel}\t{sha256_file(p)}\n".encode("utf-8"))
    return h.hexdigest()


class CheckpointRegistry:
    def __init__(self, paths, hash_cache: HashCache | None = None, no_hashing: bool = False,
                 list_hidden: Callable[[], bool] = lambda: False):
        self.paths = paths
        self.list_hidden = list_hidden  # the setting list_hidden_files, read at each refresh
        self.hash_cache = hash_cache if hash_cache is not None else HashCache(getattr(paths, "cache_file", None))
        self.no_hashing = no_hashing
        self.cmd_ckpt: CheckpointInfo | None = None  # the --ckpt checkpoint, if any
        self._infos: list[CheckpointInfo] = []
        self._lock = threading.RLock()
        self._bg_thread: threading.Thread | None = None
        self._bg_failed: set[str] = set()
        self._warned: set[tuple] = set()  # files whose header problem was logged (once each)

    # --- listing ------------------------------------------------------------------------------------------------

    def refresh(self) -> list[CheckpointInfo]:
        """Re-scan the checkpoint dirs (fast: no file is read; hashes come from the cache)."""
        found: dict[str, CheckpointInfo] = {}
        seen_files: set[str] = set()

        def add(path: Path, name: str, is_diffusers: bool) -> None:
            real = os.path.realpath(path)
            if real in seen_files:
                return
            if name in found:
                log.warning("checkpoint %s: the name %r is already used by %s; skipped", path, name,
                            found[name].filename)
                return
            seen_files.add(real)
            try:
                mtime, size = _diffusers_stat(path) if is_diffusers else _stat(path)
            except OSError as e:
                log.warning("checkpoint %s skipped: %s", path, e)
                return
            info = CheckpointInfo(filename=path, name=name, is_diffusers=is_diffusers, mtime=mtime, size=size)
            info.sha256 = self.hash_cache.cached(path, info.hash_key, stat=(mtime, size))
            info.problem, info.family = (None, _folder_family(path)) if is_diffusers else _header_check(path, size)
            if info.problem and (real, mtime, size) not in self._warned:
                self._warned.add((real, mtime, size))
                log.warning("checkpoint %s cannot be loaded: %s", name, info.problem)
            found[name] = info

        for root in getattr(self.paths, "ckpt_dirs", []):
            root = Path(root)
            if not root.is_dir():
                continue
            for dirpath, dirnames, filenames in _walk(root, self.list_hidden()):
                if "model_index.json" in filenames and dirpath != root:
                    dirnames[:] = []
                    add(dirpath, dirpath.relative_to(root).as_posix(), True)
                    continue
                for fn in filenames:
                    low = fn.lower()
                    if not low.endswith(CHECKPOINT_EXTENSIONS) or low.endswith(VAE_SUFFIXES):
                        continue
                    p = dirpath / fn
                    add(p, p.relative_to(root).as_posix(), False)

        cmd_ckpt = None
        ckpt_file = getattr(self.paths, "ckpt_file", None)
        if ckpt_file is not None and Path(ckpt_file).exists():
            ckpt_file = Path(ckpt_file)
            real = os.path.realpath(ckpt_file)
            cmd_ckpt = next((i for i in found.values() if os.path.realpath(i.filename) == real), None)
            if cmd_ckpt is None:
                is_diffusers = ckpt_file.is_dir()
                add(ckpt_file, ckpt_file.name, is_diffusers)
                cmd_ckpt = found.get(ckpt_file.name)

        infos = sorted(found.values(), key=lambda i: natural_sort_key(i.name))
        with self._lock:
            self._infos = infos
            self.cmd_ckpt = cmd_ckpt
            self._bg_failed.clear()
        return list(infos)

    def list(self) -> list[CheckpointInfo]:
        with self._lock:
            return list(self._infos)

    def titles(self) -> list[str]:
        return [i.title for i in self.list()]

    def __len__(self) -> int:
        return len(self._infos)

    def __iter__(self):
        return iter(self.list())

    # --- hashing ------------------------------------------------------------------------------------------------

    def ensure_hash(self, info: CheckpointInfo, *, force: bool = False) -> str | None:
        """Compute (or take from the cache) the sha256 of ``info`` now; None with ``--no-hashing`` (unless
        ``force``) or when the file is gone."""
        if info.sha256:
            return info.sha256
        if self.no_hashing and not force:
            return None
        if info.is_diffusers:
            folder = info.filename
            stat = _diffusers_stat(folder) if folder.is_dir() else None
            if stat is None:
                return None
            sha = self.hash_cache.sha256(folder, info.hash_key, stat=stat,
                                         compute=lambda: diffusers_folder_sha256(folder))
        else:
            sha = self.hash_cache.sha256(info.filename, info.hash_key)
            if sha and info.hash is None:
                info.hash = model_hash_legacy(info.filename)
        if sha:
            info.sha256 = sha
        return sha

    def hash_all_in_background(self) -> threading.Thread | None:
        """Start (once) a daemon thread hashing every listed checkpoint that has no hash yet; returns it (None with
        ``--no-hashing`` or when everything is hashed). Checkpoints added by a later ``refresh()`` are picked up
        by the running thread."""
        if self.no_hashing:
            return None
        with self._lock:
            if self._bg_thread is not None and self._bg_thread.is_alive():
                return self._bg_thread
            if all(i.sha256 for i in self._infos):
                return None
            self._bg_thread = threading.Thread(target=self._hash_loop, name="checkpoint-hashing", daemon=True)
            self._bg_thread.start()
            return self._bg_thread

    def _hash_loop(self) -> None:
        while True:
            with self._lock:
                todo = next((i for i in self._infos if not i.sha256 and i.name not in self._bg_failed), None)
            if todo is None:
                return
            try:
                ok = bool(self.ensure_hash(todo))
            except Exception as e:  # unreadable file: note it and go on
                log.warning("could not hash checkpoint %s: %s", todo.filename, e)
                ok = False
            if not ok:
                with self._lock:
                    self._bg_failed.add(todo.name)

    def wait_for_hashes(self, timeout: float | None = None) -> bool:
        """Wait for the background hashing thread; True if it finished."""
        t = self._bg_thread
        if t is None:
            return True
        t.join(timeout)
        return not t.is_alive()

    # --- lookup -------------------------------------------------------------------------------------------------

    def get(self, query: str | None, *, fuzzy: bool = True, hash_missing: bool = False) -> CheckpointInfo | None:
        """Find a checkpoint by title, name, model name, hash or (``fuzzy``) part of the title. With
        ``hash_missing``, unhashed checkpoints are hashed first when the query looks like a hash and nothing
        matched (e.g. ``Model hash`` from pasted infotext while start-up hashing is still running)."""
        if not query or not isinstance(query, str):
            return None
        q = query.strip()
        infos = self.list()
        found = _lookup(infos, q, fuzzy)
        tag = _strip_hash(q)[1]
        if found is None and hash_missing and _HEX.match(tag or q):
            for info in infos:
                if not info.sha256 and not self.no_hashing:
                    self.ensure_hash(info)
                if info.hash is None and not info.is_diffusers:
                    info.hash = model_hash_legacy(info.filename)
            found = _lookup(infos, q, fuzzy)
        return found

    def get_exact(self, query: str | None) -> CheckpointInfo | None:
        """Exact aliases only (what A1111's options API accepts for ``sd_model_checkpoint``)."""
        if not query:
            return None
        return next((i for i in self.list() if query in i.ids), None)

    def select(self, preferred: str | None = None) -> CheckpointInfo | None:
        """The checkpoint to load: ``preferred`` (e.g. the ``sd_model_checkpoint`` option) if found, else
        ``--ckpt``, else the first listed; None if there are none."""
        info = self.get(preferred) if preferred else None
        if info is None:
            info = self.cmd_ckpt
        if info is None:
            infos = self.list()
            info = infos[0] if infos else None
        return info


_PIPELINE_FAMILIES = {"StableDiffusionPipeline": "SD 1.x/2.x", "StableDiffusionXLPipeline": "SDXL",
                      "StableDiffusionXLImg2ImgPipeline": "SDXL refiner", "FluxPipeline": "Flux.1",
                      "StableDiffusion3Pipeline": "SD3",
                      "StableDiffusionInstructPix2PixPipeline": "SD 1.x InstructPix2Pix"}


def _folder_family(path: Path) -> str | None:
    import json

    try:
        name = json.loads((path / "model_index.json").read_text()).get("_class_name", "")
    except (OSError, ValueError, AttributeError):
        return None
    return _PIPELINE_FAMILIES.get(name)


def _header_check(path: Path, size: int | None = None) -> tuple[str | None, str | None]:
    """(Why a checkpoint file cannot load, the family it holds), from its header alone (no tensor is read). The
    problem is None when it looks whole; else a .safetensors whose header or tensor data run past the end of the
    file (truncated download), a .ckpt that is a damaged zip archive, or shapes of no model we know."""
    import json
    import zipfile

    size = os.path.getsize(path) if size is None else size
    try:
        if path.suffix.lower() == ".safetensors":
            with open(path, "rb") as f:
                n = int.from_bytes(f.read(8), "little")
                if n <= 1 or n > min(size - 8, 100 * 1024 * 1024):
                    return "not a .safetensors file (no valid header)", None
                header = json.loads(f.read(n))
            ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
            needed = 8 + n + max(ends, default=0)
            if needed > size:
                return f"truncated: {size} of {needed} bytes (download it again)", None
            return _architecture_check(path, header)
        if path.suffix.lower() == ".gguf":
            from modules.models.lowbit import gguf_header_shapes

            return _detect_shapes(path, gguf_header_shapes(path))
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                archive.infolist()
            return None, None
        with open(path, "rb") as f:
            head = f.read(2)
        if head[:1] != b"\x80":  # neither a zip archive nor a pickle: a damaged zip or not a checkpoint
            return "truncated or not a checkpoint (not a zip archive or pickle)", None
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as e:
        return f"unreadable header ({type(e).__name__}: {e})", None
    return None, None


def _architecture_check(path: Path, header: dict) -> tuple[str | None, str | None]:
    """What the loader would say about the tensors' shapes (it detects from the same keys): (why it is not a model
    we know, or None; the family it is)."""
    from modules.models.key_layout import Shape

    shapes = {k: Shape(v["shape"]) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}
    return _detect_shapes(path, shapes)


def _detect_shapes(path: Path, shapes: dict) -> tuple[str | None, str | None]:
    from modules.models import detect

    try:
        spec = detect.detect(shapes, name=path.name)
    except detect.UnsupportedModelError as e:
        return str(e), None
    except Exception:  # noqa: BLE001 - anything else is left for the loader to report with the whole file
        return None, None
    return None, ("SD 2.x" if spec.family == "sd2" and spec.prediction_type == "probe" else spec.label)


def _stat(path: Path) -> tuple[float, int]:
    st = os.stat(path)
    return st.st_mtime, st.st_size


def _strip_hash(query: str) -> tuple[str, str | None]:
    m = re.search(r"\s\[([^\]]*)\]$", query)
    if not m:
        return query, None
    return query[: m.start()], m.group(1)


def _exact(infos: list[CheckpointInfo], q: str) -> CheckpointInfo | None:
    for attr in ("title", "name"):
        for i in infos:
            if getattr(i, attr) == q:
                return i
    for i in infos:
        if q in (i.model_name, i.name_for_extra, i.short_title):
            return i
    low = q.lower()
    if _HEX.match(q):
        for i in infos:
            if i.sha256 and low in (i.shorthash, i.sha256):
                return i
        for i in infos:
            if i.hash and low == i.hash:
                return i
        if len(q) >= 8:
            matches = [i for i in infos if i.sha256 and i.sha256.startswith(low)]
            if len(matches) == 1:
                return matches[0]
    return None


def _lookup(infos: list[CheckpointInfo], q: str, fuzzy: bool) -> CheckpointInfo | None:
    found = _exact(infos, q)
    if found is not None:
        return found
    bare, tag = _strip_hash(q)
    if tag is not None:
        # "name [hash]": the hash decides when it is known, otherwise the name does.
        if tag and _HEX.match(tag):
            by_hash = _exact(infos, tag)
            if by_hash is not None and (by_hash.name == bare or by_hash.name_for_extra == bare
                                        or by_hash.model_name == bare):
                return by_hash
        found = _exact(infos, bare)
        if found is not None:
            return found
    if fuzzy:
        for needle in (q, bare):
            hits = sorted((i for i in infos if needle and needle in i.title), key=lambda i: len(i.title))
            if hits:
                return hits[0]
    return None


# --- VAEs ------------------------------------------------------------------------------------------------------------

@dataclass
class VaeInfo:
    name: str  # the file name, e.g. "vae-ft-mse-840000-ema-pruned.safetensors" (A1111's key)
    filename: Path

    @property
    def model_name(self) -> str:
        return self.name

    @property
    def hash_key(self) -> str:
        return f"vae/{self.name}"


def _vae_files(root: Path, near_checkpoints: bool) -> list[Path]:
    out = []
    if not root.is_dir():
        return out
    for dirpath, dirnames, filenames in _walk(root):
        if near_checkpoints and "model_index.json" in filenames and dirpath != root:
            dirnames[:] = []
            continue
        for fn in filenames:
            low = fn.lower()
            if low.endswith(VAE_SUFFIXES if near_checkpoints else VAE_EXTENSIONS):
                out.append(dirpath / fn)
    return out


def list_vaes(paths) -> list[VaeInfo]:
    """Every VAE file, sorted by name (see the module docstring for the sources and their precedence)."""
    ckpt_dirs = [Path(p) for p in getattr(paths, "ckpt_dirs", [])]
    vae_dirs = [Path(p) for p in getattr(paths, "vae_dirs", [])]
    sources: list[tuple[Path, bool]] = []
    if ckpt_dirs:
        sources.append((ckpt_dirs[0], True))
    if vae_dirs:
        sources.append((vae_dirs[0], False))
    sources += [(d, True) for d in ckpt_dirs[1:]]
    sources += [(d, False) for d in vae_dirs[1:]]
    found: dict[str, Path] = {}
    for root, near in sources:
        for p in _vae_files(root, near):
            found[p.name] = p
    return [VaeInfo(name, found[name]) for name in sorted(found, key=natural_sort_key)]


def _vae_stem(name: str) -> str:
    low = name.lower()
    for suffix in VAE_SUFFIXES + VAE_EXTENSIONS:
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return name


def find_vae_for_checkpoint(ckpt: CheckpointInfo, vaes: Iterable[VaeInfo]) -> VaeInfo | None:
    """The VAE that ``sd_vae="Automatic"`` picks for ``ckpt``, or None (use the checkpoint's own VAE).

    In order: ``<stem>.vae.{safetensors,pt,ckpt}`` beside the checkpoint; any VAE whose name minus its
    extension (and ``.vae``) equals the checkpoint's stem (e.g. ``models/VAE/<stem>.safetensors``); finally
    A1111's rule, the first VAE whose file name starts with the stem.
    """
    vaes = list(vaes)
    stem = ckpt.filename.name if ckpt.is_diffusers else ckpt.filename.name.rsplit(".", 1)[0]
    if not stem:
        return None
    folder = ckpt.filename.parent
    for suffix in VAE_SUFFIXES:
        for v in vaes:
            if v.filename.parent == folder and v.filename.name.lower() == (stem + suffix).lower():
                return v
    for v in vaes:
        if _vae_stem(v.name) == stem:
            return v
    for v in vaes:
        if v.name.startswith(stem):
            return v
    return None

"""Workers without the head's models folder (setting "cluster_copy_models"): the files a request needs (its
checkpoint, its LoRAs, and the textual-inversion embeddings) are copied to a worker that lacks them, in chunks through Ray, written to a hidden
temporary file, checked against the head's sha256 and only then put in place; the worker's lists are refreshed.

`needed(engine, req)` is the head's side (which files, where under the models folder, their size and sha256);
`Receiver` is the worker's (what it lacks, and taking a file)."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

CHUNK = 32 << 20  # bytes per piece sent
EMBEDDINGS = "embeddings/"  # a needed file under this prefix goes to the worker's embeddings folder
EMBEDDING_SUFFIXES = (".pt", ".bin", ".safetensors", ".png", ".webp")


@dataclass(frozen=True)
class NeededFile:
    rel: str  # path under the models folder, forward slashes ("Stable-diffusion/X.safetensors")
    size: int
    sha256: str


def needed(engine, req) -> list[tuple[NeededFile, Path]]:
    """The checkpoint and LoRA files `req` uses, and the embeddings, as (what the worker must have, where the head
    has it)."""
    from modules.networks import extra_networks

    models = Path(engine.paths.models_dir)
    found: list[tuple[str, Path]] = []  # (the kind's folder, the file)
    name = (getattr(req, "override_settings", None) or {}).get("sd_model_checkpoint")
    try:
        found.append(("Stable-diffusion", Path(engine.models.resolve(name or None).filename)))
    except LookupError:
        pass
    _, networks = extra_networks.parse_prompt(str(getattr(req, "prompt", "") or ""))
    for params in networks.get("lora", []) + networks.get("lyco", []):
        lora = engine.loras.find(params.items[0]) if params.items else None
        if lora is not None:
            found.append(("Lora", Path(lora.path)))
    out = []
    emb_dir = Path(engine.paths.embeddings_dir)
    if emb_dir.is_dir():  # small, and which ones a prompt uses is the embedding database's business: all of them
        for path in sorted(emb_dir.rglob("*")):
            if path.is_file() and path.suffix.lower() in EMBEDDING_SUFFIXES:
                rel = EMBEDDINGS + path.relative_to(emb_dir).as_posix()
                out.append((NeededFile(rel, path.stat().st_size, sha256_of(path)), path))
    for kind, path in found:
        if not path.is_file():  # a diffusers folder is not copied: the worker needs it in its own folder
            continue
        try:
            rel = path.resolve().relative_to(models.resolve()).as_posix()
        except ValueError:  # a folder of its own (--ckpt-dir, --lora-dir): under the kind's usual place there
            rel = f"{kind}/{path.name}"
        out.append((NeededFile(rel, path.stat().st_size, sha256_of(path)), path))
    return out


_hashes: dict[tuple[str, int, int], str] = {}


def sha256_of(path: Path) -> str:
    """The file's sha256, remembered while its size and modification time stay the same."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _hashes:
        with open(path, "rb") as f:
            _hashes[key] = hashlib.file_digest(f, "sha256").hexdigest()
    return _hashes[key]


def chunks(path: Path):
    with open(path, "rb") as f:
        while True:
            data = f.read(CHUNK)
            if not data:
                return
            yield data


class Receiver:
    """A worker's side: which of the files it lacks (or holds with other contents), and writing one safely."""

    def __init__(self, models_dir: Path, embeddings_dir: Path | None = None):
        self.models_dir = Path(models_dir)
        self.embeddings_dir = Path(embeddings_dir) if embeddings_dir is not None else None

    def _target(self, rel: str) -> Path:
        root = self.models_dir
        if rel.startswith(EMBEDDINGS) and self.embeddings_dir is not None:
            root, rel = self.embeddings_dir, rel[len(EMBEDDINGS):]
        target = (root / rel).resolve()
        if root.resolve() not in target.parents:
            raise ValueError(f"{rel}: not under the models or embeddings folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def missing(self, files: list[NeededFile]) -> list[NeededFile]:
        out = []
        for f in files:
            path = self._target(f.rel)
            if not path.is_file() or path.stat().st_size != f.size or sha256_of(path) != f.sha256:
                out.append(f)
        return out

    def write(self, rel: str, offset: int, data: bytes) -> None:
        part = self._part(rel)
        part.parent.mkdir(parents=True, exist_ok=True)
        with open(part, "r+b" if offset else "wb") as f:
            f.seek(offset)
            f.write(data)

    def commit(self, rel: str, sha256: str) -> None:
        """The whole file has arrived: in place if its sha256 is the head's, else removed and an error."""
        part, target = self._part(rel), self._target(rel)
        got = sha256_of(part)
        if got != sha256:
            part.unlink(missing_ok=True)
            raise ValueError(f"{rel}: the copy's sha256 {got[:10]} is not the head's {sha256[:10]}; not used")
        os.replace(part, target)

    def _part(self, rel: str) -> Path:
        target = self._target(rel)
        return target.with_name(f".{target.name}.part")

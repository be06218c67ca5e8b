"""Textual inversion embeddings, found in the embeddings folder and spliced into prompts the way A1111 does.

Files (searched recursively; the prompt token is the file stem):
- `.pt` / `.bin` with `string_to_param` (A1111's own training output), any number of vectors;
- `.safetensors` / `.bin` with a single tensor (`emb_params`, diffusers concepts `{"<token>": tensor}`);
- SDXL files with `clip_l` and `clip_g` (loaded into both text encoders).

Matching is done on token ids inside our own tokenization (`find_embedding_at_position`), not by adding tokens to
the tokenizer, so names that are ordinary vocabulary words (`cat.pt`) still work. Embeddings whose width does not
fit the loaded model are listed in `skipped` with the reason. `load(model)` rescans when files were added, removed
or changed (or the model's widths changed); `refresh()` forces a rescan.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from modules import hashes

log = logging.getLogger(__name__)

EXTENSIONS = (".pt", ".bin", ".safetensors", ".ckpt")


@dataclass
class Embedding:
    name: str
    filename: Path
    vec: torch.Tensor | dict[str, torch.Tensor]  # (n, width), or {"clip_l": (n, w1), "clip_g": (n, w2)}
    shape: int  # width (sum of both widths for SDXL files)
    vectors: int
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    _hash: str | None = field(default=None, repr=False)

    @property
    def is_sdxl(self) -> bool:
        return isinstance(self.vec, dict)

    @property
    def hash(self) -> str:
        if self._hash is None:
            self._hash = hashes.sha256_file(self.filename)
        return self._hash

    @property
    def shorthash(self) -> str:
        """A1111's 12-character TI hash (the start of the file's sha256)."""
        return self.hash[:12]

    def vectors_for(self, key: str | None) -> torch.Tensor:
        """The (n, width) vectors for one text encoder: key "clip_l"/"clip_g" for SDXL files, None for plain ones."""
        if isinstance(self.vec, dict):
            return self.vec[key or "clip_l"]
        return self.vec


def _read_file(path: Path) -> dict:
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    return torch.load(str(path), map_location="cpu", weights_only=True)


def parse_embedding_data(data, name: str, filename: Path) -> Embedding:
    """Turn a loaded file's contents into an Embedding (A1111's `create_embedding_from_data`)."""
    if not isinstance(data, dict):
        raise ValueError("not a dictionary of tensors")
    if "string_to_param" in data:
        params = data["string_to_param"]
        params = getattr(params, "_parameters", params)
        if len(params) != 1:
            raise ValueError("embedding file has multiple terms in it")
        vec = next(iter(params.values())).detach().to(torch.float32)
        if vec.ndim == 1:
            vec = vec.unsqueeze(0)
        emb = Embedding(name, filename, vec, int(vec.shape[-1]), int(vec.shape[0]))
    elif "clip_l" in data and "clip_g" in data:
        vec = {k: data[k].detach().to(torch.float32) for k in ("clip_l", "clip_g")}
        vec = {k: v.unsqueeze(0) if v.ndim == 1 else v for k, v in vec.items()}
        if vec["clip_l"].shape[0] != vec["clip_g"].shape[0]:
            raise ValueError("clip_l and clip_g have different vector counts")
        emb = Embedding(name, filename, vec, int(vec["clip_l"].shape[-1] + vec["clip_g"].shape[-1]),
                        int(vec["clip_g"].shape[0]))
    else:
        tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
        if len(tensors) != 1:
            raise ValueError("embedding file has multiple terms in it" if tensors else "no embedding tensor found")
        vec = next(iter(tensors.values())).detach().to(torch.float32)
        if vec.ndim == 1:
            vec = vec.unsqueeze(0)
        if vec.ndim != 2:
            raise ValueError(f"unexpected embedding shape {tuple(vec.shape)}")
        emb = Embedding(name, filename, vec, int(vec.shape[-1]), int(vec.shape[0]))
    emb.step = data.get("step") if isinstance(data.get("step"), int) else None
    emb.sd_checkpoint = data.get("sd_checkpoint") if isinstance(data.get("sd_checkpoint"), str) else None
    emb.sd_checkpoint_name = data.get("sd_checkpoint_name") if isinstance(data.get("sd_checkpoint_name"), str) \
        else None
    return emb


def _width(te) -> int | None:
    if te is None:
        return None
    return int(te.get_input_embeddings().weight.shape[-1])


def expected_widths(model) -> tuple[int | None, int | None]:
    """(CLIP-L-like first encoder width, second encoder width) of a LoadedModel."""
    return _width(getattr(model, "text_encoder", None)), _width(getattr(model, "text_encoder_2", None))


class EmbeddingDatabase:
    """The embeddings folder, checked against the loaded model."""

    def __init__(self, directory: str | os.PathLike | None):
        self.directory = Path(directory) if directory else None
        self.word_embeddings: dict[str, Embedding] = {}  # usable with the current model
        self.skipped_embeddings: dict[str, Embedding] = {}
        self.skipped_reasons: dict[str, str] = {}  # name → why it is not usable (bad file or wrong model)
        self._all: dict[str, Embedding] = {}
        self._failed: dict[str, str] = {}
        self._signature: tuple | None = None
        self._model_key: tuple | None = None
        self._announced: tuple | None = None  # the names last printed (load's `announce`)
        self._ids_lookup: dict[int, dict[int, list[tuple[list[int], Embedding]]]] = {}

    # -- files -----------------------------------------------------------------------------------------------------

    def _files(self) -> list[Path]:
        if self.directory is None or not self.directory.is_dir():
            return []
        out = []
        for root, dirs, files in os.walk(self.directory, followlinks=True):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for f in sorted(files):
                p = Path(root) / f
                if p.suffix.lower() in EXTENSIONS and not f.startswith("."):
                    out.append(p)
        return out

    def _dir_signature(self, files: list[Path]) -> tuple:
        sig = []
        for p in files:
            try:
                st = p.stat()
            except OSError:
                continue
            sig.append((str(p), st.st_mtime_ns, st.st_size))
        return tuple(sig)

    def _scan(self, files: list[Path]) -> None:
        previous = self._all
        self._all, self._failed = {}, {}
        for path in files:
            name = path.stem
            if name in self._all or name in self._failed:
                log.warning("Textual inversion: duplicate name %r (%s) ignored", name, path)
                continue
            old = previous.get(name)
            try:
                st = path.stat()
                if old is not None and old.filename == path and getattr(old, "_stat", None) == (st.st_mtime_ns,
                                                                                               st.st_size):
                    self._all[name] = old
                    continue
                if st.st_size == 0:
                    raise ValueError("empty file")
                emb = parse_embedding_data(_read_file(path), name, path)
                emb._stat = (st.st_mtime_ns, st.st_size)  # type: ignore[attr-defined]
                self._all[name] = emb
            except Exception as e:  # noqa: BLE001 - a bad file is reported, never fatal
                self._failed[name] = f"could not load {path.name}: {e}"
                log.warning("Textual inversion: %s", self._failed[name])

    def refresh(self, model=None) -> None:
        """Rescan the folder now (and check against `model` if given)."""
        self._signature = None
        self.load(model)

    def load(self, model=None, announce: bool = False) -> None:
        """Rescan if files changed; re-check compatibility if the model's encoders changed. `announce` (A1111's
        "Print a list of Textual Inversion embeddings when loading model"): the usable and skipped names in the
        console, each time they change."""
        files = self._files()
        signature = self._dir_signature(files)
        rescanned = signature != self._signature
        if rescanned:
            self._scan(files)
            self._signature = signature
        key = (getattr(model, "family", None), *expected_widths(model)) if model is not None else None
        if rescanned or key != self._model_key:
            self._check(model)
            self._model_key = key
        shown = (tuple(self.word_embeddings), tuple(self.skipped_embeddings))
        if announce and shown != self._announced:
            self._announced = shown
            print(f"Textual inversion embeddings loaded({len(shown[0])}): {', '.join(shown[0])}", flush=True)
            if shown[1]:
                print(f"Textual inversion embeddings skipped({len(shown[1])}): {', '.join(shown[1])}", flush=True)

    def _check(self, model) -> None:
        self.word_embeddings, self.skipped_embeddings = {}, {}
        self.skipped_reasons = dict(self._failed)
        self._ids_lookup = {}
        w1, w2 = expected_widths(model) if model is not None else (None, None)
        is_sdxl = bool(getattr(model, "is_sdxl", False))
        family = getattr(model, "family", None)
        for name, emb in self._all.items():
            reason = None
            if model is not None:
                if is_sdxl and w1 is not None and w2 is not None:  # SDXL base: needs clip_l and clip_g
                    if not emb.is_sdxl:
                        reason = f"width {emb.shape} does not fit {family} (needs clip_l {w1} + clip_g {w2})"
                    elif emb.vec["clip_l"].shape[-1] != w1 or emb.vec["clip_g"].shape[-1] != w2:
                        reason = (f"clip_l/clip_g widths {emb.vec['clip_l'].shape[-1]}/{emb.vec['clip_g'].shape[-1]}"
                                  f" do not fit {family} ({w1}/{w2})")
                elif w1 is None and w2 is not None:  # SDXL refiner: the bigG encoder only
                    width = emb.vec["clip_g"].shape[-1] if emb.is_sdxl else emb.shape
                    if width != w2:
                        reason = f"width {width} does not fit {family} (expects {w2})"
                else:
                    if emb.is_sdxl or emb.shape != w1:
                        reason = f"width {emb.shape} does not fit {family} (expects {w1})"
            if reason is None:
                self.word_embeddings[name] = emb
            else:
                self.skipped_embeddings[name] = emb
                self.skipped_reasons[name] = reason

    # -- lookup ----------------------------------------------------------------------------------------------------

    def lookup_for(self, tokenizer) -> dict[int, list[tuple[list[int], Embedding]]]:
        """first token id → [(ids, embedding)] longest first (A1111's `ids_lookup`), for this tokenizer."""
        key = id(tokenizer)
        if key not in self._ids_lookup:
            table: dict[int, list[tuple[list[int], Embedding]]] = {}
            for name, emb in self.word_embeddings.items():
                ids = tokenizer([name], truncation=False, add_special_tokens=False)["input_ids"][0]
                if not ids:
                    continue
                table.setdefault(ids[0], []).append((list(ids), emb))
            for v in table.values():
                v.sort(key=lambda x: len(x[0]), reverse=True)
            self._ids_lookup[key] = table
        return self._ids_lookup[key]

    @staticmethod
    def find_embedding_at_position(lookup, tokens: list[int], offset: int) -> tuple[Embedding | None, int | None]:
        possible = lookup.get(tokens[offset])
        if not possible:
            return None, None
        for ids, embedding in possible:
            if tokens[offset:offset + len(ids)] == ids:
                return embedding, len(ids)
        return None, None

    def __contains__(self, name: str) -> bool:
        return name in self.word_embeddings

    def items(self):
        """Every embedding found (usable and skipped), for listings such as Extra Networks."""
        return list(self._all.items())


def ti_hashes(used: dict[str, Embedding]) -> str | None:
    """A1111's `TI hashes` infotext value: `name: hash12, name2: hash12`."""
    if not used:
        return None
    return ", ".join(f"{name}: {emb.shorthash}" for name, emb in used.items())


__all__ = ["Embedding", "EmbeddingDatabase", "parse_embedding_data", "ti_hashes", "expected_widths"]

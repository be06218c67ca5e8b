"""Checkpoint merger (A1111's ``run_modelmerger``): weighted sum, add difference, or no interpolation.

Modes (A = primary, B = secondary, C = tertiary, M = multiplier)::

    Weighted sum       A·(1−M) + B·M
    Add difference     A + M·(B − C)      (a key missing from C adds nothing)
    No interpolation   A                  (convert to .safetensors/.ckpt, bake a VAE, halve, drop keys)

As in A1111: only floating-point keys whose name contains ``model`` and that B also has are merged; every other key
of A is copied from A. An inpainting A (9 input channels) with a normal B merges only the first 4 channels of
``model.diffusion_model.input_blocks.0.0.weight`` and the output name gets ``.inpainting``. The recipe goes into the
safetensors metadata as ``sd_merge_recipe`` / ``sd_merge_models`` JSON strings.

Memory: a ``.safetensors`` output is written tensor by tensor (the header is planned from the inputs' shapes, then
each merged tensor is appended), and inputs are read one tensor at a time, so the peak stays near the largest few
tensors rather than three models. ``.ckpt`` output (a pickle) has to hold the result: about one model. Unlike
A1111, "save as float16" halves every float32 tensor (A1111 leaves keys that B lacks in float32).
"""
from __future__ import annotations

import json
import logging
import math
import re
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping

import torch
from tqdm import tqdm

from modules.fileio import atomic_path
from modules.models import detect
from modules.models.detect import UnsupportedModelError
from modules.models.loader import ModelLoadError, read_state_dict

log = logging.getLogger(__name__)

WEIGHTED_SUM, ADD_DIFFERENCE, NO_INTERPOLATION = "Weighted sum", "Add difference", "No interpolation"
MODES = (NO_INTERPOLATION, WEIGHTED_SUM, ADD_DIFFERENCE)
FORMATS = ("safetensors", "ckpt")
# A1111's checkpoint_dict_skip_on_merge: never merged, always A's.
SKIP_ON_MERGE = frozenset({"cond_stage_model.transformer.text_model.embeddings.position_ids"})
INPUT_CONV = "model.diffusion_model.input_blocks.0.0.weight"

ProgressFn = Callable[[int, int, str], None]  # (done, total, what is being done)

_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


class MergeError(ValueError):
    """The merge cannot be done as asked; the message says why (shown to the user as is)."""


@dataclass
class MergeInput:
    """One model taking part: its file and what the recipe records about it."""

    path: Path
    name: str = ""
    model_name: str = ""
    sha256: str | None = None
    legacy_hash: str | None = None

    def __post_init__(self):
        self.path = Path(self.path)
        self.name = self.name or self.path.name
        self.model_name = self.model_name or self.path.stem


@dataclass
class MergeOptions:
    mode: str = WEIGHTED_SUM
    multiplier: float = 0.3
    checkpoint_format: str = "safetensors"
    custom_name: str = ""
    save_as_half: bool = False
    bake_in_vae: Path | None = None
    discard_weights: str = ""
    save_metadata: bool = True
    add_merge_recipe: bool = True
    copy_metadata: bool = True


@dataclass
class MergeResult:
    path: Path
    family: str
    is_inpainting: bool
    merged_keys: int
    written_keys: int
    seconds: float
    metadata: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------
# Reading inputs one tensor at a time


class _SafetensorsSource:
    """A ``.safetensors`` input read tensor by tensor. safe_open maps the file, and the pages already read would
    count as this process's memory until unmapped, so the file is reopened after every ``remap_bytes`` read."""

    def __init__(self, path: Path, remap_bytes: int = 16 << 20):
        from safetensors import SafetensorError, safe_open

        self.path, self.remap_bytes = path, remap_bytes
        self._open = safe_open
        try:
            with safe_open(str(path), framework="pt") as f:
                self.metadata: dict[str, str] = dict(f.metadata() or {})
                self.specs = {}
                for k in f.keys():
                    sl = f.get_slice(k)
                    self.specs[k] = (_ST_DTYPES.get(sl.get_dtype()), tuple(sl.get_shape()))
        except (SafetensorError, OSError, ValueError) as e:
            raise MergeError(f"{path.name}: not a readable .safetensors file ({e})") from None
        unknown = [k for k, (dt, _) in self.specs.items() if dt is None]
        if unknown:
            raise MergeError(f"{path.name}: tensor {unknown[0]} has a data type the merger does not handle")
        self._file = None
        self._since_open = 0

    def get(self, key: str) -> torch.Tensor:
        if self._file is None or self._since_open > self.remap_bytes:
            self.close()
            self._file = self._open(str(self.path), framework="pt").__enter__()
            self._since_open = 0
        t = self._file.get_tensor(key)
        self._since_open += t.numel() * t.element_size()
        return t

    def close(self) -> None:
        if self._file is not None:
            self._file.__exit__(None, None, None)
            self._file = None


class _DictSource:
    """A pickle (``.ckpt``) input: read whole with the repo's safe reader (pickles cannot be read piecewise)."""

    def __init__(self, path: Path):
        try:
            self._sd = read_state_dict(path)
        except ModelLoadError as e:
            raise MergeError(str(e)) from None
        self.path, self.metadata = path, {}
        self.specs = {k: (v.dtype, tuple(v.shape)) for k, v in self._sd.items()}

    def get(self, key: str) -> torch.Tensor:
        return self._sd[key]

    def close(self) -> None:
        self._sd = {}


def _open_source(path: Path):
    if path.is_dir():
        raise MergeError(f"{path.name}: diffusers folders cannot be merged; use single-file checkpoints")
    if not path.is_file():
        raise MergeError(f"{path.name}: file not found")
    return _SafetensorsSource(path) if path.suffix.lower() == ".safetensors" else _DictSource(path)


def _family(source, label: str) -> detect.ModelSpec:
    shapes = {k: torch.empty(shape, device="meta") for k, (_dt, shape) in source.specs.items()}
    try:
        return detect.detect(shapes, name=source.path.name)
    except UnsupportedModelError as e:
        raise MergeError(f"model {label}: {e}") from None


# ---------------------------------------------------------------------------------------------------------------
# Planning: every output tensor's dtype and shape, known before anything is written


@dataclass
class _Entry:
    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    action: str  # "copy" | "merge" | "merge4" (first 4 input channels of an inpainting A) | "vae"


def _halve(dtype: torch.dtype, half: bool) -> torch.dtype:
    return torch.float16 if half and dtype in (torch.float32, torch.float64) else dtype


def _plan(a, b, c, vae: Mapping[str, torch.Tensor], opts: MergeOptions, discard) -> tuple[list[_Entry], bool]:
    entries, inpainting = [], False
    for key, (dtype, shape) in a.specs.items():
        if discard is not None and discard.search(key):
            continue
        action, out_dtype = "copy", dtype
        if key in vae:
            if tuple(vae[key].shape) != shape:
                raise MergeError(f"the VAE does not fit this model: {key} is {tuple(vae[key].shape)} in the VAE, "
                                 f"{shape} in model A")
            action, out_dtype = "vae", vae[key].dtype
        elif b is not None and "model" in key and key not in SKIP_ON_MERGE and key in b.specs \
                and dtype.is_floating_point and b.specs[key][0].is_floating_point:
            b_dtype, b_shape = b.specs[key]
            action, out_dtype = "merge", torch.promote_types(dtype, b_dtype)
            if c is not None and key in c.specs:
                c_dtype, c_shape = c.specs[key]
                if c_shape != b_shape:
                    raise MergeError(f"models B and C differ in {key}: {b_shape} vs {c_shape}")
                out_dtype = torch.promote_types(out_dtype, c_dtype)
            if b_shape != shape:
                action = _mismatch(key, shape, b_shape)
                inpainting = True
        entries.append(_Entry(key, _halve(out_dtype, opts.save_as_half), shape, action))
    return entries, inpainting


def _mismatch(key: str, a_shape: tuple, b_shape: tuple) -> str:
    """A1111's rule: only an inpainting A (9 input channels) may take a normal B's 4 channels."""
    same_rest = len(a_shape) == len(b_shape) >= 2 and a_shape[:1] + a_shape[2:] == b_shape[:1] + b_shape[2:]
    if same_rest and a_shape[1] == 4 and b_shape[1] == 9:
        raise MergeError("When merging an inpainting model with a normal one, A must be the inpainting model.")
    if same_rest and a_shape[1] == 9 and b_shape[1] == 4:
        return "merge4"
    raise MergeError(f"models A and B differ in {key}: {a_shape} vs {b_shape}")


# ---------------------------------------------------------------------------------------------------------------
# The arithmetic (A1111's expressions, in float32 or wider)


def _combine(mode: str, m: float, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
    wide = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    a, b = a.to(wide), b.to(wide)
    if mode == WEIGHTED_SUM:
        return (1 - m) * a + m * b
    if c is None:  # add difference, key absent from C: A1111 uses a zero difference
        return a
    return a + m * (b - c.to(wide))


def _produce(e: _Entry, a, b, c, vae, opts: MergeOptions) -> torch.Tensor:
    if e.action == "vae":
        t = vae[e.key]
    elif e.action == "copy":
        t = a.get(e.key)
    else:
        ta, tb = a.get(e.key), b.get(e.key)
        tc = c.get(e.key) if c is not None and e.key in c.specs else None
        if e.action == "merge":
            t = _combine(opts.mode, opts.multiplier, ta, tb, tc)
        else:
            t = ta.to(torch.promote_types(ta.dtype, torch.float32)).clone()
            t[:, 0:4] = _combine(opts.mode, opts.multiplier, ta[:, 0:4], tb, tc)
    return t.to(e.dtype)


# ---------------------------------------------------------------------------------------------------------------
# Writing


def _write_safetensors(path: Path, entries: list[_Entry], tensors: Iterator[torch.Tensor],
                       metadata: dict[str, str]) -> None:
    """Write a valid .safetensors file without holding the tensors: header first (offsets from the planned dtypes
    and shapes), then each tensor's bytes as it is produced."""
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for e in entries:
        n = math.prod(e.shape) * e.dtype.itemsize
        header[e.key] = {"dtype": _ST_NAMES[e.dtype], "shape": list(e.shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for e, t in zip(entries, tensors):
            if t.dtype != e.dtype or tuple(t.shape) != e.shape:  # a bug, never user input: refuse a corrupt file
                raise RuntimeError(f"merge produced {t.dtype}{tuple(t.shape)} for {e.key}, planned "
                                   f"{e.dtype}{e.shape}")
            f.write(t.contiguous().reshape(-1).view(torch.uint8).numpy().data)


def parse_metadata(meta: Mapping[str, str]) -> dict:
    """safetensors metadata with JSON-looking values parsed (A1111's read_metadata_from_safetensors)."""
    out = {}
    for k, v in meta.items():
        if isinstance(v, str) and v[:1] == "{":
            try:
                v = json.loads(v)
            except ValueError:
                pass
        out[k] = v
    return out


def _metadata(opts: MergeOptions, inputs: list[tuple[MergeInput, object]], is_inpainting: bool) -> dict[str, str]:
    if not opts.save_metadata:
        return {}
    metadata: dict[str, str] = {}
    if opts.copy_metadata:  # A's fields win over B's, B's over C's
        for _inp, src in reversed(inputs):
            metadata.update({k: v for k, v in src.metadata.items() if isinstance(v, str)})
    metadata["format"] = "pt"
    if opts.add_merge_recipe:
        hashes = [inp.sha256 for inp, _ in inputs] + [None] * (3 - len(inputs))
        recipe = {
            "type": "webui",
            "primary_model_hash": hashes[0],
            "secondary_model_hash": hashes[1],
            "tertiary_model_hash": hashes[2],
            "interp_method": opts.mode,
            "multiplier": opts.multiplier,
            "save_as_half": opts.save_as_half,
            "custom_name": opts.custom_name,
            "config_source": 0,
            "bake_in_vae": opts.bake_in_vae.name if opts.bake_in_vae else "None",
            "discard_weights": opts.discard_weights,
            "is_inpainting": is_inpainting,
            "is_instruct_pix2pix": False,
        }
        models: dict = {}
        for inp, src in inputs:
            parsed = parse_metadata(src.metadata)
            models[inp.sha256 or inp.name] = {"name": inp.name, "legacy_hash": inp.legacy_hash,
                                              "sd_merge_recipe": parsed.get("sd_merge_recipe")}
            if isinstance(parsed.get("sd_merge_models"), dict):
                models.update(parsed["sd_merge_models"])
        metadata["sd_merge_recipe"] = json.dumps(recipe)
        metadata["sd_merge_models"] = json.dumps(models)
    return metadata


# ---------------------------------------------------------------------------------------------------------------
# Naming


def default_name(opts: MergeOptions, a: MergeInput, b: MergeInput | None, c: MergeInput | None) -> str:
    """A1111's default output names."""
    m = round(opts.multiplier, 2)
    if opts.mode == WEIGHTED_SUM:
        return f"{round(1 - opts.multiplier, 2)}({a.model_name}) + {m}({b.model_name})"
    if opts.mode == ADD_DIFFERENCE:
        return f"{a.model_name} + {m}({b.model_name} - {c.model_name})"
    return a.model_name


_BAD_NAME_CHARS = re.compile(r'[\x00-\x1f<>:"/\\|?*]')


def output_path(out_dir: Path, name: str, opts: MergeOptions, is_inpainting: bool) -> Path:
    name = name.strip()
    for ext in (".safetensors", ".ckpt"):
        name = name.removesuffix(ext)
    if _BAD_NAME_CHARS.search(name) or name.strip(". ") == "" or name.startswith("."):
        raise MergeError(f"{name!r} is not a usable file name (no folders, no leading dot, none of <>:\"/\\|?*)")
    if is_inpainting and not name.endswith(".inpainting"):
        name += ".inpainting"
    return Path(out_dir) / f"{name}.{opts.checkpoint_format}"


# ---------------------------------------------------------------------------------------------------------------
# The merge


def _validate(opts: MergeOptions, b: MergeInput | None, c: MergeInput | None):
    if opts.mode not in MODES:
        raise MergeError(f"unknown merge mode {opts.mode!r}; choose one of {', '.join(MODES)}")
    if opts.checkpoint_format not in FORMATS:
        raise MergeError(f"unknown checkpoint format {opts.checkpoint_format!r}; choose safetensors or ckpt")
    if opts.mode in (WEIGHTED_SUM, ADD_DIFFERENCE) and b is None:
        raise MergeError(f"{opts.mode} needs a secondary model (B)")
    if opts.mode == ADD_DIFFERENCE and c is None:
        raise MergeError("Add difference needs a tertiary model (C)")
    if not isinstance(opts.multiplier, (int, float)) or not math.isfinite(opts.multiplier):
        raise MergeError("the multiplier must be a number")
    try:
        return re.compile(opts.discard_weights) if opts.discard_weights else None
    except re.error as e:
        raise MergeError(f"discard weights: {opts.discard_weights!r} is not a valid regular expression ({e})") \
            from None


def _read_vae(path: Path | None) -> dict[str, torch.Tensor]:
    """The VAE's tensors under the checkpoint's key names (``first_stage_model.…``)."""
    if path is None:
        return {}
    try:
        sd = read_state_dict(Path(path))
    except ModelLoadError as e:
        raise MergeError(f"bake in VAE: {e}") from None
    prefix = detect.vae_prefix(sd)
    if prefix is None:
        raise MergeError(f"bake in VAE: {Path(path).name} is not an A1111/LDM-layout VAE "
                         f"(no encoder.conv_in.weight)")
    return {detect.VAE_PREFIX + k[len(prefix):]: v for k, v in sd.items()
            if k.startswith(prefix) and not k.startswith(("loss", "model_ema"))}


def merge_checkpoints(primary: MergeInput, secondary: MergeInput | None, tertiary: MergeInput | None,
                      opts: MergeOptions, out_dir: Path, progress: ProgressFn | None = None) -> MergeResult:
    """Merge the models into ``out_dir`` (atomically, never over an existing file) and return what was written."""
    started = time.perf_counter()
    secondary = secondary if opts.mode != NO_INTERPOLATION else None
    tertiary = tertiary if opts.mode == ADD_DIFFERENCE else None
    discard = _validate(opts, secondary, tertiary)
    sources = []
    try:
        inputs = []
        for label, inp in (("A", primary), ("B", secondary), ("C", tertiary)):
            if inp is not None:
                if progress:
                    progress(0, 1, f"Reading model {label}")
                sources.append(_open_source(inp.path))
                inputs.append((inp, sources[-1]))
        specs = [_family(src, label) for (_inp, src), label in zip(inputs, "ABC")]
        families = {s.family for s in specs}
        if len(families) > 1:
            desc = ", ".join(f"{label}: {inp.name} is {spec.label}" for (inp, _), spec, label in zip(inputs, specs, "ABC"))
            raise MergeError(f"cannot merge models of different families ({desc})")
        a = sources[0]
        b = sources[1] if secondary is not None else None
        c = sources[2] if tertiary is not None else None
        vae = {k: v for k, v in _read_vae(opts.bake_in_vae).items() if k in a.specs}
        if opts.bake_in_vae is not None and not vae:
            raise MergeError(f"bake in VAE: no tensor of {Path(opts.bake_in_vae).name} matches model A's VAE")
        entries, is_inpainting = _plan(a, b, c, vae, opts, discard)
        if not entries:
            raise MergeError("discard weights removed every tensor; nothing to save")
        name = opts.custom_name.strip() or default_name(opts, primary, secondary, tertiary)
        out = output_path(out_dir, name, opts, is_inpainting)
        if out.exists():
            raise MergeError(f"{out.name} already exists in {out.parent}; choose another name")
        metadata = _metadata(opts, inputs, is_inpainting)

        def tensors() -> Iterator[torch.Tensor]:
            with tqdm(entries, desc=f"Merging {out.name}", unit="tensor") as bar:
                for i, e in enumerate(bar):
                    if progress and i % 16 == 0:
                        progress(i, len(entries), f"Merging ({opts.mode})")
                    yield _produce(e, a, b, c, vae, opts)

        try:
            with atomic_path(out, overwrite=False) as tmp:
                if opts.checkpoint_format == "safetensors":
                    _write_safetensors(tmp, entries, tensors(), metadata)
                else:
                    torch.save({e.key: t for e, t in zip(entries, tensors())}, tmp)
        except FileExistsError:
            raise MergeError(f"{out.name} already exists in {out.parent}; choose another name") from None
        except OSError as e:
            raise MergeError(f"could not write {out.name}: {e.strerror or e}") from None
        if progress:
            progress(len(entries), len(entries), "Saved")
        merged = sum(e.action != "copy" and e.action != "vae" for e in entries)
        log.info("merged %s (%d tensors merged, %d written)", out, merged, len(entries))
        return MergeResult(path=out, family=specs[0].family, is_inpainting=is_inpainting, merged_keys=merged,
                           written_keys=len(entries), seconds=time.perf_counter() - started, metadata=metadata)
    finally:
        for src in sources:
            src.close()


# ---------------------------------------------------------------------------------------------------------------
# Through the checkpoint registry (UI, CLI)


def merge_from_registry(registry, primary: str, secondary: str | None, tertiary: str | None, opts: MergeOptions,
                        progress: ProgressFn | None = None) -> MergeResult:
    """Merge checkpoints named by title/name/hash; the result goes to the checkpoint folder (``--ckpt-dir`` if
    given, like A1111) and the registry is refreshed so it can be chosen and loaded at once."""

    def find(label: str, query: str | None) -> MergeInput | None:
        if not query:
            return None
        info = registry.get(query, fuzzy=False)
        if info is None:
            raise MergeError(f"model {label}: checkpoint {query!r} not found")
        if info.is_diffusers:
            raise MergeError(f"model {label}: {info.name} is a diffusers folder; only single files can be merged")
        if progress:
            progress(0, 1, f"Hashing model {label}")
        registry.ensure_hash(info)
        return MergeInput(info.filename, info.name, info.model_name, info.sha256, info.hash)

    if not primary:
        raise MergeError("choose a primary model (A)")
    inputs = [find("A", primary), find("B", secondary) if opts.mode != NO_INTERPOLATION else None,
              find("C", tertiary) if opts.mode == ADD_DIFFERENCE else None]
    out_dir = Path(registry.paths.ckpt_dirs[-1])
    result = merge_checkpoints(*inputs, opts, out_dir, progress=progress)
    registry.refresh()
    return result

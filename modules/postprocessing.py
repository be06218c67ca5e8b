"""Extras: upscale images with one upscaler (or two blended), then restore faces with GFPGAN and CodeFormer (each
blended in by its visibility, A1111's order), keep their generation parameters and add A1111's "Postprocess upscale
by / to", "Postprocess upscaler", "GFPGAN visibility", "CodeFormer visibility/weight" keys; save to
`outputs/extras-images` like A1111.
The Extras tab (single image, batch, batch from a folder) and the API's extra-single-image / extra-batch-images
use this; the upscalers themselves are `modules.upscaling.UpscalerRegistry`'s.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from PIL import Image, UnidentifiedImageError

from modules import images as images_mod
from modules.fileio import atomic_write_bytes
from modules.upscaling import UnknownUpscalerError, UpscalerRegistry

__all__ = ["MAX_DIM", "UnknownUpscalerError", "Upscaled", "UpscaleOptions", "upscale",
           "upscale_many", "save_upscaled", "images_in_folder", "read_image", "extras_output_dir"]

log = logging.getLogger(__name__)

MAX_DIM = 8192
MAX_NAME_TRIES = 1000
_BUILTINS_ONLY = UpscalerRegistry()


@dataclass
class UpscaleOptions:
    """What the Extras tab and the API ask for: scale by `scale`, or (width and height given) to width×height."""

    upscaler: str = "Lanczos"
    scale: float | None = 2.0
    width: int = 0
    height: int = 0
    upscaler_2: str = "None"
    upscaler_2_visibility: float = 0.0
    crop: bool = True
    gfpgan_visibility: float = 0.0  # 0: no GFPGAN; else blended in by this much after the upscale
    codeformer_visibility: float = 0.0  # 0: no CodeFormer; else blended in after GFPGAN
    codeformer_weight: float = 0.0  # CodeFormer's w (0 = maximum effect)

    @property
    def restores_faces(self) -> bool:
        return self.gfpgan_visibility > 0 or self.codeformer_visibility > 0


@dataclass
class Upscaled:
    image: Image.Image
    original_infotext: str | None
    params: dict = field(default_factory=dict)
    name: str | None = None  # the input's file name, for batches
    path: Path | None = None  # where it was saved, if it was

    @property
    def params_text(self) -> str:
        return ", ".join(f"{k}: {v}" for k, v in self.params.items())

    @property
    def infotext(self) -> str:
        """What the UI shows: the input's parameters, then the upscale parameters."""
        return "\n".join(t for t in (self.original_infotext, self.params_text) if t)


def _target(image: Image.Image, opts: UpscaleOptions) -> tuple[tuple[int, int], tuple[int, int], dict]:
    """(size to upscale to, size after cropping, infotext keys) — A1111's postprocessing_upscale arithmetic."""
    if opts.width and opts.height:
        tw, th = int(opts.width), int(opts.height)
        factor = max(tw / image.width, th / image.height)
        params = {"Postprocess upscale to": f"{tw}x{th}"}
    else:
        factor = float(opts.scale or 1.0)
        if not 0 < factor <= 8:
            raise ValueError(f"upscale factor must be between 0 and 8, got {factor}")
        tw, th = int(image.width * factor), int(image.height * factor)
        params = {"Postprocess upscale by": f"{factor:g}"}
    sw, sh = max(1, round(image.width * factor)), max(1, round(image.height * factor))
    if max(sw, sh, tw, th) > MAX_DIM:
        raise ValueError(f"the upscaled image would be {sw}x{sh}; the limit is {MAX_DIM} per side")
    return (sw, sh), (tw, th), params


def upscale(image: Image.Image, upscaler: str = "Lanczos", scale: float | None = 2.0, width: int = 0,
            height: int = 0, *, upscaler_2: str = "None", upscaler_2_visibility: float = 0.0, crop: bool = True,
            registry: UpscalerRegistry | None = None, gfpgan_visibility: float = 0.0,
            codeformer_visibility: float = 0.0, codeformer_weight: float = 0.0, face_restorers=None) -> Upscaled:
    """Scale by `scale`, or (width and height given) cover width×height and crop to it, as A1111's Extras do, then
    restore faces (`face_restorers` needed then). Without a `registry` only the built-in resamplers are available."""
    opts = UpscaleOptions(upscaler, scale, width, height, upscaler_2, upscaler_2_visibility, crop, gfpgan_visibility,
                          codeformer_visibility, codeformer_weight)
    return upscale_with(registry or _BUILTINS_ONLY, image, opts, face_restorers)


def upscale_with(registry: UpscalerRegistry, image: Image.Image, opts: UpscaleOptions,
                 face_restorers=None) -> Upscaled:
    """`face_restorers` (modules.face_restoration.FaceRestorers) is needed when the options restore faces."""
    first, second = registry.get(opts.upscaler), registry.get(opts.upscaler_2)
    original = images_mod.read_infotext(image)
    size, final, params = _target(image, opts)
    if first.name == "None":
        if not opts.restores_faces:
            return Upscaled(image, original)
        params = {}
        out = image if image.mode in ("RGB", "RGBA") else image.convert("RGB")
        return _finish(image, _restore_faces(out, opts, face_restorers, params), original, params)
    work = image if image.mode in ("RGB", "RGBA") else image.convert("RGB")
    out = registry.upscale_to(work, first.name, *size)
    params["Postprocess upscaler"] = first.name
    if second.name != "None" and opts.upscaler_2_visibility > 0:
        other = registry.upscale_to(work, second.name, *size)
        out = Image.blend(out.convert("RGB"), other.convert("RGB"), opts.upscaler_2_visibility)
        params["Postprocess upscaler 2"] = second.name
    if opts.width and opts.height and opts.crop and size != final:
        left, top = (size[0] - final[0]) // 2, (size[1] - final[1]) // 2
        out = out.crop((left, top, left + final[0], top + final[1]))
    out = _restore_faces(out, opts, face_restorers, params)
    return _finish(image, out, original, params)


def _restore_faces(image: Image.Image, opts: UpscaleOptions, face_restorers, params: dict) -> Image.Image:
    """A1111's GFPGAN (order 2000) then CodeFormer (order 3000) postprocessing steps, each blended in by its
    visibility."""
    from modules import face_restoration

    steps = ((face_restoration.GFPGAN, opts.gfpgan_visibility), (face_restoration.CODEFORMER,
                                                                  opts.codeformer_visibility))
    for name, visibility in steps:
        if visibility <= 0:
            continue
        if face_restorers is None:
            raise ValueError("face restoration is not available here")
        weight = opts.codeformer_weight if name == face_restoration.CODEFORMER else None
        restored = face_restorers.restore(image, name, codeformer_weight=weight)
        image = face_restoration.blend(image, restored, visibility)
        params[f"{name} visibility"] = round(visibility, 3)
        if weight is not None:
            params["CodeFormer weight"] = round(weight, 3)
    return image


def _finish(image: Image.Image, out: Image.Image, original: str | None, params: dict) -> Upscaled:
    # A1111 keeps the image's text chunks (`parameters` among them) and adds a `postprocessing` one.
    out.info = {**{k: v for k, v in (image.info or {}).items() if isinstance(v, str)},
                "postprocessing": ", ".join(f"{k}: {v}" for k, v in params.items())}
    return Upscaled(out, original, params)


def upscale_many(registry: UpscalerRegistry, named_images: Iterable[tuple[str | None, Image.Image]],
                 opts: UpscaleOptions, face_restorers=None) -> Iterator[Upscaled]:
    """Batch mode: the same options for every image, checked once up front (names, face-restoration files) so a
    bad one fails before any work."""
    for upscaler in (opts.upscaler, opts.upscaler_2):
        registry.get(upscaler)
    check_face_files(opts, face_restorers)
    for name, image in named_images:
        done = upscale_with(registry, image, opts, face_restorers)
        done.name = name
        yield done


def check_face_files(opts: UpscaleOptions, face_restorers) -> None:
    """The files the options' face restoration needs are there (a MissingFaceModelError naming the first missing
    one otherwise)."""
    from modules import face_restoration

    if not opts.restores_faces:
        return
    if face_restorers is None:
        raise ValueError("face restoration is not available here")
    for name, visibility in ((face_restoration.GFPGAN, opts.gfpgan_visibility),
                             (face_restoration.CODEFORMER, opts.codeformer_visibility)):
        if visibility > 0:
            face_restorers.model_file(name)
    face_restorers.detector_file()


# ---------------------------------------------------------------------------------------------------------------
# Files


def read_image(path: str | Path) -> Image.Image:
    """An image read completely (the file is closed again), with its text chunks (the infotext) kept."""
    with Image.open(path) as im:
        im.load()
        image = im.copy()
        image.info = dict(im.info)
    return image


def images_in_folder(folder: str | Path) -> Iterator[tuple[str, Image.Image]]:
    """Batch from a directory: every image file in `folder` (sorted by name; other files are skipped)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ValueError(f"input directory {str(folder)!r} does not exist")
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            image = read_image(path)
        except (UnidentifiedImageError, OSError):
            log.info("Extras batch: skipping %s (not an image)", path)
            continue
        yield path.name, image


def extras_output_dir(paths, settings) -> Path:
    """`outdir_extras_samples` (default `outputs/extras-images`), or `outdir_samples` when that is set."""
    custom = settings.get("outdir_samples", "") or settings.get("outdir_extras_samples", "")
    return paths.resolve_data_path(custom) if custom else paths.extras_samples_dir


def save_upscaled(done: Upscaled, directory: str | Path, settings: Any, *, upscaler_name: str | None = None) -> Path:
    """Save like A1111's Extras: `NNNNN.png`, or the input's own name for batches when `use_original_name_batch`;
    the input's parameters stay in `parameters` and the upscale ones go in `postprocessing` and `extras`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fmt = settings.get("samples_format", "png")
    suffix = f"-{upscaler_name}" if upscaler_name and settings.get("use_upscaler_name_as_suffix", False) else ""
    keep_text = settings.get("enable_pnginfo", True)
    extra = {"postprocessing": done.params_text, "extras": done.params_text} if keep_text and done.params else None
    data = images_mod.encode_image(done.image, fmt, done.original_infotext if keep_text else None,
                                   quality=settings.get("jpeg_quality", 80), webp_lossless=settings.get(
                                       "webp_lossless", False), pnginfo=extra)
    ext = fmt.lower().lstrip(".")
    if done.name and settings.get("use_original_name_batch", True):
        stem = Path(done.name).stem + suffix
        path = directory / f"{stem}.{ext}"
        if settings.get("save_images_replace_action", "Replace") == "Replace":
            done.path = atomic_write_bytes(path, data)
            return done.path
        return _save_numbered(directory, lambda n: f"{stem}-{n}.{ext}" if n else f"{stem}.{ext}", data, done)
    start = images_mod.get_next_sequence_number(directory)
    return _save_numbered(directory, lambda n: f"{start + n:05}{suffix}.{ext}", data, done)


def _save_numbered(directory: Path, name_for, data: bytes, done: Upscaled) -> Path:
    for n in range(MAX_NAME_TRIES):
        path = directory / name_for(n)
        if path.exists():
            continue
        try:
            saved = atomic_write_bytes(path, data, overwrite=False)
        except FileExistsError:  # taken by another writer between the check and the write
            continue
        done.path = saved
        return saved
    raise FileExistsError(f"no free file name in {directory} after {MAX_NAME_TRIES} tries")

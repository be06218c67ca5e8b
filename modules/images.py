"""Saving images the way A1111 does: numbered file names, infotext inside the file, grids.

- Samples: ``outputs/txt2img-images/2024-07-27/00012-1234567890.png``; the 5-digit number continues from the largest
  leading integer among the files already in that folder. Grids: ``grid-0000.png`` (4 digits).
- The infotext goes into the PNG ``parameters`` text chunk; JPEG and WebP get it as EXIF UserComment encoded as
  piexif's ``UserComment.dump(text, encoding="unicode")`` does (``b"UNICODE\\0"`` + UTF-16-BE, stored with the
  EXIF type UNDEFINED), so A1111's "PNG Info" and other piexif readers find it; GIF gets a ``comment``.
- Files are encoded in memory and then written atomically (:mod:`modules.fileio`): a crash never leaves a half
  image, and a picked number is never taken twice, even by two saves racing (a lock in-process, and a
  no-overwrite rename across processes).
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from PIL import Image, ImageColor, PngImagePlugin

from modules.fileio import atomic_write_bytes, atomic_write_text
from modules.filename_pattern import NameFields
from modules.filename_pattern import expand as expand_pattern

__all__ = [
    "save_sample",
    "write_file",
    "safe_name",
    "large_copy",
    "SaveOptions",
    "save_grid",
    "image_grid",
    "grid_rows",
    "read_infotext",
    "image_to_png_bytes",
    "encode_image",
    "get_next_sequence_number",
    "exif_user_comment",
    "decode_user_comment",
]

log = logging.getLogger(__name__)

JPEG_QUALITY = 80  # A1111 option jpeg_quality
GRID_BACKGROUND = "#ffffff"  # A1111 option grid_background_color
_MAX_NAME_TRIES = 500  # as A1111: give up after this many taken numbers in a row

_save_lock = threading.Lock()

EXIF_IFD_POINTER = 0x8769
EXIF_USER_COMMENT = 0x9286
_UNICODE_PREFIX = b"UNICODE\x00"
_ASCII_PREFIX = b"ASCII\x00\x00\x00"
_JIS_PREFIX = b"JIS\x00\x00\x00\x00\x00"
_UNDEFINED_PREFIX = b"\x00" * 8
_JPEG_APP1_MAX = 65533  # payload bytes an APP1 segment can hold


# --------------------------------------------------------------------------------------------------------------------
# EXIF UserComment


def exif_user_comment(text: str) -> bytes:
    """A complete EXIF block (``b"Exif\\0\\0"`` + big-endian TIFF) holding only a UserComment, as piexif writes it.

    Pillow would store ``bytes`` with type BYTE, which piexif (A1111's reader) loads as a tuple and fails on, so
    the block is built by hand with type UNDEFINED (7).
    """
    payload = _UNICODE_PREFIX + text.encode("utf-16-be")
    ifd0_offset = 8
    ifd0_size = 2 + 12 + 4
    exif_ifd_offset = ifd0_offset + ifd0_size
    exif_ifd_size = 2 + 12 + 4
    data_offset = exif_ifd_offset + exif_ifd_size
    tiff = b"MM\x00\x2a" + struct.pack(">I", ifd0_offset)
    tiff += struct.pack(">H", 1) + struct.pack(">HHII", EXIF_IFD_POINTER, 4, 1, exif_ifd_offset) + struct.pack(">I", 0)
    tiff += struct.pack(">H", 1) + struct.pack(">HHII", EXIF_USER_COMMENT, 7, len(payload), data_offset)
    tiff += struct.pack(">I", 0)
    tiff += payload
    return b"Exif\x00\x00" + tiff


def decode_user_comment(raw: Any) -> str | None:
    """Decode an EXIF UserComment value: the 8-byte charset prefix (UNICODE, ASCII, JIS or undefined) + text.

    UNICODE is UTF-16, big-endian as piexif/A1111 write it; little-endian (written by some Windows tools) is
    recognised by its byte pattern or a BOM. Unknown prefixes are read as UTF-8, as A1111 falls back to.
    """
    if raw is None:
        return None
    if isinstance(raw, str):
        return raw.rstrip("\x00") or None
    if isinstance(raw, (tuple, list)):
        try:
            raw = bytes(raw)
        except (TypeError, ValueError):
            return None
    if not isinstance(raw, (bytes, bytearray)):
        return None
    raw = bytes(raw)
    prefix, payload = raw[:8], raw[8:]
    if prefix == _UNICODE_PREFIX:
        if payload[:2] == b"\xff\xfe":
            text = payload[2:].decode("utf-16-le", errors="replace")
        elif payload[:2] == b"\xfe\xff":
            text = payload[2:].decode("utf-16-be", errors="replace")
        elif len(payload) >= 2 and payload[0] != 0 and payload[1] == 0:
            text = payload.decode("utf-16-le", errors="replace")
        else:
            text = payload.decode("utf-16-be", errors="replace")
    elif prefix == _ASCII_PREFIX:
        text = payload.decode("utf-8", errors="ignore")
    elif prefix == _JIS_PREFIX:
        text = payload.decode("shift_jis", errors="ignore")
    elif prefix == _UNDEFINED_PREFIX:
        text = payload.decode("utf-8", errors="ignore")
    else:
        text = raw.decode("utf-8", errors="ignore")
    text = text.rstrip("\x00")
    return text or None


def _exif_user_comment_of(image: Image.Image) -> str | None:
    if "exif" not in (image.info or {}):
        return None
    try:
        raw = image.getexif().get_ifd(EXIF_IFD_POINTER).get(EXIF_USER_COMMENT)
    except Exception:  # malformed EXIF from some other program: no infotext, not an error
        return None
    return decode_user_comment(raw)


def read_infotext(image: Image.Image) -> str | None:
    """The infotext of an image: PNG ``parameters`` text, else EXIF UserComment (JPEG/WebP), else GIF ``comment``."""
    info = image.info or {}
    params = info.get("parameters")
    if isinstance(params, bytes):
        params = params.decode("utf-8", errors="ignore")
    if isinstance(params, str):
        return params
    comment = _exif_user_comment_of(image)
    if comment:
        return comment
    gif_comment = info.get("comment")
    if isinstance(gif_comment, bytes):
        gif_comment = gif_comment.decode("utf-8", errors="ignore")
    if isinstance(gif_comment, str) and gif_comment:
        return gif_comment
    return None


# --------------------------------------------------------------------------------------------------------------------
# Encoding


def _extension(fmt: str) -> str:
    ext = fmt.lower().lstrip(".")
    if "." + ext not in Image.registered_extensions():
        raise ValueError(f"unsupported image format: {fmt!r}")
    return ext


def _png_info(infotext: str | None, extra: Mapping[str, Any] | None) -> PngImagePlugin.PngInfo | None:
    items: dict[str, str] = {}
    for key, value in (extra or {}).items():
        if isinstance(key, str) and value is not None:
            items[key] = str(value)
    if infotext is not None:
        items["parameters"] = infotext
    if not items:
        return None
    info = PngImagePlugin.PngInfo()
    for key, value in items.items():
        info.add_text(key, value)  # tEXt, or iTXt when the text is not Latin-1
    return info


def encode_image(image: Image.Image, fmt: str, infotext: str | None, *, quality: int = JPEG_QUALITY,
                 webp_lossless: bool = False, pnginfo: Mapping[str, Any] | None = None) -> bytes:
    """Encode ``image`` as ``fmt`` (png, jpg/jpeg, webp, gif, ...) with the infotext embedded, in memory.

    Conversions as A1111: RGBA -> RGB for JPEG/WebP, 16-bit greyscale scaled to 8 bits. ``pnginfo`` adds more
    PNG text chunks (``parameters`` is always the infotext).
    """
    ext = _extension(fmt)
    image_format = Image.registered_extensions()["." + ext]
    buf = io.BytesIO()
    if ext == "png":
        image.save(buf, format=image_format, pnginfo=_png_info(infotext, pnginfo))
    elif ext in ("jpg", "jpeg", "webp"):
        if image.mode == "I;16":
            image = image.point(lambda p: p * 0.0038910505836576).convert("RGB" if ext == "webp" else "L")
        elif image.mode == "RGBA" or image.mode not in ("RGB", "L", "CMYK", "RGBA"):
            image = image.convert("RGB")
        kwargs: dict[str, Any] = {"quality": quality}
        if ext == "webp":
            kwargs["lossless"] = webp_lossless
        if infotext is not None:
            exif = exif_user_comment(infotext)
            if ext != "webp" and len(exif) > _JPEG_APP1_MAX:
                log.warning("infotext too long for JPEG EXIF (%d bytes); saving without it", len(exif))
            else:
                kwargs["exif"] = exif
        image.save(buf, format=image_format, **kwargs)
    elif ext == "gif":
        image.save(buf, format=image_format, comment=infotext or "")
    else:
        image.save(buf, format=image_format, quality=quality)
    return buf.getvalue()


def image_to_png_bytes(image: Image.Image, infotext: str | None = None) -> bytes:
    """PNG bytes for the HTTP API (A1111 returns these base64-encoded): the image's own string ``info`` items as
    text chunks, plus ``parameters`` = ``infotext`` when given."""
    extra = {k: v for k, v in (image.info or {}).items() if isinstance(k, str) and isinstance(v, str)}
    if infotext is None:
        infotext = extra.pop("parameters", None)
    else:
        extra.pop("parameters", None)
    return encode_image(image, "png", infotext, pnginfo=extra)


# --------------------------------------------------------------------------------------------------------------------
# Naming and saving


@dataclass
class SaveOptions:
    """A1111's saving settings for one job's files: the file name pattern (`samples_filename_pattern`; empty means
    `[seed]`, or `[seed]-[prompt_spaces]` when pictures do not go to a subfolder), the subfolder pattern
    (`directories_filename_pattern` when `save_to_dirs` / `grid_save_to_dirs` ask for one; empty means
    `[prompt_words]`), `save_images_add_number`, `directories_max_prompt_words`; `short` for grids (named
    `grid-NNNN` unless `grid_extended_filename`); `jpeg_quality`, `webp_lossless`; and "Save copy of large images
    as JPG" (`export_for_4chan`: a picture over `img_downscale_threshold` MB or wider/taller than
    `target_side_length` also gets a JPEG beside it, downscaled to that side)."""

    file_pattern: str = "[seed]"
    folder_pattern: str | None = "[date]"
    add_number: bool = True
    max_prompt_words: int = 8
    short: bool = False
    style_prompts: tuple[str, ...] = ()  # the job's styles' prompts, which [prompt_no_styles] leaves out
    quality: int = JPEG_QUALITY
    webp_lossless: bool = False
    large_copy_mb: float | None = None  # None: no JPEG copy of large pictures
    large_copy_side: int = 4000

    @classmethod
    def from_options(cls, get, grid: bool = False) -> "SaveOptions":
        """From a settings getter (`get(name, default)`)."""
        to_dirs = bool(get("grid_save_to_dirs" if grid else "save_to_dirs", True))
        pattern = str(get("samples_filename_pattern", "") or "") or (
            "[seed]" if get("save_to_dirs", True) else "[seed]-[prompt_spaces]")
        folder = (str(get("directories_filename_pattern", "") or "") or "[prompt_words]") if to_dirs else None
        return cls(pattern, folder, bool(get("save_images_add_number", True)),
                   int(get("directories_max_prompt_words", 8) or 8),
                   short=grid and not get("grid_extended_filename", False),
                   quality=int(get("jpeg_quality", JPEG_QUALITY) or JPEG_QUALITY),
                   webp_lossless=bool(get("webp_lossless", False)),
                   large_copy_mb=float(get("img_downscale_threshold", 4.0)) if get("export_for_4chan", True)
                   else None, large_copy_side=int(get("target_side_length", 4000) or 4000))

    def folder(self, root: str | os.PathLike, fields: NameFields) -> Path:
        """`root`, or its subfolder the folder pattern names (never outside `root`)."""
        root = Path(root)
        if self.folder_pattern is None:
            return root
        name = expand_pattern(self.folder_pattern, fields, self.max_prompt_words).lstrip(" ").rstrip("\\ /")
        parts = [p for p in re.split(r"[\\/]+", name) if p not in ("", ".", "..")]
        return root.joinpath(*parts) if parts else root

    def decoration(self, fields: NameFields) -> str:
        return expand_pattern(self.file_pattern, fields, self.max_prompt_words)


def get_next_sequence_number(directory: str | os.PathLike, basename: str = "") -> int:
    """A1111's counter: 1 + the largest leading integer of the file names in ``directory`` (0 if none).

    With a ``basename`` (``"grid"``) only names starting with ``basename-`` count, and the number after it is used.
    """
    prefix = f"{basename}-" if basename else ""
    result = -1
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return 0
    for name in names:
        if not name.startswith(prefix):
            continue
        stem = os.path.splitext(name[len(prefix):])[0]
        try:
            result = max(int(stem.split("-")[0]), result)
        except ValueError:
            pass
    return result + 1


_UNSAFE = re.compile(r'[\\/:*?"<>|\x00-\x1f]')


def safe_name(text: str) -> str:
    """`text` with the characters a file name cannot hold replaced by `_`."""
    return _UNSAFE.sub("_", text)


def _clean_suffix(suffix: str | None) -> str:
    if not suffix:
        return ""
    suffix = _UNSAFE.sub("_", suffix)
    return suffix if suffix.startswith("-") else "-" + suffix


def _save_numbered(directory: Path, basename: str, decoration: str, ext: str, data: bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    with _save_lock:
        start = get_next_sequence_number(directory, basename)
        for i in range(_MAX_NAME_TRIES):
            number = f"{start + i:05}" if basename == "" else f"{basename}-{start + i:04}"
            path = directory / f"{number}{decoration}.{ext}"
            if path.exists():
                continue
            try:
                return atomic_write_bytes(path, data, overwrite=False)
            except FileExistsError:  # taken by another process between the check and the write
                continue
    raise FileExistsError(f"no free file name in {directory} after {_MAX_NAME_TRIES} tries")


def _save_named(directory: Path, stem: str, ext: str, data: bytes) -> Path:
    """``stem.ext``; where that is taken, ``stem-1.ext``, … — A1111 would write over the earlier picture, a
    finished picture is never lost here."""
    directory.mkdir(parents=True, exist_ok=True)
    with _save_lock:
        for i in range(_MAX_NAME_TRIES):
            path = directory / (f"{stem}.{ext}" if i == 0 else f"{stem}-{i}.{ext}")
            if path.exists():
                continue
            try:
                return atomic_write_bytes(path, data, overwrite=False)
            except FileExistsError:
                continue
    raise FileExistsError(f"no free file name for {stem} in {directory} after {_MAX_NAME_TRIES} tries")


def write_file(directory: str | os.PathLike, basename: str, decoration: str, ext: str, data: bytes,
               add_number: bool = True) -> Path:
    """Encoded picture bytes as A1111 names files: ``NNNNN-decoration.ext`` (``basename-NNNN-…`` with a
    basename), or ``decoration.ext`` alone without a number (save_images_add_number off)."""
    decoration = _fit_name(_UNSAFE.sub("_", decoration).lstrip("-"), Path(directory),
                           len(basename) + 2 * len(ext) + 30)  # "basename-NNNNN-", "-N", ".ext", the write's temp name
    if add_number or not decoration:
        return _save_numbered(Path(directory), basename, f"-{decoration}" if decoration else "", ext, data)
    return _save_named(Path(directory), decoration, ext, data)


def _fit_name(text: str, directory: Path, reserve: int) -> str:
    """`text` cut so the file name fits the file system's limit (A1111 cuts at statvfs' f_namemax too): a long
    prompt in the name pattern must not cost the picture."""
    try:
        limit = os.statvfs(directory if directory.exists() else directory.parent).f_namemax
    except (AttributeError, OSError):  # no statvfs (Windows) or no such folder yet
        limit = 255
    room = max(limit - reserve, 16)
    encoded = text.encode("utf-8")
    if len(encoded) <= room:
        return text
    return encoded[:room].decode("utf-8", errors="ignore").rstrip(" .")


def save_sample(image: Image.Image, directory: str | os.PathLike, seed: int, infotext: str | None,
                fmt: str = "png", basename_suffix: str | None = None, *, options: SaveOptions | None = None,
                fields: NameFields | None = None, pnginfo: Mapping[str, Any] | None = None) -> Path:
    """Save with the infotext embedded; returns the path. Named ``NNNNN-SEED[-suffix].ext`` in ``directory``, or
    as the job's `options` say (subfolder and file name patterns over `fields`, quality, the JPEG copy).

    The directory is created if missing. ``basename_suffix`` is appended after the name, with a ``-`` added if it
    lacks one (A1111's ``-before-highres-fix`` style). The file appears complete or not at all.
    """
    ext = _extension(fmt)
    if options is None:
        data = encode_image(image, ext, infotext, pnginfo=pnginfo)
        return _save_numbered(Path(directory), "", f"-{seed}{_clean_suffix(basename_suffix)}", ext, data)
    data = encode_image(image, ext, infotext, quality=options.quality, webp_lossless=options.webp_lossless,
                        pnginfo=pnginfo)
    fields = fields if fields is not None else NameFields(seed=seed)
    path = write_file(options.folder(directory, fields), "",
                      options.decoration(fields) + _clean_suffix(basename_suffix), ext, data, options.add_number)
    large_copy(image, path, len(data), infotext, options)
    return path


def large_copy(image: Image.Image, path: Path, size: int, infotext: str | None, save: SaveOptions) -> Path | None:
    """A1111's "Save copy of large images as JPG": a picture over the size limit, or wider or taller than the side
    limit (then downscaled to it), also as ``NAME.jpg`` beside it. A JPEG is never replaced by its smaller copy."""
    if save.large_copy_mb is None or path.suffix.lower() in (".jpg", ".jpeg"):
        return None
    side = save.large_copy_side
    oversize = image.width > side or image.height > side
    if not oversize and size <= save.large_copy_mb * 1024 * 1024:
        return None
    if oversize:
        ratio = image.width / image.height
        target = (side, round(image.height * side / image.width)) if ratio > 1 else (
            round(image.width * side / image.height), side)
        image = image.resize(target, Image.Resampling.LANCZOS)
    data = encode_image(image, "jpg", infotext, quality=save.quality)
    return atomic_write_bytes(path.with_suffix(".jpg"), data, overwrite=False)


def save_parameters_file(picture: str | os.PathLike, infotext: str) -> Path:
    """A1111's setting save_txt: the picture's infotext in ``NAME.txt`` beside it."""
    return atomic_write_text(Path(picture).with_suffix(".txt"), f"{infotext}\n")


def save_init_image(image: Image.Image, directory: str | os.PathLike, fmt: str = "png") -> tuple[Path, str]:
    """A1111's "Save init images when using img2img": ``directory/<md5 of the pixels>.ext`` (the same picture is
    written once), keeping the picture's own parameters; returns the path and the hash (the infotext's "Init image
    hash")."""
    import hashlib

    digest = hashlib.md5(image.tobytes()).hexdigest()
    ext = _extension(fmt)
    path = Path(directory) / f"{digest}.{ext}"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            atomic_write_bytes(path, encode_image(image, ext, image.info.get("parameters")), overwrite=False)
        except FileExistsError:  # the same picture, saved by another job a moment ago
            pass
    return path, digest


def save_grid(image: Image.Image, directory: str | os.PathLike, infotext: str | None, fmt: str = "png", *,
              options: SaveOptions | None = None, fields: NameFields | None = None) -> Path:
    """Save a grid as ``directory/grid-NNNN.ext`` (4 digits, continuing from existing grids) — in the subfolder,
    with the name pattern after the number and the quality the job's grid `options` ask for; returns the
    path."""
    ext = _extension(fmt)
    if options is None:
        return _save_numbered(Path(directory), "grid", "", ext, encode_image(image, ext, infotext))
    data = encode_image(image, ext, infotext, quality=options.quality, webp_lossless=options.webp_lossless)
    fields = fields if fields is not None else NameFields()
    decoration = "" if options.short else options.decoration(fields)
    path = write_file(options.folder(directory, fields), "grid", decoration, ext, data, options.add_number)
    large_copy(image, path, len(data), infotext, options)
    return path


# --------------------------------------------------------------------------------------------------------------------
# Grids


def grid_rows(n: int, rows: int | None = None, batch_size: int | None = None, *, n_rows: int = -1,
              prevent_empty_spots: bool = False) -> tuple[int, int]:
    """A1111's grid shape for ``n`` images as ``(rows, cols)``.

    ``rows`` given: used as is. Else the ``n_rows`` option: > 0 fixed, 0 = the batch size, -1 (default) =
    ``round(sqrt(n))`` (or, with ``prevent_empty_spots``, the largest divisor of ``n`` up to ``sqrt(n)``).
    Rows are capped at ``n``; cols = ``ceil(n / rows)``.
    """
    if n <= 0:
        raise ValueError("a grid needs at least one image")
    if rows is None:
        if n_rows > 0:
            rows = n_rows
        elif n_rows == 0:
            rows = batch_size or 1
        elif prevent_empty_spots:
            rows = max(1, math.floor(math.sqrt(n)))
            while n % rows != 0:
                rows -= 1
        else:
            rows = round(math.sqrt(n))
    rows = max(1, min(int(rows), n))
    return rows, math.ceil(n / rows)


def image_grid(images: Sequence[Image.Image], rows: int | None = None, batch_size: int | None = None, *,
               n_rows: int = -1, prevent_empty_spots: bool = False, background: str = GRID_BACKGROUND) -> Image.Image:
    """Paste ``images`` left to right, top to bottom into one RGB image (A1111 ``images.image_grid``).

    Shape from :func:`grid_rows`. Every cell is as large as the largest image; smaller images are centred. The
    background (empty cells) is A1111's default ``grid_background_color``, white.
    """
    images = list(images)
    rows, cols = grid_rows(len(images), rows, batch_size, n_rows=n_rows, prevent_empty_spots=prevent_empty_spots)
    w, h = (max(sizes) for sizes in zip(*(img.size for img in images)))
    grid = Image.new("RGB", size=(cols * w, rows * h), color=ImageColor.getcolor(background, "RGB"))
    for i, img in enumerate(images):
        img_w, img_h = img.size
        w_offset = 0 if img_w == w else (w - img_w) // 2
        h_offset = 0 if img_h == h else (h - img_h) // 2
        grid.paste(img, box=(i % cols * w + w_offset, i // cols * h + h_offset))
    return grid


# --------------------------------------------------------------------------------------------------------------------
# Tiles (A1111 ``images.split_grid`` / ``combine_grid``: SD upscale, Poor man's outpainting)


@dataclass
class Grid:
    """Overlapping tiles of one image. ``tiles`` is A1111's mutable layout, ``[[y, h, [[x, w, tile], …]], …]``, so
    scripts can replace each ``tile`` (item 2) with its processed version before :func:`combine_grid`."""

    tiles: list
    tile_w: int
    tile_h: int
    image_w: int
    image_h: int
    overlap: int


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Evenly spread tile offsets covering ``length`` with neighbours sharing at least ``overlap`` px."""
    if tile >= length:
        return [0]
    step = tile - overlap
    if step <= 0:
        raise ValueError(f"tile overlap ({overlap}) must be smaller than the tile size ({tile})")
    count = math.ceil((length - overlap) / step)
    spacing = (length - tile) / (count - 1) if count > 1 else 0
    return [min(int(i * spacing), length - tile) for i in range(count)]


def split_grid(image: Image.Image, tile_w: int = 512, tile_h: int = 512, overlap: int = 64) -> Grid:
    """Cut ``image`` into ``tile_w``×``tile_h`` tiles (each the full size, the last ones shifted back inside)."""
    w, h = image.size
    tiles = []
    for y in _tile_starts(h, tile_h, overlap):
        row = [[x, tile_w, image.crop((x, y, x + tile_w, y + tile_h))] for x in _tile_starts(w, tile_w, overlap)]
        tiles.append([y, tile_h, row])
    return Grid(tiles, tile_w, tile_h, w, h, overlap)


def _ramp(length: int, across: int, horizontal: bool) -> Image.Image:
    """An L mask fading 0→255 over ``length`` px (along x if ``horizontal``, else along y), ``across`` px wide."""
    vertical = Image.linear_gradient("L").resize((across, length), Image.Resampling.BILINEAR)
    return vertical.transpose(Image.Transpose.TRANSPOSE) if horizontal else vertical


def combine_grid(grid: Grid) -> Image.Image:
    """Paste the tiles back; where neighbours overlap, the later tile fades in linearly over the overlap."""
    result = Image.new("RGB", (grid.image_w, grid.image_h))
    overlap = grid.overlap
    for y, h, row in grid.tiles:
        strip = Image.new("RGB", (grid.image_w, h))
        for x, w, tile in row:
            shared = min(overlap, w) if x > 0 else 0
            if shared:
                strip.paste(tile.crop((0, 0, shared, h)), (x, 0), _ramp(shared, h, horizontal=True))
            strip.paste(tile.crop((shared, 0, w, h)), (x + shared, 0))
        shared = min(overlap, h) if y > 0 else 0
        if shared:
            result.paste(strip.crop((0, 0, grid.image_w, shared)), (0, y), _ramp(shared, grid.image_w,
                                                                                   horizontal=False))
        result.paste(strip.crop((0, shared, grid.image_w, h)), (0, y + shared))
    return result


def __getattr__(name: str):
    """A1111's grid-label names (``GridAnnotation``, ``draw_grid_annotations``, ``draw_prompt_matrix``)."""
    if name in ("GridAnnotation", "draw_grid_annotations", "draw_prompt_matrix"):
        from modules import grid_labels

        return getattr(grid_labels, name)
    from modules import a1111

    return a1111.names_from(__name__)(name)

"""A1111's `modules.images` names beyond ours (resize with an upscaler, infotext reading, flattening)."""
from __future__ import annotations

from PIL import Image

__all__ = ["resize_image", "read_info_from_image", "flatten", "image_data", "sanitize_filename_part",
           "FilenameGenerator", "save_image", "save_image_with_geninfo", "IGNORED_INFO_KEYS", "LANCZOS", "NEAREST"]

LANCZOS = Image.Resampling.LANCZOS
NEAREST = Image.Resampling.NEAREST
IGNORED_INFO_KEYS = {"jfif", "jfif_version", "jfif_unit", "jfif_density", "dpi", "exif", "loop", "background",
                     "timestamp", "duration", "progressive", "progression", "icc_profile", "chromaticity", "photoshop"}


def resize_image(resize_mode, im, width, height, upscaler_name=None, force_RGBA=False):  # noqa: N803 - A1111's name
    """A1111: 0 just resize, 1 crop and resize, 2 resize and fill, 3 latent (= just resize here). With
    `upscaler_name`, enlarging goes through that upscaler first."""
    from modules.resize import resize_image as fit

    if upscaler_name and (im.width < width or im.height < height):
        from modules.a1111._engine import engine

        scale = max(width / im.width, height / im.height)
        im = engine().upscalers.upscale(im, upscaler_name, float(scale))
    if not force_RGBA and im.mode == "RGBA":
        im = im.convert("RGB")
    return fit(int(resize_mode), im, int(width), int(height))


def read_info_from_image(image: Image.Image):
    """(infotext or None, the other info items), as A1111's PNG Info reads them."""
    from modules.images import read_infotext

    items = dict(image.info or {})
    geninfo = read_infotext(image)
    items.pop("parameters", None)
    for key in IGNORED_INFO_KEYS:
        items.pop(key, None)
    return geninfo, items


def image_data(data: bytes):
    import io

    try:
        image = Image.open(io.BytesIO(data))
        textinfo, _ = read_info_from_image(image)
        return textinfo, None
    except Exception:  # noqa: BLE001 - A1111: not an image → the bytes as text
        pass
    try:
        return data.decode("utf8")[:1024 * 16], None
    except UnicodeDecodeError:
        return "", None


def flatten(img: Image.Image, bgcolor) -> Image.Image:
    """An RGB copy of `img` with any transparency composited over `bgcolor`."""
    if img.mode == "RGBA":
        background = Image.new("RGBA", img.size, bgcolor)
        background.paste(img, mask=img)
        img = background
    return img.convert("RGB")


def sanitize_filename_part(text, replace_spaces=True):
    from modules.filename_pattern import sanitize_part

    return sanitize_part(text, replace_spaces)


def _fields(p, seed, prompt, image):
    """A1111's `p` (or None) as what a file name can be made of (modules.filename_pattern)."""
    from modules import shared
    from modules.filename_pattern import NameFields

    engine = shared.engine
    model = engine.models.current if engine is not None and engine.models is not None else None
    styles = list(getattr(p, "styles", None) or [])
    style_prompts = []
    if styles and engine is not None and engine.styles is not None:
        style_prompts = list(engine.styles.get_style_prompts(styles))
    return NameFields(
        seed=seed, prompt=prompt or "", negative_prompt=getattr(p, "negative_prompt", "") or "", styles=styles,
        style_prompts=style_prompts, steps=getattr(p, "steps", None), cfg_scale=getattr(p, "cfg_scale", None),
        width=getattr(p, "width", None), height=getattr(p, "height", None),
        sampler=getattr(p, "sampler_name", "") or "", scheduler=getattr(p, "scheduler", "") or "",
        model_name=model.name.rsplit(".", 1)[0] if model is not None else "",
        model_hash=(model.shorthash or "") if model is not None else "",
        vae_name=model.vae_name if model is not None else None,
        clip_skip=shared.opts.data.get("CLIP_stop_at_last_layers", 1),
        denoising_strength=getattr(p, "denoising_strength", None), all_seeds=list(getattr(p, "all_seeds", []) or []),
        batch_size=getattr(p, "batch_size", 1) or 1, n_iter=getattr(p, "n_iter", 1) or 1,
        batch_index=getattr(p, "batch_index", 0) or 0, iteration=getattr(p, "iteration", 0) or 0,
        job_timestamp=getattr(p, "job_timestamp", "") or getattr(shared.state, "job_timestamp", ""),
        user=getattr(p, "user", None),
        image=image)


class FilenameGenerator:
    """A1111's `[seed]`/`[prompt_words]`/`[datetime<…>]`/… pattern expander (modules/filename_pattern.py)."""

    def __init__(self, p, seed, prompt, image=None, zip=False, basename=""):  # noqa: A002 - A1111's name
        self.p, self.seed, self.prompt, self.image, self.zip, self.basename = p, seed, prompt, image, zip, basename

    def apply(self, x: str) -> str:
        from modules import shared
        from modules.filename_pattern import expand

        fields = _fields(self.p, self.seed, self.prompt, self.image)
        if self.zip:  # A1111: a zip's names leave the per-picture numbers out
            fields.batch_size, fields.n_iter = 1, 1
        x = x.replace("[basename]", self.basename or "img")
        return expand(x, fields, int(shared.opts.data.get("directories_max_prompt_words", 8) or 8))


def save_image(image, path, basename, seed=None, prompt=None, extension="png", info=None, short_filename=False,
               no_prompt=False, grid=False, pnginfo_section_name="parameters", p=None, existing_info=None,
               forced_filename=None, suffix="", save_to_dirs=None):
    """A1111's images.save_image, as extensions call it: into `path` (its subfolder per `save_to_dirs` and the
    settings' folder pattern), named by the settings' file name pattern (or `forced_filename`), the infotext `info`
    inside, the image-saved callbacks around it and NAME.txt when save_txt; returns (file, parameters file or
    None)."""
    from pathlib import Path

    from modules import images, script_callbacks, shared

    opts = shared.opts.data
    fields = _fields(p, seed, prompt, image)
    if save_to_dirs is None:
        save_to_dirs = (grid and opts.get("grid_save_to_dirs", True)) or (
            not grid and opts.get("save_to_dirs", True) and not no_prompt)
    save = images.SaveOptions.from_options(lambda name, default: opts.get(name, default), grid=grid)
    save.folder_pattern = (opts.get("directories_filename_pattern") or "[prompt_words]") if save_to_dirs else None
    folder = save.folder(Path(path), fields)
    params = script_callbacks.ImageSaveParams(image, p, str(folder), dict(existing_info or {}))
    if info is not None:
        params.pnginfo[pnginfo_section_name] = info
    script_callbacks.before_image_saved_callback(params)
    pnginfo = dict(params.pnginfo or {})
    text = pnginfo.pop("parameters", None)
    ext = str(extension or "png").lstrip(".").lower()
    data = images.encode_image(params.image, ext, text, quality=save.quality, webp_lossless=save.webp_lossless,
                               pnginfo={k: str(v) for k, v in pnginfo.items()} or None)
    if forced_filename is not None:
        target = folder / f"{forced_filename}.{ext}"
        target.parent.mkdir(parents=True, exist_ok=True)
        from modules.fileio import atomic_write_bytes

        fullfn = atomic_write_bytes(target, data)
    else:
        decoration = ("" if short_filename or seed is None else save.decoration(fields)) + (suffix or "")
        fullfn = images.write_file(folder, basename or "", decoration, ext, data, save.add_number or not decoration)
    images.large_copy(params.image, Path(fullfn), len(data), text, save)
    params.filename = str(fullfn)
    script_callbacks.image_saved_callback(params)
    txt_fullfn = None
    if opts.get("save_txt", False) and info is not None:
        txt_fullfn = str(images.save_parameters_file(fullfn, info))
    return str(fullfn), txt_fullfn


def save_image_with_geninfo(image, geninfo, filename, extension=None, existing_pnginfo=None, pnginfo_section_name="parameters"):
    """Write `image` to `filename` with `geninfo` as its infotext (atomically)."""
    from pathlib import Path

    from modules import fileio
    from modules.images import encode_image

    fmt = (extension or Path(filename).suffix).lstrip(".").lower() or "png"
    data = encode_image(image, fmt, geninfo)
    fileio.atomic_write_bytes(filename, data)

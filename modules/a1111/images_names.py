"""A1111's `modules.images` names beyond ours (resize with an upscaler, infotext reading, flattening)."""
from __future__ import annotations

from PIL import Image

__all__ = ["resize_image", "read_info_from_image", "flatten", "image_data", "sanitize_filename_part",
           "FilenameGenerator", "save_image_with_geninfo", "IGNORED_INFO_KEYS", "LANCZOS", "NEAREST"]

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
    if text is None:
        return None
    if replace_spaces:
        text = text.replace(" ", "_")
    text = text.translate({ord(x): "_" for x in '<>:"/\\|?*\n\r\t'})
    return text.lstrip()[:128].rstrip(". ")


class FilenameGenerator:
    """A1111's [seed]/[prompt]/… pattern expander, for the few tags extensions use."""

    def __init__(self, p, seed, prompt, image=None, zip=False, basename=""):  # noqa: A002 - A1111's name
        self.p, self.seed, self.prompt, self.image, self.basename = p, seed, prompt, image, basename

    def apply(self, x: str) -> str:
        import re

        values = {"seed": self.seed, "prompt": sanitize_filename_part(self.prompt or ""),
                  "steps": getattr(self.p, "steps", ""), "cfg": getattr(self.p, "cfg_scale", ""),
                  "width": getattr(self.p, "width", ""), "height": getattr(self.p, "height", ""),
                  "sampler": getattr(self.p, "sampler_name", ""), "basename": self.basename}

        def sub(m):
            return str(values.get(m.group(1).lower(), m.group(0)))

        return re.sub(r"\[(\w+)\]", sub, x)


def save_image_with_geninfo(image, geninfo, filename, extension=None, existing_pnginfo=None, pnginfo_section_name="parameters"):
    """Write `image` to `filename` with `geninfo` as its infotext (atomically)."""
    from pathlib import Path

    from modules import fileio
    from modules.images import encode_image

    fmt = (extension or Path(filename).suffix).lstrip(".").lower() or "png"
    data = encode_image(image, fmt, geninfo)
    fileio.atomic_write_bytes(filename, data)

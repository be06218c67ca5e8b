"""Extras: upscale an image with a built-in resampler (one or two blended), keeping its generation parameters and
adding A1111's "Postprocess upscale by / to" and "Postprocess upscaler" keys. The Extras tab and the API's
extra-single-image / extra-batch-images both use this."""
from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from modules import images as images_mod

UPSCALERS = {"None": None, "Lanczos": Image.Resampling.LANCZOS, "Nearest": Image.Resampling.NEAREST}
MAX_DIM = 8192


class UnknownUpscalerError(ValueError):
    """The named upscaler is not available; the message lists the ones that are."""


@dataclass
class Upscaled:
    image: Image.Image
    original_infotext: str | None
    params: dict = field(default_factory=dict)

    @property
    def params_text(self) -> str:
        return ", ".join(f"{k}: {v}" for k, v in self.params.items())


def upscale(image: Image.Image, upscaler: str = "Lanczos", scale: float | None = 2.0, width: int = 0,
            height: int = 0, *, upscaler_2: str = "None", upscaler_2_visibility: float = 0.0,
            crop: bool = True) -> Upscaled:
    """Scale by `scale`, or (width and height given) cover width×height and crop to it, as A1111's Extras do."""
    for name in (upscaler, upscaler_2):
        if name not in UPSCALERS:
            raise UnknownUpscalerError(f"upscaler {name!r} not found; available: {', '.join(UPSCALERS)}")
    original = images_mod.read_infotext(image)
    if width and height:
        tw, th = int(width), int(height)
        factor = max(tw / image.width, th / image.height)
    else:
        factor = float(scale or 1.0)
        if not 0 < factor <= 8:
            raise ValueError(f"upscale factor must be between 0 and 8, got {factor}")
        tw, th = int(image.width * factor), int(image.height * factor)
    sw, sh = max(1, round(image.width * factor)), max(1, round(image.height * factor))
    if max(sw, sh, tw, th) > MAX_DIM:
        raise ValueError(f"the upscaled image would be {sw}x{sh}; the limit is {MAX_DIM} per side")
    if upscaler == "None":
        return Upscaled(image, original)
    work = image if image.mode in ("RGB", "RGBA") else image.convert("RGB")
    out = work.resize((sw, sh), UPSCALERS[upscaler])
    params: dict = {}
    if width and height:
        params["Postprocess upscale to"] = f"{tw}x{th}"
    else:
        params["Postprocess upscale by"] = f"{factor:g}"
    params["Postprocess upscaler"] = upscaler
    if upscaler_2 != "None" and upscaler_2_visibility > 0:
        second = work.resize((sw, sh), UPSCALERS[upscaler_2])
        out = Image.blend(out.convert("RGB"), second.convert("RGB"), upscaler_2_visibility)
        params["Postprocess upscaler 2"] = upscaler_2
    if width and height and crop and (sw, sh) != (tw, th):
        left, top = (sw - tw) // 2, (sh - th) // 2
        out = out.crop((left, top, left + tw, top + th))
    # A1111 keeps the image's `parameters` and adds a `postprocessing` text chunk.
    out.info = {**{k: v for k, v in (image.info or {}).items() if isinstance(v, str)},
                "postprocessing": ", ".join(f"{k}: {v}" for k, v in params.items())}
    return Upscaled(out, original, params)

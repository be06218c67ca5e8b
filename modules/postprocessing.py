"""Extras: upscale an image with a built-in resampler, keeping its generation parameters and adding A1111's
"Postprocess upscale by / to" and "Postprocess upscaler" keys."""
from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from modules import images as images_mod

UPSCALERS = {"None": None, "Lanczos": Image.Resampling.LANCZOS, "Nearest": Image.Resampling.NEAREST}


@dataclass
class Upscaled:
    image: Image.Image
    infotext: str


def upscale(image: Image.Image, upscaler: str = "Lanczos", scale: float | None = 2.0,
            width: int | None = None, height: int | None = None) -> Upscaled:
    """Scale by `scale`, or to width×height when both are given; unknown upscaler → ValueError listing the valid."""
    if upscaler not in UPSCALERS:
        raise ValueError(f"upscaler {upscaler!r} is not available; valid: {', '.join(UPSCALERS)}")
    original = images_mod.read_infotext(image) or ""
    rgb = image.convert("RGB")
    if width and height:
        target, note = (int(width), int(height)), f"Postprocess upscale to: {int(width)}x{int(height)}"
    else:
        scale = float(scale or 1.0)
        if not 0.1 <= scale <= 8:
            raise ValueError(f"upscale factor must be between 0.1 and 8, got {scale}")
        target = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        note = f"Postprocess upscale by: {scale:g}"
    if target[0] * target[1] > 8192 * 8192:
        raise ValueError(f"{target[0]}x{target[1]} is too large")
    resample = UPSCALERS[upscaler]
    out = rgb if resample is None else rgb.resize(target, resample)
    params = f"{note}, Postprocess upscaler: {upscaler}"
    text = f"{original}\n{params}" if original else params
    return Upscaled(out, text)

"""A1111's img2img resize modes, in pixels (mode 3, latent upscale, is done on latents by the caller)."""
from __future__ import annotations

from typing import Callable

from PIL import Image

JUST_RESIZE, CROP_AND_RESIZE, RESIZE_AND_FILL, LATENT_RESIZE = 0, 1, 2, 3
RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")
LANCZOS = Image.Resampling.LANCZOS


def resize_image(mode: int, im: Image.Image, width: int, height: int,
                 upscale: Callable[[Image.Image, int, int], Image.Image] | None = None) -> Image.Image:
    """Fit `im` into width×height: stretch (0/3), crop to fill (1), or fit and fill the borders (2). With
    `upscale` (A1111's setting "Upscaler for img2img"), a picture that must grow grows through it (a mask, mode L,
    never does)."""
    def fit(image: Image.Image, w: int, h: int) -> Image.Image:
        if upscale is not None and image.mode != "L" and (w > image.width or h > image.height):
            grown = upscale(image, w, h)
            return grown if grown.size == (w, h) else grown.resize((w, h), LANCZOS)
        return image.resize((w, h), LANCZOS)

    if mode in (JUST_RESIZE, LATENT_RESIZE):
        return fit(im, width, height)
    ratio = width / height
    src_ratio = im.width / im.height
    if mode == CROP_AND_RESIZE:
        src_w = width if ratio > src_ratio else im.width * height // im.height
        src_h = height if ratio <= src_ratio else im.height * width // im.width
        resized = fit(im, src_w, src_h)
        res = Image.new(im.mode, (width, height))
        res.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
        return res
    if mode == RESIZE_AND_FILL:
        src_w = width if ratio < src_ratio else im.width * height // im.height
        src_h = height if ratio >= src_ratio else im.height * width // im.width
        resized = fit(im, src_w, src_h)
        res = Image.new(im.mode, (width, height))
        res.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
        if ratio < src_ratio:
            fill_height = height // 2 - src_h // 2
            if fill_height > 0:
                res.paste(resized.resize((width, fill_height), box=(0, 0, width, 0)), box=(0, 0))
                res.paste(resized.resize((width, fill_height), box=(0, resized.height, width, resized.height)),
                          box=(0, fill_height + src_h))
        elif ratio > src_ratio:
            fill_width = width // 2 - src_w // 2
            if fill_width > 0:
                res.paste(resized.resize((fill_width, height), box=(0, 0, 0, height)), box=(0, 0))
                res.paste(resized.resize((fill_width, height), box=(resized.width, 0, resized.width, height)),
                          box=(fill_width + src_w, 0))
        return res
    raise ValueError(f"resize_mode must be 0-3 ({', '.join(RESIZE_MODES)}), got {mode}")

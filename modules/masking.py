"""Inpainting masks as A1111 handles them: blur, invert, the "only masked" crop region, "fill" and compositing."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps


def prepare_mask(mask: Image.Image, size: tuple[int, int], invert: bool, blur_x: int, blur_y: int) -> Image.Image:
    """An L-mode mask (white = repaint) at the init image's size, inverted and blurred as asked."""
    mask = mask.convert("RGBA") if mask.mode in ("P", "LA") else mask
    if mask.mode == "RGBA" and mask.getextrema()[3][0] < 255:
        # A transparent-background drawing: painted pixels are the opaque ones.
        mask = mask.getchannel("A")
    mask = mask.convert("L")
    if mask.size != size:
        mask = mask.resize(size, Image.Resampling.LANCZOS)
    if invert:
        mask = ImageOps.invert(mask)
    return blur(mask, blur_x, blur_y)


def blur(mask: Image.Image, blur_x: int, blur_y: int) -> Image.Image:
    """Separable Gaussian blur with A1111's kernel size (2·⌊2.5σ+0.5⌋+1) along each axis."""
    if blur_x <= 0 and blur_y <= 0:
        return mask
    arr = np.asarray(mask, dtype=np.float32)
    if blur_x > 0:
        arr = _blur_axis(arr, blur_x, axis=1)
    if blur_y > 0:
        arr = _blur_axis(arr, blur_y, axis=0)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")


def _blur_axis(arr: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    radius = int(2.5 * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float32)
    kernel = np.exp(-(x * x) / (2 * sigma * sigma))
    kernel /= kernel.sum()
    pad = [(0, 0), (0, 0)]
    pad[axis] = (radius, radius)
    padded = np.pad(arr, pad, mode="reflect")
    return np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="valid"), axis, padded)


def crop_region(mask: Image.Image, pad: int = 0) -> tuple[int, int, int, int] | None:
    """Bounding box (x1, y1, x2, y2) of the non-zero mask pixels grown by `pad`, or None for an empty mask."""
    box = mask.getbbox()
    if box is None:
        return None
    x1, y1, x2, y2 = box
    w, h = mask.size
    return max(x1 - pad, 0), max(y1 - pad, 0), min(x2 + pad, w), min(y2 + pad, h)


def expand_crop_region(region, target_w: int, target_h: int, image_w: int, image_h: int):
    """Grow the crop box to the target aspect ratio (A1111's expand_crop_region), staying inside the image."""
    x1, y1, x2, y2 = region
    ratio_crop = (x2 - x1) / (y2 - y1)
    ratio_target = target_w / target_h
    if ratio_crop > ratio_target:
        desired_h = (x2 - x1) / ratio_target
        diff = int(desired_h - (y2 - y1))
        y1 -= diff // 2
        y2 += diff - diff // 2
        if y2 >= image_h:
            diff = y2 - image_h
            y2 -= diff
            y1 -= diff
        if y1 < 0:
            y2 -= y1
            y1 -= y1
        if y2 >= image_h:
            y2 = image_h
    else:
        desired_w = (y2 - y1) * ratio_target
        diff = int(desired_w - (x2 - x1))
        x1 -= diff // 2
        x2 += diff - diff // 2
        if x2 >= image_w:
            diff = x2 - image_w
            x2 -= diff
            x1 -= diff
        if x1 < 0:
            x2 -= x1
            x1 -= x1
        if x2 >= image_w:
            x2 = image_w
    return x1, y1, x2, y2


def fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's "fill" masked content: paint the masked area with ever blurrier copies of the surroundings."""
    image_mod = Image.new("RGBA", (image.width, image.height))
    image_masked = Image.new("RGBa", (image.width, image.height))
    image_masked.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    image_masked = image_masked.convert("RGBa")
    for radius, repeats in [(256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)]:
        blurred = image_masked.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            image_mod.alpha_composite(blurred)
    return image_mod.convert("RGB")


def composite(original: Image.Image, generated: Image.Image, mask: Image.Image) -> Image.Image:
    """Put the original back wherever the (blurred) mask is not white, so unmasked pixels come back unchanged."""
    base = generated.convert("RGB")
    if base.size != original.size:
        base = base.resize(original.size, Image.Resampling.LANCZOS)
    keep = ImageOps.invert(mask.convert("L"))
    out = base.copy()
    out.paste(original.convert("RGB"), (0, 0), keep)
    return out


def sketch_to_inpaint(original: Image.Image, sketch: Image.Image, mask_blur: int = 4,
                      mask_alpha: float = 0) -> tuple[Image.Image, Image.Image]:
    """A1111's "Inpaint sketch" (img2img mode 3): (init image, mask) from the picture and the picture painted over.

    The mask is white wherever the sketch differs from the original, dimmed by "Mask transparency" (`mask_alpha`,
    0–100: 50 gives a mask of 127). The init image is the original with the painted colours laid in through that
    mask, both blurred by `mask_blur` (PIL's Gaussian, as A1111), so sampling starts from the colours. The mask is
    returned unblurred: the inpaint step blurs it by `mask_blur` again, as A1111 does."""
    orig = original.convert("RGB")
    painted = sketch.convert("RGB")
    if painted.size != orig.size:
        painted = painted.resize(orig.size, Image.Resampling.LANCZOS)
    differs = np.any(np.asarray(painted) != np.asarray(orig), axis=-1)
    mask = Image.fromarray(differs.astype(np.uint8) * 255, "L")
    mask = ImageEnhance.Brightness(mask).enhance(1 - float(mask_alpha or 0) / 100)
    soften = ImageFilter.GaussianBlur(max(0, int(mask_blur or 0)))
    init = Image.composite(painted.filter(soften), orig, mask.filter(soften))
    return init.convert("RGB"), mask


def __getattr__(name: str):
    """A1111's names beyond ours, for extensions (modules/a1111/masking_names.py)."""
    from modules import a1111

    return a1111.names_from(__name__)(name)

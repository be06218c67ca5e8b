"""Outpainting: grow the canvas by N pixels on any side and mark the new area (plus a small overlap for a seamless
blend) as the inpainting mask; the new area starts as a stretch of the nearest edge so "fill" has colours to use."""
from __future__ import annotations

from PIL import Image

OVERLAP = 8  # pixels of the original that are repainted too, so the seam is blended, not cut


def extend_canvas(image: Image.Image, mask: Image.Image | None, left: int, right: int, up: int, down: int,
                  multiple: int = 8) -> tuple[Image.Image, Image.Image]:
    """The larger picture and its mask (white = to paint); sizes rounded up to a multiple of `multiple`."""
    left, right, up, down = (max(0, int(v)) for v in (left, right, up, down))
    if not any((left, right, up, down)):
        raise ValueError("Outpaint: give at least one side a number of pixels to extend by")
    image = image.convert("RGB")
    w, h = image.size
    new_w, new_h = w + left + right, h + up + down
    right += (-new_w) % multiple
    down += (-new_h) % multiple
    new_w, new_h = w + left + right, h + up + down

    canvas = image.resize((new_w, new_h), Image.Resampling.BICUBIC)  # edge colours everywhere as a start
    if left:
        canvas.paste(image.crop((0, 0, 1, h)).resize((left, h)), (0, up))
    if right:
        canvas.paste(image.crop((w - 1, 0, w, h)).resize((right, h)), (left + w, up))
    if up:
        canvas.paste(canvas.crop((0, up, new_w, up + 1)).resize((new_w, up)), (0, 0))
    if down:
        canvas.paste(canvas.crop((0, up + h - 1, new_w, up + h)).resize((new_w, down)), (0, up + h))
    canvas.paste(image, (left, up))

    new_mask = Image.new("L", (new_w, new_h), 255)
    keep = Image.new("L", (w, h), 0)
    new_mask.paste(keep, (left, up))
    # Repaint a thin band of the original along each extended side so the blur blends across the seam.
    if left:
        new_mask.paste(255, (left, up, min(left + OVERLAP, left + w), up + h))
    if right:
        new_mask.paste(255, (max(left, left + w - OVERLAP), up, left + w, up + h))
    if up:
        new_mask.paste(255, (left, up, left + w, min(up + OVERLAP, up + h)))
    if down:
        new_mask.paste(255, (left, max(up, up + h - OVERLAP), left + w, up + h))
    if mask is not None:
        old = mask.convert("L").resize((w, h))
        band = new_mask.crop((left, up, left + w, up + h))
        new_mask.paste(Image.fromarray(_max(band, old)), (left, up))
    return canvas, new_mask


def _max(a: Image.Image, b: Image.Image):
    import numpy as np

    return np.maximum(np.asarray(a), np.asarray(b))


def processing_size(size: tuple[int, int]) -> tuple[int, int]:
    return size[0], size[1]

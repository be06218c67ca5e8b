"""A1111's `modules.masking` names: the crop region of a mask (PIL image or numpy array, as A1111 accepts)."""
from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["get_crop_region", "get_crop_region_v2", "expand_crop_region", "fill"]


def get_crop_region_v2(mask, pad=0):
    """(x1, y1, x2, y2) of the non-zero part of `mask` grown by `pad`, or None when it is empty."""
    from modules.masking import crop_region

    image = mask if isinstance(mask, Image.Image) else Image.fromarray(np.asarray(mask).astype(np.uint8))
    return crop_region(image.convert("L"), pad)


def get_crop_region(mask, pad=0):
    """A1111's older contract: an empty mask gives the whole image."""
    box = get_crop_region_v2(mask, pad)
    if box is not None:
        return box
    w, h = mask.size if isinstance(mask, Image.Image) else (np.asarray(mask).shape[1], np.asarray(mask).shape[0])
    return 0, 0, w, h


def expand_crop_region(crop_region, processing_width, processing_height, image_width, image_height):
    from modules.masking import expand_crop_region as expand

    return expand(crop_region, processing_width, processing_height, image_width, image_height)


def fill(image, mask):
    from modules.masking import fill as ours

    return ours(image, mask)

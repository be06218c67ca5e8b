"""Fitting a detected map to the picture's size with the extension's three resize modes, and handing it to the model.

Resampling follows the extension's rules for control maps: maps with a few flat colours (segmentation, poses) are
resized nearest-neighbour so no new colours appear; black-and-white edge maps are re-thresholded after resizing so
edges stay crisp; other maps use area averaging to shrink and bicubic to grow.
- Just Resize: stretch to the size.
- Crop and Resize: scale to cover, crop the middle.
- Resize and Fill: scale to fit inside, fill the rest with the median colour of the map's border.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
from PIL import Image

RESIZE, INNER_FIT, OUTER_FIT = "Just Resize", "Crop and Resize", "Resize and Fill"


def fit(image: Image.Image, width: int, height: int, mode: str = INNER_FIT) -> Image.Image:
    """The map at exactly (width, height)."""
    array = np.asarray(image.convert("RGB"))
    if array.shape[:2] == (height, width):
        return image.convert("RGB")
    h, w = array.shape[:2]
    if mode == RESIZE:
        return Image.fromarray(_resize(array, width, height))
    if mode == OUTER_FIT:
        k = min(height / h, width / w)
        inner = _resize(array, max(1, round(w * k)), max(1, round(h * k)))
        border = np.concatenate([array[0], array[-1], array[:, 0], array[:, -1]])
        out = np.empty((height, width, 3), np.uint8)
        out[:] = np.median(border, axis=0).astype(np.uint8)
        top, left = (height - inner.shape[0]) // 2, (width - inner.shape[1]) // 2
        out[top:top + inner.shape[0], left:left + inner.shape[1]] = inner
        return Image.fromarray(out)
    k = max(height / h, width / w)
    cover = _resize(array, max(width, round(w * k)), max(height, round(h * k)))
    top, left = (cover.shape[0] - height) // 2, (cover.shape[1] - width) // 2
    return Image.fromarray(np.ascontiguousarray(cover[top:top + height, left:left + width]))


def _resize(array: np.ndarray, width: int, height: int) -> np.ndarray:
    if array.shape[:2] == (height, width):
        return array
    colours = len(np.unique(array.reshape(-1, 3), axis=0))
    binary = colours == 2 and array.min() < 16 and array.max() > 240
    if 2 < colours < 200:
        interpolation = cv2.INTER_NEAREST
    elif width * height < array.shape[0] * array.shape[1]:
        interpolation = cv2.INTER_AREA
    else:
        interpolation = cv2.INTER_CUBIC
    out = cv2.resize(array, (width, height), interpolation=interpolation)
    if binary:
        grey = out.astype(np.float32).mean(axis=2).clip(0, 255).astype(np.uint8)
        _, grey = cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        out = np.stack([grey] * 3, axis=2)
    return out


def to_tensor(image: Image.Image) -> torch.Tensor:
    """(1, 3, H, W) float in [0, 1], as diffusers' control image processor gives it."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()

"""Run an image model over overlapping tiles so memory stays bounded by the tile size, not the image size.

Tiles are full-size windows spaced so that neighbours share at least 2·overlap pixels; each is run through the
model and only its core is kept, the cores meeting halfway through the shared parts. A pixel of the result thus
sees at least `overlap` pixels around it, like the untiled run, so there are no seams to blend away; what differs
from an untiled run is only what lies beyond the overlap in the model's receptive field, tiny for the 8 px default.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
from tqdm import tqdm

TileFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Tile:
    """One tile: `core` is the part of the result it supplies, `window` the input it reads (core plus context);
    both are (x0, y0, x1, y1) in input pixels."""

    core: tuple[int, int, int, int]
    window: tuple[int, int, int, int]


def _spans(length: int, tile: int, overlap: int) -> Iterator[tuple[int, int, int, int]]:
    """(core start, core end, window start, window end) along one axis: the fewest full-size windows whose
    neighbours overlap by at least 2·overlap, evenly spaced; each core ends halfway through the shared part."""
    if length <= tile:
        yield 0, length, 0, length
        return
    n = 1 + math.ceil((length - tile) / (tile - 2 * overlap))
    starts = [round(i * (length - tile) / (n - 1)) for i in range(n)]
    for i, start in enumerate(starts):
        core0 = 0 if i == 0 else (starts[i - 1] + tile + start) // 2
        core1 = length if i == n - 1 else (start + tile + starts[i + 1]) // 2
        yield core0, core1, start, start + tile


def plan_tiles(width: int, height: int, tile: int, overlap: int) -> list[Tile]:
    """The tiles covering a width×height image; one tile when tiling is off (`tile` 0) or the image fits."""
    if tile <= 0:
        return [Tile((0, 0, width, height), (0, 0, width, height))]
    overlap = max(0, min(overlap, (tile - 1) // 2))
    return [Tile((x0, y0, x1, y1), (wx0, wy0, wx1, wy1))
            for y0, y1, wy0, wy1 in _spans(height, tile, overlap)
            for x0, x1, wx0, wx1 in _spans(width, tile, overlap)]


def run_tiled(fn: TileFn, pixels: np.ndarray, scale: int, tile: int, overlap: int) -> np.ndarray:
    """`fn` maps an (h, w, c) uint8 tile to its (h·scale, w·scale, c') upscaled uint8 version; returns the whole
    upscaled image. The result is assembled in uint8 so only one tile is ever in float/GPU memory."""
    height, width = pixels.shape[:2]
    tiles = plan_tiles(width, height, tile, overlap)
    out: np.ndarray | None = None
    for t in tqdm(tiles, desc="Tiles", unit="tile", disable=len(tiles) < 2, leave=False):
        x0, y0, x1, y1 = t.core
        wx0, wy0, wx1, wy1 = t.window
        result = fn(pixels[wy0:wy1, wx0:wx1])
        expected = ((wy1 - wy0) * scale, (wx1 - wx0) * scale)
        if result.shape[:2] != expected:
            raise ValueError(f"the model returned a {result.shape[1]}x{result.shape[0]} tile for a "
                             f"{wx1 - wx0}x{wy1 - wy0} input; expected scale {scale}")
        if out is None:
            out = np.empty((height * scale, width * scale, result.shape[2]), dtype=np.uint8)
        cy, cx = (y0 - wy0) * scale, (x0 - wx0) * scale
        out[y0 * scale:y1 * scale, x0 * scale:x1 * scale] = \
            result[cy:cy + (y1 - y0) * scale, cx:cx + (x1 - x0) * scale]
    assert out is not None
    return out

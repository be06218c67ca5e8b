"""The demo model's synthetic world: one circle, square or triangle in one of six colours on a plain background.

Used to train the bundled demo checkpoint from scratch (`demo_recipe`) and to read its pictures back (tests and
`bench/demo_accuracy.py`): `read_scene` tells the colour in the centre, the colour in the corners and the shape
from its fill ratio (the fraction of its bounding box it covers: circle π/4, square 1, triangle ½).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
SHAPES = ("circle", "square", "triangle")
FILL_RATIO = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}
SUPERSAMPLE = 4


@dataclass(frozen=True)
class Scene:
    """What one picture shows; its caption is the prompt that should draw it."""

    shape: str
    colour: str
    background: str

    @property
    def caption(self) -> str:
        return f"a {self.colour} {self.shape} on a {self.background} background"


@dataclass(frozen=True)
class SceneReading:
    """What `read_scene` sees in a generated picture."""

    colour: str
    background: str
    shape: str
    fill_ratio: float


def all_scenes() -> list[Scene]:
    """The 90 combinations: 3 shapes × 6 colours × 5 other background colours."""
    return [Scene(s, c, b) for s in SHAPES for c in COLOURS for b in COLOURS if b != c]


def draw(scene: Scene, rng: np.random.Generator, size: int = 64) -> Image.Image:
    """One anti-aliased picture: the shape covers the centre and keeps clear of the corners.

    Half-size 12–20 px and an offset of at most 4 px (at 64 px, scaled with `size`).
    """
    s = size / 64
    half = rng.uniform(12, 20) * s
    cx, cy = size / 2 + rng.uniform(-4, 4, 2) * s
    big = size * SUPERSAMPLE
    img = Image.new("RGB", (big, big), COLOURS[scene.background])
    pen = ImageDraw.Draw(img)
    box = [(cx - half) * SUPERSAMPLE, (cy - half) * SUPERSAMPLE, (cx + half) * SUPERSAMPLE, (cy + half) * SUPERSAMPLE]
    fill = COLOURS[scene.colour]
    if scene.shape == "circle":
        pen.ellipse(box, fill=fill)
    elif scene.shape == "square":
        pen.rectangle(box, fill=fill)
    else:
        pen.polygon([((box[0] + box[2]) / 2, box[1]), (box[0], box[3]), (box[2], box[3])], fill=fill)
    return img.resize((size, size), Image.Resampling.BOX)


def make_dataset(count: int, seed: int, size: int = 64) -> tuple[np.ndarray, list[Scene]]:
    """`count` pictures (uint8, N×H×W×3) cycling through every scene in a seeded random order."""
    rng = np.random.default_rng(seed)
    scenes = all_scenes()
    order = np.concatenate([rng.permutation(len(scenes)) for _ in range(-(-count // len(scenes)))])[:count]
    picked = [scenes[i] for i in order]
    pixels = np.stack([np.asarray(draw(sc, rng, size)) for sc in picked])
    return pixels, picked


def nearest_colour(rgb) -> str:
    """The palette colour closest to `rgb` (Euclidean in RGB)."""
    rgb = np.asarray(rgb, dtype=np.float64)
    return min(COLOURS, key=lambda name: float(np.sum((rgb - np.asarray(COLOURS[name])) ** 2)))


def _patch_colour(pixels: np.ndarray) -> np.ndarray:
    return np.median(pixels.reshape(-1, 3), axis=0)


def centre_rgb(image: Image.Image) -> np.ndarray:
    """Median colour of the central 1/16 × 1/16 patch (where every training shape is)."""
    a = np.asarray(image.convert("RGB"), dtype=np.float64)
    h, w = a.shape[:2]
    ph, pw = max(2, h // 16), max(2, w // 16)
    return _patch_colour(a[(h - ph) // 2:(h + ph) // 2, (w - pw) // 2:(w + pw) // 2])


def corner_rgb(image: Image.Image) -> np.ndarray:
    """Median colour of the four corner patches (always background in the training pictures)."""
    a = np.asarray(image.convert("RGB"), dtype=np.float64)
    h, w = a.shape[:2]
    ph, pw = max(2, h // 10), max(2, w // 10)
    corners = [a[:ph, :pw], a[:ph, -pw:], a[-ph:, :pw], a[-ph:, -pw:]]
    return _patch_colour(np.concatenate([c.reshape(-1, 3) for c in corners]))


def _region_at_centre(mask: np.ndarray) -> np.ndarray:
    """The 4-connected part of `mask` that holds the centre pixel (all of `mask` if the centre is not in it), so a
    stray speck elsewhere does not stretch the shape's bounding box."""
    from scipy import ndimage

    labels, _ = ndimage.label(mask)
    at_centre = labels[mask.shape[0] // 2, mask.shape[1] // 2]
    return labels == at_centre if at_centre else mask


def fill_ratio(image: Image.Image) -> float:
    """Fraction of the shape's bounding box the shape covers (the shape: the region at the centre that is far
    from the corner colour)."""
    a = np.asarray(image.convert("RGB"), dtype=np.float64)
    distance = np.sqrt(((a - corner_rgb(image)) ** 2).sum(-1))
    mask = _region_at_centre(distance > 60)
    rows = np.flatnonzero(mask.sum(1) >= 2)
    cols = np.flatnonzero(mask.sum(0) >= 2)
    if rows.size == 0 or cols.size == 0:
        return 0.0
    box = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    return float(box.mean())


def classify_shape(ratio: float) -> str:
    """Nearest of the three fill ratios (cut points halfway between them)."""
    return min(FILL_RATIO, key=lambda name: abs(FILL_RATIO[name] - ratio))


def read_scene(image: Image.Image) -> SceneReading:
    ratio = fill_ratio(image)
    return SceneReading(nearest_colour(centre_rgb(image)), nearest_colour(corner_rgb(image)), classify_shape(ratio),
                        ratio)

"""The loss curve as a PNG, drawn with PIL (no plotting library needed): raw losses faint, a moving average bold."""
from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from modules import fileio

WIDTH, HEIGHT, MARGIN, INSET = 640, 320, 16, 16


def moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def draw_losses(losses: list[float], first_step: int = 1) -> Image.Image:
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = MARGIN, 16, WIDTH - MARGIN, HEIGHT - 32
    draw.rectangle((left, top, right, bottom), outline=(160, 160, 160))
    if not losses:
        draw.text((left + 8, top + 8), "no steps yet", fill=(90, 90, 90))
        return image
    lo, hi = min(losses), max(losses)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    n = len(losses)

    def point(i: int, v: float) -> tuple[float, float]:
        x = left + (right - left) * (i / max(1, n - 1))
        y = bottom - INSET - (bottom - top - 2 * INSET) * ((v - lo) / (hi - lo))  # labels sit in the insets
        return x, y

    if n > 1:
        draw.line([point(i, v) for i, v in enumerate(losses)], fill=(170, 200, 235), width=1)
        smooth = moving_average(losses, max(1, n // 20))
        draw.line([point(i, v) for i, v in enumerate(smooth)], fill=(20, 90, 200), width=2)
    else:
        x, y = point(0, losses[0])
        draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=(20, 90, 200))
    draw.text((left + 4, top + 2), f"max {hi:.4g}", fill=(60, 60, 60))
    draw.text((left + 4, bottom - 12), f"min {lo:.4g}", fill=(60, 60, 60))
    draw.text((left, bottom + 8), f"step {first_step}", fill=(60, 60, 60))
    draw.text((right - 80, bottom + 8), f"step {first_step + n - 1}", fill=(60, 60, 60))
    draw.text(((left + right) // 2 - 20, bottom + 8), "loss", fill=(20, 90, 200))
    return image


def save_loss_plot(losses: list[float], path: Path) -> Path:
    with fileio.atomic_open(path, "wb") as f:
        draw_losses(losses).save(f, format="PNG")
    return path

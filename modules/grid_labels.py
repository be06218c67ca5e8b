"""Text labels around image grids (A1111's `images.GridAnnotation` / `draw_grid_annotations` / `draw_prompt_matrix`),
used by the X/Y/Z plot and Prompt matrix scripts.

Labels go above the columns and left of the rows; an "inactive" label (a prompt-matrix part that is off) is drawn
grey and struck through. Fonts: the `font` option's file if set and readable, else Pillow's built-in scalable
font (works offline)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

from PIL import Image, ImageColor, ImageDraw, ImageFont

log = logging.getLogger(__name__)

ACTIVE_COLOR = "#000000"  # A1111 options grid_text_active_color / grid_text_inactive_color / grid_background_color
INACTIVE_COLOR = "#999999"
BACKGROUND = "#ffffff"
MIN_FONT_SIZE = 10


@dataclass
class GridAnnotation:
    """One line of a row's or column's label."""

    text: str = ""
    is_active: bool = True
    size: tuple[int, int] | None = None  # (width, height) once laid out


@dataclass
class LabelStyle:
    font_file: str = ""
    active: str = ACTIVE_COLOR
    inactive: str = INACTIVE_COLOR
    background: str = BACKGROUND

    @classmethod
    def from_options(cls) -> "LabelStyle":
        """The grid options of the running program, or the defaults when no engine is bound (tests, tools)."""
        from modules import shared

        try:
            return cls(shared.opts.font or "", shared.opts.grid_text_active_color,
                       shared.opts.grid_text_inactive_color, shared.opts.grid_background_color)
        except (AttributeError, RuntimeError):
            return cls()


def font(size: int, font_file: str = "") -> ImageFont.ImageFont:
    if font_file:
        try:
            return ImageFont.truetype(font_file, size)
        except OSError:
            log.warning("grid font %r could not be read; using the built-in font", font_file)
    return ImageFont.load_default(size=size)


def _wrap(draw: ImageDraw.ImageDraw, text: str, fnt, max_width: int) -> list[str]:
    """Split `text` into lines no wider than `max_width` (breaking at spaces; a long word stays whole)."""
    lines: list[str] = []
    for paragraph in str(text).split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if line and draw.textlength(candidate, font=fnt) > max_width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def _lay_out(draw, texts: list[list[GridAnnotation]], fnt, max_width: int) -> list[list[GridAnnotation]]:
    """Wrap every annotation to the cell width; returns the wrapped lines with their pixel sizes."""
    out = []
    for cell in texts:
        lines = []
        for annotation in cell:
            for line in _wrap(draw, annotation.text, fnt, max_width):
                left, top, right, bottom = draw.multiline_textbbox((0, 0), line or " ", font=fnt)
                lines.append(GridAnnotation(line, annotation.is_active, (right - left, bottom - top)))
        out.append(lines)
    return out


def draw_grid_annotations(im: Image.Image, width: int, height: int, hor_texts: Sequence[Sequence[GridAnnotation]],
                          ver_texts: Sequence[Sequence[GridAnnotation]], margin: int = 0,
                          style: LabelStyle | None = None) -> Image.Image:
    """`im` (a grid of `width`×`height` cells) with column labels on top and row labels on the left.

    `hor_texts[c]` labels column c, `ver_texts[r]` row r; `margin` px are put between cells. The result is
    `im` plus the label area (top and left) plus the margins."""
    style = style or LabelStyle.from_options()
    cols, rows = im.width // width, im.height // height
    if len(hor_texts) != cols:
        raise ValueError(f"grid has {cols} columns but {len(hor_texts)} column labels")
    if len(ver_texts) != rows:
        raise ValueError(f"grid has {rows} rows but {len(ver_texts)} row labels")
    font_size = max(MIN_FONT_SIZE, (width + height) // 25)
    fnt = font(font_size, style.font_file)
    line_spacing = font_size // 2
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    has_row_labels = any(a.text for cell in ver_texts for a in cell)
    pad_left = 0 if not has_row_labels else width * 3 // 4
    hor = _lay_out(probe, [list(t) for t in hor_texts], fnt, width)
    ver = _lay_out(probe, [list(t) for t in ver_texts], fnt, max(pad_left, 1))
    block = lambda lines: sum(a.size[1] + line_spacing for a in lines)  # noqa: E731
    pad_top = 0 if not any(a.text for cell in hor_texts for a in cell) else \
        max(block(lines) for lines in hor) + line_spacing * 2

    result = Image.new("RGB", (im.width + pad_left + margin * (cols - 1), im.height + pad_top + margin * (rows - 1)),
                       ImageColor.getcolor(style.background, "RGB"))
    for r in range(rows):
        for c in range(cols):
            cell = im.crop((width * c, height * r, width * (c + 1), height * (r + 1)))
            result.paste(cell, (pad_left + (width + margin) * c, pad_top + (height + margin) * r))
    draw = ImageDraw.Draw(result)

    def draw_block(x: float, y: float, lines: list[GridAnnotation]) -> None:
        y -= block(lines) / 2
        for a in lines:
            color = style.active if a.is_active else style.inactive
            draw.multiline_text((x, y + a.size[1] / 2), a.text, font=fnt, fill=color, anchor="mm", align="center")
            if not a.is_active:
                draw.line((x - a.size[0] // 2, y + a.size[1] // 2, x + a.size[0] // 2, y + a.size[1] // 2),
                          fill=color, width=max(1, font_size // 10))
            y += a.size[1] + line_spacing

    for c, lines in enumerate(hor):
        draw_block(pad_left + (width + margin) * c + width / 2, pad_top / 2, lines)
    for r, lines in enumerate(ver):
        draw_block(pad_left / 2, pad_top + (height + margin) * r + height / 2, lines)
    return result


def draw_prompt_matrix(im: Image.Image, width: int, height: int, all_prompts: Sequence[str],
                       margin: int = 0) -> Image.Image:
    """Label a prompt-matrix grid: `all_prompts[0]` is the fixed part, the others are switched on and off by the
    bits of each cell's index (the first half of the parts along the top, the rest down the left)."""
    prompts = list(all_prompts[1:])
    boundary = (len(prompts) + 1) // 2
    prompts_horiz, prompts_vert = prompts[:boundary], prompts[boundary:]
    hor = [[GridAnnotation(x, is_active=pos & (1 << i) != 0) for i, x in enumerate(prompts_horiz)]
           for pos in range(1 << len(prompts_horiz))]
    ver = [[GridAnnotation(x, is_active=pos & (1 << i) != 0) for i, x in enumerate(prompts_vert)]
           for pos in range(1 << len(prompts_vert))]
    return draw_grid_annotations(im, width, height, hor, ver, margin)

"""Prompt styles: `styles.csv` as A1111 reads and writes it (`name,prompt,negative_prompt`).

A style's prompt containing `{prompt}` has the user's prompt put in its place; otherwise the style is appended
after `, ` (empty parts dropped). Several `--styles-file`s may be given; a style is saved back to the file it came
from (new ones to the first), atomically through `modules.fileio`.
"""
from __future__ import annotations

import csv
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from modules import fileio

log = logging.getLogger(__name__)

FIELDS = ["name", "prompt", "negative_prompt"]


@dataclass
class PromptStyle:
    name: str
    prompt: str = ""
    negative_prompt: str = ""
    path: Path | None = None


def merge_prompts(style_prompt: str, prompt: str) -> str:
    """A1111's `merge_prompts`."""
    if "{prompt}" in style_prompt:
        return style_prompt.replace("{prompt}", prompt)
    return ", ".join(part for part in (prompt.strip(), style_prompt.strip()) if part)


def apply_styles_to_prompt(prompt: str, style_prompts: list[str]) -> str:
    for style_prompt in style_prompts:
        prompt = merge_prompts(style_prompt, prompt)
    return prompt


def _unwrap(style_prompt: str, prompt: str) -> str | None:
    """The prompt that `merge_prompts(style_prompt, x)` turned into `prompt`, or None (A1111's extract_style_text)."""
    stripped = prompt.strip()
    if "{prompt}" in style_prompt:
        left, right = style_prompt.split("{prompt}", 2)[:2]
        if stripped.startswith(left) and stripped.endswith(right) and len(stripped) >= len(left) + len(right):
            return stripped[len(left):len(stripped) - len(right)]
        return None
    style = style_prompt.strip()
    if not style:
        return prompt
    if stripped == style:
        return ""
    if stripped.endswith(", " + style):
        return stripped[:-(len(style) + 2)]
    return None


class StyleDatabase:
    def __init__(self, paths: list[str | os.PathLike] | str | os.PathLike):
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        self.paths = [Path(p) for p in paths]
        self.styles: dict[str, PromptStyle] = {}
        self.reload()

    @classmethod
    def from_paths(cls, paths) -> "StyleDatabase":
        return cls(getattr(paths, "styles_files", None) or [paths.styles_file])

    def reload(self) -> None:
        self.styles = {}
        for path in self.paths:
            if not path.is_file():
                continue
            try:
                text = path.read_text(encoding="utf-8-sig")
            except OSError as e:
                log.warning("Styles: cannot read %s: %s", path, e)
                continue
            for row in csv.DictReader(io.StringIO(text), skipinitialspace=True):
                name = (row.get("name") or "").strip()
                if not name:
                    continue
                prompt = row.get("prompt") if "prompt" in row else row.get("text", "")
                self.styles.setdefault(name, PromptStyle(name, prompt or "", row.get("negative_prompt") or "", path))

    def names(self) -> list[str]:
        return list(self.styles)

    def get_style_prompts(self, styles: list[str] | None) -> list[str]:
        return [self.styles[s].prompt for s in styles or [] if s in self.styles]

    def get_negative_style_prompts(self, styles: list[str] | None) -> list[str]:
        return [self.styles[s].negative_prompt for s in styles or [] if s in self.styles]

    def apply_styles_to_prompt(self, prompt: str, styles: list[str] | None) -> str:
        return apply_styles_to_prompt(prompt, self.get_style_prompts(styles))

    def apply_negative_styles_to_prompt(self, prompt: str, styles: list[str] | None) -> str:
        return apply_styles_to_prompt(prompt, self.get_negative_style_prompts(styles))

    def apply(self, prompt: str, negative_prompt: str, styles: list[str] | None) -> tuple[str, str]:
        """(prompt, negative prompt) with the named styles applied in order; unknown names are ignored."""
        return self.apply_styles_to_prompt(prompt, styles), self.apply_negative_styles_to_prompt(negative_prompt,
                                                                                               styles)

    def apply_to_request(self, req) -> None:
        """Apply `req.styles` to `req.prompt`/`req.negative_prompt` in place (A1111 does so before processing)."""
        if getattr(req, "styles", None):
            req.prompt, req.negative_prompt = self.apply(req.prompt or "", req.negative_prompt or "", req.styles)

    def extract_styles_from_prompt(self, prompt: str, negative_prompt: str) -> tuple[list[str], str, str]:
        """Find the styles whose texts are both in the prompts; return them with the prompts they came from."""
        found = []
        changed = True
        while changed:
            changed = False
            for name, style in self.styles.items():
                if name in found or not (style.prompt or style.negative_prompt):
                    continue
                p = _unwrap(style.prompt, prompt)
                n = _unwrap(style.negative_prompt, negative_prompt)
                if p is None or n is None:
                    continue
                found.append(name)
                prompt, negative_prompt, changed = p, n, True
                break
        return list(reversed(found)), prompt, negative_prompt

    # -- saving ----------------------------------------------------------------------------------------------------

    def save_style(self, style: PromptStyle) -> None:
        if style.path is None:
            style.path = self.styles[style.name].path if style.name in self.styles else self.paths[0]
        self.styles[style.name] = style
        self.save_styles()

    def delete_style(self, name: str) -> None:
        if self.styles.pop(name, None) is not None:
            self.save_styles()

    def save_styles(self) -> None:
        """Write every styles file (each with the styles that belong to it), atomically."""
        for path in self.paths:
            rows = [s for s in self.styles.values() if (s.path or self.paths[0]) == path]
            if not rows and not path.exists():
                continue
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
            writer.writeheader()
            for s in rows:
                writer.writerow({"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt})
            path.parent.mkdir(parents=True, exist_ok=True)
            fileio.atomic_write_text(path, buf.getvalue())


__all__ = ["PromptStyle", "StyleDatabase", "merge_prompts", "apply_styles_to_prompt"]

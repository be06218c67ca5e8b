"""`ui-config.json` as A1111 has it: `tab/Label/value` (and `/minimum`, `/maximum`, `/step`) keys that let a user
change control defaults; keys for new controls are added with their built-in defaults."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from modules.fileio import atomic_write_json

log = logging.getLogger(__name__)


class UiConfig:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.data: dict[str, Any] = {}
        self.dirty = False
        if self.path.is_file():
            try:
                self.data = json.loads(self.path.read_text(encoding="utf-8"))
                if not isinstance(self.data, dict):
                    raise ValueError("not a JSON object")
            except (OSError, ValueError) as e:
                log.warning("ignoring unreadable %s: %s", self.path, e)
                self.data = {}

    def value(self, key: str, default: Any) -> Any:
        full = f"{key}/value"
        if full not in self.data:
            self.data[full] = default
            self.dirty = True
            return default
        stored = self.data[full]
        if default is not None and stored is not None and not isinstance(stored, type(default)):
            try:
                return type(default)(stored)
            except (TypeError, ValueError):
                return default
        return stored

    def slider(self, key: str, minimum: float, maximum: float, default: float, step: float) -> dict[str, float]:
        """A slider's `minimum`, `maximum`, `step` and `value` (gr.Slider's keyword arguments): A1111 keeps all four
        in ui-config.json, so raising "Sampling steps/maximum" there allows more steps. A value outside the range
        (a hand-edited file) is brought into it: Gradio would refuse every click of Generate otherwise."""
        bounds = {}
        for name, built_in in (("minimum", minimum), ("maximum", maximum), ("step", step)):
            full = f"{key}/{name}"
            stored = self.data.get(full)
            if full not in self.data:
                self.data[full], self.dirty = built_in, True
            ok = isinstance(stored, (int, float)) and not isinstance(stored, bool)
            if stored is not None and not ok:
                log.warning("%s: %s is %r, not a number: %r is used", self.path, full, stored, built_in)
            bounds[name] = stored if ok else built_in
        if bounds["minimum"] > bounds["maximum"] or bounds["step"] <= 0:
            log.warning("%s: %s has minimum %r, maximum %r, step %r: the built-in %r to %r by %r is used", self.path,
                        key, bounds["minimum"], bounds["maximum"], bounds["step"], minimum, maximum, step)
            bounds = {"minimum": minimum, "maximum": maximum, "step": step}
        value = self.value(key, default)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            value = default
        clamped = min(max(value, bounds["minimum"]), bounds["maximum"])
        if clamped != value:
            log.warning("%s: %s/value %r is outside %r to %r: %r is used", self.path, key, value,
                        bounds["minimum"], bounds["maximum"], clamped)
        return {**bounds, "value": clamped}

    def save(self) -> None:
        if self.dirty:
            try:
                atomic_write_json(self.path, self.data)
                self.dirty = False
            except OSError as e:
                log.warning("could not write %s: %s", self.path, e)

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

    def save(self) -> None:
        if self.dirty:
            try:
                atomic_write_json(self.path, self.data)
                self.dirty = False
            except OSError as e:
                log.warning("could not write %s: %s", self.path, e)

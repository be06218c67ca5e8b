"""What went wrong in extensions, by extension: every failure (import, callback, hook, setting, tab, route) is
recorded once with its traceback, logged once, and shown on that extension's row in the Extensions tab.

One process-wide log, like `logging`: failures come from many call sites (the script loader, callbacks, the UI
builder) that have no engine at hand."""
from __future__ import annotations

import logging
import os
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("extensions")


@dataclass
class ExtensionFault:
    extension: str  # folder name, or "" when the source is not inside an extension
    where: str  # what failed: "import scripts/x.py", "cfg_denoiser callback", "setting foo", "tab Bar", …
    message: str  # "TypeError: …"
    traceback: str
    count: int = 1

    def line(self) -> str:
        who = self.extension or "unknown extension"
        times = f" (×{self.count})" if self.count > 1 else ""
        return f"{who}: {self.where}: {self.message}{times}"


class FaultLog:
    def __init__(self):
        self._lock = threading.Lock()
        self._faults: dict[tuple, ExtensionFault] = {}
        self.messages: list[str] = []  # one line per distinct fault, in order (what older callers read)
        self.roots: list[Path] = []  # the extension folders, set at start-up

    def clear(self, keep: tuple[str, ...] = ()) -> None:
        """Forget the faults (a new start-up), except those whose `where` is in `keep`."""
        with self._lock:
            kept = {k: f for k, f in self._faults.items() if f.where in keep}
            lines = [m for m in self.messages if any(f": {w}: " in m for w in keep)]
            self._faults = kept
            self.messages[:] = lines

    def extension_of(self, source: str | os.PathLike | None) -> str:
        """The extension a file belongs to (its folder name under an extensions root), else ""."""
        if not source:
            return ""
        try:
            path = Path(source).resolve()
        except (OSError, ValueError):
            return ""
        for root in self.roots:
            if root in path.parents:
                return path.relative_to(root).parts[0]
        return ""

    def record(self, where: str, exc: BaseException, *, source=None, extension: str | None = None,
               message: str | None = None) -> ExtensionFault:
        """Record one failure; the same failure again only counts (logged once, with its traceback)."""
        ext = extension if extension is not None else self.extension_of(source)
        text = message or f"{type(exc).__name__}: {exc}"
        key = (ext, where, text)
        with self._lock:
            fault = self._faults.get(key)
            if fault is not None:
                fault.count += 1
                return fault
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()
            fault = ExtensionFault(ext, where, text, tb)
            self._faults[key] = fault
            self.messages.append(self._message(fault, source))
        log.error("Extension %s failed: %s: %s\n%s", ext or os.path.basename(str(source or "?")), where, text, tb)
        return fault

    @staticmethod
    def _message(fault: ExtensionFault, source) -> str:
        origin = os.path.basename(str(source)) if source else ""
        head = fault.extension or origin or "unknown extension"
        if origin and origin != head:
            head = f"{head}/{origin}"
        return f"{head}: {fault.where}: {fault.message}"

    def for_extension(self, name: str) -> list[ExtensionFault]:
        with self._lock:
            return [f for f in self._faults.values() if f.extension == name]

    def all(self) -> list[ExtensionFault]:
        with self._lock:
            return list(self._faults.values())


faults = FaultLog()

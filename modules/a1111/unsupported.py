"""Names that stand for A1111 internals this web UI does not have: they import fine and fail, when used, with a
`NotImplementedError` that names the extension that used them and the missing piece."""
from __future__ import annotations

import sys
from pathlib import Path


def _extension_roots() -> list[Path]:
    from modules.paths import REPO_ROOT

    roots = [REPO_ROOT / "extensions", REPO_ROOT / "extensions-builtin"]
    shared = sys.modules.get("modules.shared")
    engine = getattr(shared, "engine", None)
    if engine is not None:
        roots += [Path(engine.paths.extensions_dir), Path(engine.paths.extensions_builtin_dir)]
    return [r.resolve() for r in roots]


def caller_extension(depth: int = 2) -> str | None:
    """The extension whose code is on the call stack (the innermost frame under an extensions folder)."""
    roots = _extension_roots()
    frame = sys._getframe(depth)
    while frame is not None:
        try:
            path = Path(frame.f_code.co_filename).resolve()
        except (OSError, ValueError):
            path = None
        if path is not None:
            for root in roots:
                if root in path.parents:
                    return path.relative_to(root).parts[0]
        frame = frame.f_back
    return None


class NotSupportedHere(NotImplementedError):
    """An A1111 internal an extension used that this web UI does not have."""


def _raise(what: str, why: str):
    ext = caller_extension(3)
    who = f"extension {ext!r}" if ext else "an extension"
    raise NotSupportedHere(f"{who} used {what}, which is A1111 internals this web UI does not have"
                           + (f" ({why})" if why else ""))


def unsupported(what: str, why: str = ""):
    """A function standing for an A1111 internal: calling it raises a named NotImplementedError."""

    def stub(*args, **kwargs):
        _raise(what, why)

    stub.__name__ = what.rsplit(".", 1)[-1]
    stub.__qualname__ = stub.__name__
    stub.__doc__ = f"A1111's {what}: not available here. {why}"
    return stub


class Unsupported:
    """An object standing for an A1111 internal (an LDM module, a k-diffusion sampler): it can be held, compared and
    printed; touching any attribute of it, calling or iterating it raises a named NotImplementedError."""

    def __init__(self, what: str, why: str = ""):
        object.__setattr__(self, "_what", what)
        object.__setattr__(self, "_why", why)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        _raise(f"{self._what}.{name}", self._why)

    def __setattr__(self, name, value):
        _raise(f"{self._what}.{name}", self._why)

    def __call__(self, *args, **kwargs):
        _raise(self._what, self._why)

    def __iter__(self):
        _raise(self._what, self._why)

    def __repr__(self):
        return f"<A1111 {self._what}: not available here>"

    def __bool__(self):
        return True

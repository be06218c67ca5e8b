"""Bug fixes to Gradio's front-end bundle, served in place of the files Gradio ships (an ASGI middleware).

Gradio 6.31's page shows a loading tracker until the app is built, and removes it while the tracker still says
"pending". That tracker's elapsed-time loop asks for an animation frame, and it is never told to stop. So every open
page redrew 60 times a second for as long as it stayed open, using ~9% of a core in Chromium on 2 cores (measured).
The fix stops the loop when the tracker is removed. Each fix names the exact text it replaces. If an upgraded Gradio
no longer has that text, its file is served unchanged, and tests/test_page_compat.py says so."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import gradio

GRADIO_ASSETS = Path(gradio.__file__).parent / "templates" / "frontend" / "assets"


@dataclass(frozen=True)
class Fix:
    """In `/assets/<prefix><hash>.js`, `old` (found exactly once) becomes `new`."""

    prefix: str
    old: str
    new: str
    why: str


FIXES = (
    Fix("statustracker-",
        "O(()=>{o.status===`pending`?Ve():ee(()=>{He()})})",
        # an effect that reads nothing runs once; what it returns runs when the tracker is removed: the loop's flag
        "O(()=>()=>{W=!1}),O(()=>{o.status===`pending`?Ve():ee(()=>{He()})})",
        "the elapsed-time loop of a tracker removed while pending ran forever"),
)

_ASSET = re.compile(r"^/assets/([A-Za-z0-9_.-]+\.js)$")


def fixed_asset(name: str, folder: Path = GRADIO_ASSETS) -> bytes | None:
    """The fixed text of Gradio's asset `name`, or None when no fix applies to it (or its text has changed)."""
    for fix in FIXES:
        if name.startswith(fix.prefix):
            try:
                text = (folder / name).read_text(encoding="utf-8")
            except OSError:
                return None
            return text.replace(fix.old, fix.new).encode() if text.count(fix.old) == 1 else None
    return None


class FrontendFixes:
    """ASGI middleware: answers GET/HEAD `/assets/<name>.js` with the fixed file where a fix applies."""

    def __init__(self, app, folder: Path = GRADIO_ASSETS):
        self.app, self.folder = app, folder
        self._cache: dict[str, bytes | None] = {}

    async def __call__(self, scope, receive, send):
        body = None
        if scope["type"] == "http" and scope.get("method") in ("GET", "HEAD"):
            path, root = scope.get("path", ""), scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root):]
            match = _ASSET.match(path)
            if match and any(match.group(1).startswith(fix.prefix) for fix in FIXES):
                name = match.group(1)
                if name not in self._cache:
                    self._cache[name] = fixed_asset(name, self.folder)
                body = self._cache[name]
        if body is None:
            await self.app(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/javascript; charset=utf-8"), (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"public, max-age=31536000, immutable")]})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})

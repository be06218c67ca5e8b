"""Bug fixes to Gradio's front-end bundle, served in place of the files Gradio ships (by webui/app.py's
_ImmutableAssets).

Gradio 6.31's page shows a loading tracker until the app is built, and removes it while the tracker still says
"pending". That tracker's elapsed-time loop asks for an animation frame, and it is never told to stop. So every open
page redrew 60 times a second for as long as it stayed open, using ~9% of a core in Chromium on 2 cores (measured).
The fix stops the loop when the tracker is removed. Each fix names the exact text it replaces. If an upgraded Gradio
no longer has that text, its file is served unchanged, and tests/test_page_compat.py says so."""
from __future__ import annotations

import functools
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

@functools.cache
def _fixed_files() -> dict[str, bytes]:
    """Each Gradio asset a fix applies to (its name, e.g. `statustracker-DQF-KcRT.js`) and its fixed text; read once."""
    fixed = {}
    for fix in FIXES:
        for path in GRADIO_ASSETS.glob(f"{fix.prefix}*.js"):
            text = path.read_text(encoding="utf-8")
            if text.count(fix.old) == 1:
                fixed[path.name] = text.replace(fix.old, fix.new).encode()
    return fixed


def fixed_asset(name: str) -> bytes | None:
    """The fixed text of Gradio's asset `name` (served as `/assets/<name>`), or None where no fix applies."""
    return _fixed_files().get(name)

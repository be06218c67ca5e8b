"""Fixes to Gradio's front-end bundle, served in place of the files Gradio ships (by webui/app.py's
_ImmutableAssets). Each fix names the exact text it replaces. If an upgraded Gradio no longer has that text, its file
is served unchanged, and tests/test_page_compat.py says so.

- Gradio 6.31's page shows a loading tracker until the app is built, and removes it while the tracker still says
  "pending". That tracker's elapsed-time loop asks for an animation frame, and it is never told to stop. So every open
  page redrew 60 times a second for as long as it stayed open, using ~9% of a core in Chromium on 2 cores (measured).
  The fix stops the loop when the tracker is removed.
- Building the page, Gradio finds each component's events by scanning every event listener (A1111's layout: 1 336
  components × 276 listeners, twice per load): ~0.7 of a page load's ~2.6 CPU-s of script (measured). The fix indexes
  the listeners by component once per build; each component gets the same events in the same order. Then, for each
  listener, it searched the whole tree for the component the listener's event arguments go to, even when it has none
  (274 of 276 here): ~0.18 CPU-s. The fix looks only when there is something to set (as on each event later)."""
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
    Fix("core-",
        "e=>this.find_attached_events(e,this.#n),e=>Ne(e,this.components_to_register,this.#d)])}"
        "find_attached_events(e,t){",
        # per listener, only the first target naming a component counts, and empty event names are dropped (as in
        # find_attached_events, kept for anything else that calls it)
        "(a=>e=>(e.props.shared_props.attached_events=a.get(e.id)||[],e))(this.attached_events_by_id(this.#n)),"
        "e=>Ne(e,this.components_to_register,this.#d)])}"
        "attached_events_by_id(t){let m=new Map;for(let d of t){let s=new Set;for(let[i,v]of d.targets)"
        "if(!s.has(i)&&(s.add(i),v)){let l=m.get(i);l||m.set(i,l=[]),l.push(v)}}return m}"
        "find_attached_events(e,t){",
        "each component's events were found by scanning every listener (components x listeners, twice a load)"),
    Fix("Blocks-",
        "async set_event_args(e,t){let n={},r=",
        # nothing to set: no need to look the component up (a search of the whole tree) to set nothing
        "async set_event_args(e,t){if(Object.keys(t).length===0)return()=>{};let n={},r=",
        "each listener without event arguments searched the whole tree for its component (per listener per build)"),
)


@functools.cache
def _fixed_files() -> dict[str, bytes]:
    """Each Gradio asset a fix applies to (its name, e.g. `statustracker-DQF-KcRT.js`) and its fixed text; read once."""
    texts: dict[Path, str] = {}
    for fix in FIXES:
        for path in GRADIO_ASSETS.glob(f"{fix.prefix}*.js"):
            text = texts.get(path) or path.read_text(encoding="utf-8")
            if text.count(fix.old) == 1:
                texts[path] = text.replace(fix.old, fix.new)
    return {path.name: text.encode() for path, text in texts.items()}


def fixed_asset(name: str) -> bytes | None:
    """The fixed text of Gradio's asset `name` (served as `/assets/<name>`), or None where no fix applies."""
    return _fixed_files().get(name)

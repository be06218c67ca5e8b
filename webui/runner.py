"""Run a generation from the UI: the engine works in a thread while the page gets progress and live previews.

Each browser tab's click becomes one `engine.generate` call; the engine's job queue serves them in arrival order,
so two tabs generating at once each get their own images.
"""
from __future__ import annotations

import html
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import gradio as gr

from modules.engine import Engine
from modules.models.detect import UnsupportedModelError
from modules.models.loader import ModelLoadError
from modules.models.manager import ModelNotFoundError
from modules.request_types import RequestError

USER_ERRORS = (RequestError, ModelNotFoundError, ModelLoadError, UnsupportedModelError, ValueError)
POLL_SECONDS = 0.4


@dataclass
class Outcome:
    images: list
    infotexts: list[str]
    info_html: str
    seed: int | None
    message: str = ""


def progress_html(engine: Engine, waiting: bool) -> str:
    s = engine.state
    if waiting or not s.active:
        return "<div class='sd-progress'>Waiting in queue…</div>" if waiting else ""
    pct = int(s.progress() * 100)
    eta = s.eta()
    batch = f" · batch {s.job_no + 1}/{s.job_count}" if s.job_count > 1 else ""
    text = f"Step {s.sampling_step}/{s.sampling_steps}{batch} · {pct}% · ETA {eta:.0f}s"
    return (f"<div class='sd-progress'><div class='sd-progress-bar' style='width:{pct}%'></div>"
            f"<span class='sd-progress-text'>{html.escape(text)}</span></div>")


def error_html(message: str) -> str:
    return f"<div class='sd-error'>⚠ {html.escape(message)}</div>"


def info_html(infotext: str, extra: str = "") -> str:
    body = html.escape(infotext).replace("\n", "<br>")
    return f"<div class='sd-infotext'>{body}</div>{extra}"


def run_streaming(engine: Engine, build: Callable[[], Any], kind: str,
                  script_args: list | None = None) -> Iterator[tuple]:
    """Yield (gallery, infotexts, info_html, progress_html, preview, seed) while the job runs, then the result.

    `build` makes the typed request (raising RequestError on bad input) so that errors surface in the page.
    """
    try:
        req = build()
    except USER_ERRORS as e:
        yield gr.update(), gr.update(), error_html(str(e)), "", gr.update(visible=False), gr.update()
        return
    box: dict[str, Any] = {}

    def work():
        try:
            box["result"] = engine.generate(req, script_args)
        except USER_ERRORS as e:
            box["error"] = str(e)
        except Exception as e:  # out of memory, a broken extension...: show it, keep the server alive
            box["error"] = f"{type(e).__name__}: {e}"

    started = time.time()
    thread = threading.Thread(target=work, name=f"ui-{kind}", daemon=True)
    thread.start()
    last_preview_step = -1
    while thread.is_alive():
        thread.join(POLL_SECONDS)
        state = engine.state
        waiting = not state.active or state.job != req.mode
        preview = gr.update()
        if not waiting and state.current_image is not None and state.current_image_step != last_preview_step:
            last_preview_step = state.current_image_step
            preview = gr.update(value=state.current_image, visible=True)
        yield gr.update(), gr.update(), gr.update(), progress_html(engine, waiting), preview, gr.update()
    if "error" in box:
        yield gr.update(), gr.update(), error_html(box["error"]), "", gr.update(visible=False), gr.update()
        return
    result = box["result"]
    note = ""
    if result.interrupted:
        note = "<div class='sd-note'>Interrupted: kept the finished images.</div>"
    for w in getattr(result, "warnings", []) or []:
        note += f"<div class='sd-note'>⚠ {html.escape(w)}</div>"
    elapsed = f"<div class='sd-time'>Time taken: {time.time() - started:.1f}s</div>"
    first = result.infotexts[result.index_of_first_image] if len(result.infotexts) > result.index_of_first_image \
        else (result.infotexts[0] if result.infotexts else "")
    gallery = list(result.images)
    yield (gallery, result.infotexts, info_html(first, note + elapsed), "", gr.update(visible=False),
           result.seed)

"""Run a generation from the UI: the engine works in a thread while the page gets progress and live previews.

Each browser tab's click becomes one `engine.generate` call; the engine's job queue serves them in arrival order,
so two tabs generating at once each get their own images. A second click in the same tab while one runs is
queued too (the Generate events use `trigger_mode="multiple"`): the running one's progress line says how many of
the tab's runs wait behind it, and each shows its own result when its turn is done.
"""
from __future__ import annotations

import html
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import gradio as gr
from gradio.exceptions import Error

from modules.engine import Engine
from modules.models.detect import UnsupportedModelError
from modules.models.loader import ModelLoadError
from modules.models.manager import ModelNotFoundError
from modules.request_types import RequestError

USER_ERRORS = (RequestError, ModelNotFoundError, ModelLoadError, UnsupportedModelError, ValueError)
POLL_SECONDS = 0.1  # how often the job's state is read; the page gets an update only when its line changes
KEEPALIVE_SECONDS = 0.4  # a run waiting behind another of its tab still yields this often


@dataclass
class Outcome:
    images: list
    infotexts: list[str]
    info_html: str
    seed: int | None
    message: str = ""


def progress_html(engine: Engine, waiting: bool, queued_behind: int = 0) -> str:
    """The progress line: waiting, loading the model, preparing, or step/batch/percent/ETA (from measured steps).

    `queued_behind`: this tab's own runs waiting after this one (said on the line, so a second click shows)."""
    s = engine.state
    more = f" · {queued_behind} more queued" if queued_behind > 0 else ""
    if waiting or not s.active:
        return f"<div class='sd-progress'>Waiting in queue…{html.escape(more)}</div>" if waiting else ""
    loading = getattr(engine.models, "loading", None)
    if loading:
        text = f"Loading model {loading} …"
        pct = 0
    elif not s.sampling_steps:
        text = s.textinfo or "Preparing …"
        pct = int(s.progress() * 100)
    else:
        pct = int(s.progress() * 100)
        eta = s.eta()
        batch = f" · batch {s.job_no + 1}/{s.job_count}" if s.job_count > 1 else ""
        eta_text = f"ETA {eta:.0f}s" if eta > 0 else "ETA …"
        text = f"Step {s.sampling_step}/{s.sampling_steps}{batch} · {pct}% · {eta_text}"
    return (f"<div class='sd-progress'><div class='sd-progress-bar' style='width:{pct}%'></div>"
            f"<span class='sd-progress-text'>{html.escape(text + more)}</span></div>")


class _TabRuns:
    """The runs each browser tab (session and kind) has started and not finished, in click order: only the first
    one draws the progress line, so two runs of one tab do not take turns overwriting it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[tuple, list[object]] = {}

    def add(self, key: tuple) -> object:
        token = object()
        with self._lock:
            self._runs.setdefault(key, []).append(token)
        return token

    def remove(self, key: tuple, token: object) -> None:
        with self._lock:
            runs = self._runs.get(key, [])
            if token in runs:
                runs.remove(token)
            if not runs:
                self._runs.pop(key, None)

    def position(self, key: tuple, token: object) -> tuple[int, int]:
        """(runs before this one, runs after it) of the same tab."""
        with self._lock:
            runs = self._runs.get(key, [])
            i = runs.index(token) if token in runs else 0
            return i, max(len(runs) - i - 1, 0)


TAB_RUNS = _TabRuns()


def session_key(request, kind: str) -> tuple:
    """Which browser tab a click came from (Gradio's session hash) and which generation tab."""
    return (getattr(request, "session_hash", None) or id(request), kind)


def upload_name(payload) -> str:
    """The name the user's file had (not Gradio's temp path) for an Image/ImageEditor payload or its dict."""
    if payload is None:
        return "upload"
    get = payload.get if isinstance(payload, dict) else (lambda k, d=None: getattr(payload, k, d))
    background = get("background")
    if background is not None and get("path") is None:
        return upload_name(background)
    name = get("orig_name") or (Path(str(get("path"))).name if get("path") else "")
    return name or "upload"


def unreadable_upload(payload) -> str | None:
    """The file name of an uploaded picture PIL cannot read (a text file renamed .png...), else None."""
    from PIL import Image

    if payload is None:
        return None
    get = payload.get if isinstance(payload, dict) else (lambda k, d=None: getattr(payload, k, d))
    if get("path") is None and get("background") is not None:
        return unreadable_upload(get("background"))
    path = get("path")
    if not path:
        return None
    try:
        with Image.open(path) as im:
            im.verify()
    except Exception:  # noqa: BLE001 - whatever PIL fails with, the file is not a picture we can use
        return upload_name(payload)
    return None


def guard_image_input(component, message=None, on_upload: bool = True) -> None:
    """A non-image upload gets "not an image: <name>" instead of Gradio's developer error (which lists the
    event's input components and a temp path), and the other fields of the form stay as they are.

    On upload a bad file is taken out again and the message goes to `message` (an HTML component), or to a
    toast; a handler that still receives one (a click racing the upload) stops with the same message."""
    original = component.preprocess

    def preprocess(payload):
        try:
            return original(payload)
        except Error:
            raise
        except Exception as e:  # noqa: BLE001 - PIL's UnidentifiedImageError, OSError, SyntaxError...
            raise Error(f"not an image: {upload_name(payload)}", print_exception=False) from e

    component.preprocess = preprocess
    if not on_upload:
        return

    def check(payload):
        name = unreadable_upload(payload)
        if name is None:
            return gr.update() if message is None else (gr.update(), gr.update())
        if message is None:
            gr.Warning(f"not an image: {name}")
            return None
        return None, error_html(f"not an image: {name}")

    component.upload(check, component, component if message is None else [component, message], preprocess=False,
                     queue=False, show_progress="hidden")


def error_html(message: str) -> str:
    return f"<div class='sd-error'>⚠ {html.escape(message)}</div>"


def info_html(infotext: str, extra: str = "") -> str:
    body = html.escape(infotext).replace("\n", "<br>")
    return f"<div class='sd-infotext'>{body}</div>{extra}"


def run_streaming(engine: Engine, build: Callable[[], Any], kind: str,
                  script_args: list | None = None, request=None) -> Iterator[tuple]:
    """Yield (gallery, infotexts, info_html, progress_html, preview, seed) while the job runs, then the result.

    `build` makes the typed request (raising RequestError on bad input) so that errors surface in the page.
    `request` (Gradio's) tells runs of the same browser tab apart from other tabs' runs.
    """
    try:
        req = build()
    except USER_ERRORS as e:
        yield gr.update(), gr.update(), error_html(str(e)), "", gr.update(visible=False), gr.update()
        return
    key = session_key(request, kind)
    token = TAB_RUNS.add(key)
    try:
        yield from _run(engine, req, kind, script_args, key, token)
    finally:
        TAB_RUNS.remove(key, token)


def _run(engine: Engine, req, kind: str, script_args, key: tuple, token: object) -> Iterator[tuple]:
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
    last_line = None
    last_yield = 0.0
    while thread.is_alive():
        thread.join(POLL_SECONDS)
        state = engine.state
        waiting = not state.active or state.job != req.mode
        before, after = TAB_RUNS.position(key, token)
        if before:  # an earlier run of this tab is still drawing the progress line; this one says it is alive
            if time.time() - last_yield >= KEEPALIVE_SECONDS:
                last_yield = time.time()
                yield gr.update(), gr.update(), gr.update(), gr.update(), gr.update(), gr.update()
            continue
        preview = gr.update()
        if not waiting and state.current_image is not None and state.current_image_step != last_preview_step:
            last_preview_step = state.current_image_step
            preview = gr.update(value=state.current_image, visible=True)
        line = progress_html(engine, waiting, after)
        if line == last_line and preview == gr.update():
            continue
        last_line, last_yield = line, time.time()
        yield gr.update(), gr.update(), gr.update(), line, preview, gr.update()
    if "error" in box:
        yield gr.update(), gr.update(), error_html(box["error"]), "", gr.update(visible=False), gr.update()
        return
    result = box["result"]
    note = ""
    if result.interrupted:
        note = "<div class='sd-note'>Interrupted: kept the finished images.</div>"
    for w in getattr(result, "warnings", []) or []:
        note += f"<div class='sd-note'>⚠ {html.escape(w)}</div>"
    memory = engine.memory.summary() if getattr(engine, "memory", None) is not None else ""
    elapsed = f"<div class='sd-time'>Time taken: {time.time() - started:.1f}s" + (
        f" · {html.escape(memory)}" if memory else "") + "</div>"
    first = result.infotexts[result.index_of_first_image] if len(result.infotexts) > result.index_of_first_image \
        else (result.infotexts[0] if result.infotexts else "")
    gallery = list(result.images)
    yield (gallery, result.infotexts, info_html(first, note + elapsed), "", gr.update(visible=False),
           result.seed)

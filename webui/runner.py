"""Run a generation from the UI: each click is a job of the engine's visible queue (modules/job_queue.py), and the
page follows that job by id while it waits and runs, with progress and live previews.

The job belongs to the browser (`client`: an id the page keeps in localStorage), not to the connection: a reload
or a second tab of the same browser re-attaches to its queued and running jobs and shows their results (`follow`).
Two browsers generating at once each get their own images. A second click in the same tab while one runs is queued
too (the Generate events use `trigger_mode="multiple"`): the running one's progress line says how many of the tab's
runs wait behind it, and each shows its own result when its turn is done. "Generate forever" queues the same job
again each time it is done, until it is turned off.
"""
from __future__ import annotations

import html
import json
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import gradio as gr
from gradio.exceptions import Error

from modules.engine import Engine
from modules.models.detect import UnsupportedModelError
from modules.models.loader import ModelLoadError
from modules.models.manager import ModelNotFoundError
from modules.request_types import Img2ImgRequest, RequestError, Txt2ImgRequest
from modules.upscaling import UpscalerDownloadError

# errors whose message is for the user as it is (a failed download says what to fetch and where to put it)
USER_ERRORS = (RequestError, ModelNotFoundError, ModelLoadError, UnsupportedModelError, ValueError,
               UpscalerDownloadError)
POLL_SECONDS = 0.1  # how often the job's state is read; the page gets an update only when its line changes
REFRESH_SETTING = "live_preview_refresh_period"  # A1111's "Progressbar and preview update period" (ms, default 1000)
KEEPALIVE_SECONDS = 0.4  # a run waiting behind another of its tab still yields this often


@dataclass
class Outcome:
    images: list
    infotexts: list[str]
    info_html: str
    seed: int | None
    message: str = ""


class GalleryTexts(list):
    """The gallery's infotexts (the page's state), knowing where the job's own pictures start after its grid."""

    def __init__(self, texts=(), first_image: int = 0):
        super().__init__(texts)
        self.first_image = first_image


class _RemoteState:
    """A cluster worker's JobState as the head last read it (modules/cluster/executor.py), read as a JobState."""

    def __init__(self, snap: dict):
        self.snap = snap
        self.active, self.job, self.textinfo = snap.get("active"), snap.get("job"), snap.get("textinfo")
        self.sampling_step, self.sampling_steps = snap.get("sampling_step", 0), snap.get("sampling_steps", 0)
        self.job_no, self.job_count = snap.get("job_no", 0), snap.get("job_count", 0)
        self.current_image, self.current_image_step = snap.get("image"), snap.get("preview_step", -1)

    def progress(self) -> float:
        return float(self.snap.get("progress", 0.0))

    def eta(self) -> float:
        return float(self.snap.get("eta", 0.0))


def progress_html(engine: Engine, waiting: bool, queued_behind: int = 0, ahead: int | None = None,
                  state=None, stage: str = "") -> str:
    """The progress line: waiting (and behind how many jobs), loading the model, preparing, or
    step/batch/percent/ETA (from measured steps).

    `queued_behind`: this tab's own runs waiting after this one (said on the line, so a second click shows);
    `state`: a cluster worker's state for this job, else the engine's."""
    s = state or engine.state
    more = f" · {queued_behind} more queued" if queued_behind > 0 else ""
    if waiting or not s.active:
        place = f" ({ahead} job{'s' if ahead != 1 else ''} ahead)" if ahead else ""
        return f"<div class='sd-progress'>Waiting in queue{place}…{html.escape(more)}</div>" if waiting else ""
    loading = getattr(engine.models, "loading", None) if state is None else None
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
    if stage:  # a job of several generations (img2img Batch): which one this is
        text = f"{stage} · {text}"
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


def run_streaming(engine: Engine, build: Callable[[], dict], kind: str, script_args: list | None = None,
                  request=None, client: str = "", forever: bool = False) -> Iterator[tuple]:
    """Queue the click as a job, then yield (gallery, infotexts, info_html, progress_html, preview, seed) while it
    waits and runs, and its result.

    `build` makes the request's fields (raising RequestError on bad input); the request is built from them now, so
    that errors surface in the page before anything is queued. `request` (Gradio's) tells runs of the same browser
    tab apart; `client` is the browser's id, under which a reload finds the job again."""
    from modules.job_queue import QueueError, ensure_queue, request_summary

    try:
        fields = build()
        cls = Img2ImgRequest if kind == "img2img" else Txt2ImgRequest
        req = cls.from_dict(fields)
        queue = ensure_queue(engine)
        body = _stored_body(engine, kind, fields, script_args)
        job = queue.submit(kind, body or request_summary(req), "ui", client or _anonymous(request),
                           work=lambda: engine.generate(cls.from_dict(fields), script_args),
                           resumable=body is not None, forever=forever, request=req, script_args=script_args)
    except (*USER_ERRORS, QueueError) as e:
        yield gr.update(), gr.update(), error_html(str(e)), "", gr.update(visible=False), gr.update()
        return
    yield from follow(engine, job, session_key(request, kind))


def run_batch_streaming(engine: Engine, build: Callable[[], dict], options, script_args: list | None = None,
                        request=None, client: str = "", forever: bool = False) -> Iterator[tuple]:
    """img2img Batch (modules/img2img_batch.py): every picture of the folder as ONE job of the visible queue, its
    progress line saying which picture ("Picture 2 of 5: cat.png"); a missing or empty folder is said at once."""
    from modules import img2img_batch
    from modules.job_queue import QueueError, ensure_queue

    try:
        options = options() if callable(options) else options  # the Batch tab's BatchOptions (or what makes them)
        fields = build()
        pictures = img2img_batch.check(engine, fields, options)
        queue = ensure_queue(engine)
        summary = {k: fields[k] for k in ("prompt", "negative_prompt", "width", "height", "steps", "batch_size",
                                          "n_iter", "sampler_name", "seed") if isinstance(fields.get(k), (str, int, float))}
        summary["batch"] = f"{len(pictures)} pictures" + (f" from {options.input_dir}" if not options.files else "")

        def on_picture(k: int, n: int, name: str) -> None:  # the running job: this one, or its "forever" repeat
            for running in (j for j in queue.jobs() if j.status == "running" and j.work is not None):
                running.stage = f"Picture {k} of {n}: {name}"

        job = queue.submit("img2img", summary, "ui", client or _anonymous(request), resumable=False, forever=forever,
                           work=lambda: img2img_batch.run_batch(engine, fields, options, script_args, on_picture))
    except (*USER_ERRORS, QueueError) as e:
        yield gr.update(), gr.update(), error_html(str(e)), "", gr.update(visible=False), gr.update()
        return
    yield from follow(engine, job, session_key(request, "img2img"))


def follow(engine: Engine, job, key: tuple) -> Iterator[tuple]:
    """Show a queued job's progress and then its result (and, under "Generate forever", the next one's)."""
    token = TAB_RUNS.add(key)
    try:
        while job is not None:
            yield from _follow_one(engine, job, key, token)
            job = engine.visible_queue.get(job.next_id) if job.next_id and engine.visible_queue else None
    finally:
        TAB_RUNS.remove(key, token)


def _anonymous(request) -> str:
    return "session:" + str(getattr(request, "session_hash", None) or id(request))


def _stored_body(engine: Engine, kind: str, fields: dict, script_args: list | None) -> dict | None:
    """The job as JSON (its fields, pictures as PNG, the script arguments and which scripts they are for), so that
    a restart can run it again; None when something in it cannot be stored."""
    from modules.job_queue import body_from_fields, script_titles

    body = body_from_fields(fields)
    if body is None or script_args is None:
        return body
    args = body_from_fields({"args": list(script_args)})
    if args is None:
        return None
    body["__script_args__"] = args["args"]
    body["__scripts__"] = script_titles(engine, kind)
    return body


def refresh_period(engine: Engine) -> float:
    """Seconds between the progress line's and the live preview's updates while the numbers only count on (A1111's
    setting; 0 = every time the state is read). Each update re-renders the page's progress and preview: at every
    state read a 2-core machine's browser spent ~0.4 CPU-s per second of generation on them."""
    try:
        return max(0.0, float(engine.settings.get(REFRESH_SETTING, 1000)) / 1000)
    except (TypeError, ValueError):
        return 1.0


def _line_kind(line: str | None) -> str | None:
    """What the progress line says before its first number: waiting, loading, preparing, sampling, a stage. A new
    kind shows at once; what follows (step, percent, ETA, place in the queue) waits for the refresh period."""
    return None if line is None else re.split(r"\d", re.sub(r"<[^>]*>", "", line), maxsplit=1)[0]


def _follow_one(engine: Engine, job, key: tuple, token: object) -> Iterator[tuple]:
    started = time.time()
    queue = engine.visible_queue
    period = refresh_period(engine)
    last_preview_step = -1
    last_line = None
    last_yield = last_update = 0.0
    while job.status in ("queued", "running"):
        queue.wait(job.id, timeout=POLL_SECONDS)
        state = _RemoteState(job.progress) if job.progress is not None else engine.state  # a cluster worker's
        waiting = job.status == "queued" or not state.active or state.job != job.mode
        before, after = TAB_RUNS.position(key, token)
        if before:  # an earlier run of this tab is still drawing the progress line; this one says it is alive
            if time.time() - last_yield >= KEEPALIVE_SECONDS:
                last_yield = time.time()
                yield gr.update(), gr.update(), gr.update(), gr.update(), gr.update(), gr.update()
            continue
        due = time.time() - last_update >= period
        preview = gr.update()
        if due and not waiting and state.current_image is not None and state.current_image_step != last_preview_step:
            last_preview_step = state.current_image_step
            preview = gr.update(value=state.current_image, visible=True)
        ahead = queue.position(job) if job.status == "queued" else None
        line = progress_html(engine, waiting, after, ahead, state if job.progress is not None else None,
                             stage=job.stage if job.status == "running" else "")
        if line != last_line and not due and _line_kind(line) == _line_kind(last_line):
            line = last_line  # only its numbers moved on: shown at the next refresh
        if line == last_line and preview == gr.update():
            if time.time() - last_yield >= KEEPALIVE_SECONDS * 10:  # a long wait still shows the page is alive
                last_yield = time.time()
                yield gr.update(), gr.update(), gr.update(), gr.update(), gr.update(), gr.update()
            continue
        last_line, last_yield = line, time.time()
        last_update = last_yield
        yield gr.update(), gr.update(), gr.update(), line, preview, gr.update()
    if job.status == "cancelled":
        job.delivered = True
        yield gr.update(), gr.update(), error_html("Cancelled in the queue."), "", gr.update(visible=False), \
            gr.update()
        return
    result = job.result
    if job.status == "failed" or result is None:
        e = job.exception
        message = str(e) if isinstance(e, USER_ERRORS) else (f"{type(e).__name__}: {e}" if e is not None
                                                               else job.error or "the job failed")
        yield gr.update(), gr.update(), error_html(message), "", gr.update(visible=False), gr.update()
        job.delivered = True
        return
    note = ""
    if result.interrupted:
        note = "<div class='sd-note'>Interrupted: the finished pictures, and the last one as far as it got.</div>"
    for w in getattr(result, "warnings", []) or []:
        note += f"<div class='sd-note'>⚠ {html.escape(w)}</div>"
    watched = engine.settings.get("memmon_poll_rate", 8)  # A1111: 0 turns the memory line off
    memory = engine.memory.summary() if watched and getattr(engine, "memory", None) is not None else ""
    took = (job.finished or time.time()) - (job.started or started)
    elapsed = f"<div class='sd-time'>Time taken: {took:.1f}s" + (
        f" · {html.escape(memory)}" if memory else "") + "</div>"
    first = result.infotexts[result.index_of_first_image] if len(result.infotexts) > result.index_of_first_image \
        else (result.infotexts[0] if result.infotexts else "")
    gallery = [] if engine.settings.get("do_not_show_images", False) else list(result.images)
    if engine.settings.get("samples_log_stdout", False) and not job.delivered:  # A1111: the generation info
        print(json.dumps(result.js(), default=str), flush=True)
    yield (gallery, GalleryTexts(result.infotexts, result.index_of_first_image), info_html(first, note + elapsed), "",
           gr.update(visible=False), result.seed)
    job.delivered = True  # shown (Gradio resumed us after the yield); the queue lets go of the pictures later


def reattach(engine: Engine, client: str, kind: str, request=None) -> Iterator[tuple]:
    """A page (re)loaded: follow this browser's jobs of this tab that no page has shown yet."""
    queue = engine.visible_queue
    if queue is None or not client:
        return
    key = session_key(request, kind)
    for job in queue.undelivered(client, kind):
        if job.delivered:  # another page of the same browser showed it meanwhile
            continue
        yield from follow(engine, job, key)

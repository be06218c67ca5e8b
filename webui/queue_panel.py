"""The Queue panel of the generation tabs: the engine's visible queue (modules/job_queue.py) as a list to pick from,
with cancel/interrupt, move up/down, pause/resume, and "Generate forever".

The list refreshes itself (a timer) only while the panel is open, so a closed panel costs the server nothing.
The browser's id (`client`, kept in localStorage by webui/assets/queue.js) tells "this browser" in the list and is
what a reload re-attaches by."""
from __future__ import annotations

import html
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from modules.job_queue import QueueError, QueuedJob, ensure_queue, workers_of

REFRESH_SECONDS = 1.5
CLIENT_JS = "() => window.sdClientId ? window.sdClientId() : ''"


@dataclass
class QueuePanel:
    client: Any  # hidden textbox: this browser's id
    forever: Any  # checkbox: "Generate forever"
    jobs: Any  # radio: the queue, one choice per job
    status: Any


def job_label(job: QueuedJob, place: int, client: str, progress: float | None = None) -> str:
    """One line of the list: where it stands (`place`: 1 for the next to run), what it draws, who queued it."""
    body = job.body
    prompt = str(body.get("prompt", "")).strip().replace("\n", " ") or "(no prompt)"
    prompt = prompt[:48] + "…" if len(prompt) > 48 else prompt
    size = f"{body.get('width', 512)}×{body.get('height', 512)}"
    count = int(body.get("batch_size", 1) or 1) * int(body.get("n_iter", 1) or 1)
    what = f"{job.mode} · {prompt} · {size} · {body.get('steps', 20)} steps" + (f" · {count} images" if count > 1
                                                                               else "")
    who = "this browser" if client and job.client == client else ("API" if job.source == "api" else "another page")
    if job.status == "running":
        state = "▶ running" + (f" {int(progress * 100)}%" if progress is not None else "") + (
            f" on {job.worker}" if job.worker else "")
    elif job.status == "queued":
        state = f"#{place} queued"
    else:
        state = {"done": "✓ done", "failed": "⚠ failed", "interrupted": "■ interrupted",
                 "cancelled": "✖ cancelled"}.get(job.status, job.status)
    return f"{state} · {what} · {who}" + (" · ∞ forever" if job.forever else "")


def listing(engine, client: str, picked: str | None, finished: int = 5):
    """(radio update, status html): running and queued jobs, then the last few finished ones; with a cluster, the
    workers under the status line."""
    queue = ensure_queue(engine)
    jobs = queue.jobs()
    active = [j for j in jobs if j.status in ("queued", "running")]
    done = [j for j in jobs if j.status not in ("queued", "running")][:finished]
    progress = engine.state.progress() if engine.state.active else None

    def progress_of(job):
        if job.status != "running":
            return None
        return float(job.progress.get("progress", 0.0)) if job.progress is not None else progress

    choices = [(job_label(j, (queue.queued_index(j) or 0) + 1, client, progress_of(j)), j.id) for j in active + done]
    ids = [job_id for _, job_id in choices]
    running = sum(1 for j in active if j.status == "running")
    text = (f"{len(active) - running} queued · {running} running" + (" · ⏸ paused" if queue.paused else "")
            if active else "The queue is empty." + (" ⏸ paused" if queue.paused else ""))
    return (gr.update(choices=choices, value=picked if picked in ids else None),
            f"<span class='sd-queue-status'>{html.escape(text)}</span>{workers_html(engine)}")


def workers_html(engine) -> str:
    """The Workers view (with --cluster): who runs what, with what loaded, how fast."""
    queue = ensure_queue(engine)
    if queue.executor is None:
        return ""
    rows = []
    for w in workers_of(engine):
        state = ("lost" if not w["alive"] else f"running {w['job'] or ''}".strip() if w["busy"] else "idle")
        loaded = ", ".join(Path(p).stem for p in w["loaded"]) or "—"
        speed = f"{w['it_s']:.2f} it/s" if w.get("it_s") else ""
        done = "" if w.get("jobs_done") is None else f"{w['jobs_done']} done"
        cells = [w["name"], w["device"] + (f" ({w['memory']})" if w.get("memory") else ""), state, loaded, done,
                 speed]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("Worker", "Device", "Now", "Loaded", "Jobs", "Speed"))
    return f"<table class='sd-workers'><tr>{head}</tr>{''.join(rows)}</table>"


def act(engine, action: str, job_id: str | None, client: str):
    """Cancel/interrupt, move up or down the picked job; a message when that cannot be done."""
    queue = ensure_queue(engine)
    if not job_id:
        return "Pick a job in the list first."
    try:
        job = queue.get(job_id)
        if action == "cancel":
            was = job.status
            queue.cancel(job_id)
            return "Interrupting the running job." if was == "running" else "Cancelled."
        index = queue.queued_index(job)
        if index is None:
            return f"Only queued jobs move; this one is {job.status}."
        queue.move(job_id, max(0, index - 1) if action == "up" else index + 1)
        return "Moved."
    except QueueError as e:
        return str(e)


def toggle_pause(engine) -> tuple:
    queue = ensure_queue(engine)
    queue.resume() if queue.paused else queue.pause()
    return pause_label(queue.paused)


def pause_label(paused: bool):
    return gr.update(value="▶ Resume queue" if paused else "⏸ Pause queue")


def forever_checkbox(tab: str):
    """"Generate forever", under the Generate button (where its state shows; A1111's right-click menu sets it too)."""
    return gr.Checkbox(False, label="Generate forever", elem_id=f"{tab}_generate_forever", container=False)


def build(tab: str, engine, forever) -> QueuePanel:
    """The panel (an accordion, closed) and its wiring; `forever` is the tab's "Generate forever" checkbox."""
    client = gr.Textbox(visible=False, elem_id=f"{tab}_client_id")
    with gr.Accordion("Queue", open=False, elem_id=f"{tab}_queue_panel") as panel:
        status = gr.HTML("", elem_id=f"{tab}_queue_status")
        jobs = gr.Radio([], label="Jobs (pick one to act on)", elem_id=f"{tab}_queue_jobs")
        with gr.Row():
            cancel = gr.Button("✖ Cancel / interrupt", elem_id=f"{tab}_queue_cancel", size="sm")
            up = gr.Button("▲ Up", elem_id=f"{tab}_queue_up", size="sm")
            down = gr.Button("▼ Down", elem_id=f"{tab}_queue_down", size="sm")
            pause = gr.Button("⏸ Pause queue", elem_id=f"{tab}_queue_pause", size="sm")
        message = gr.HTML("", elem_id=f"{tab}_queue_message")
    timer = gr.Timer(REFRESH_SECONDS, active=False)
    refresh = dict(fn=lambda c, p: listing(engine, c, p), inputs=[client, jobs], outputs=[jobs, status],
                   show_progress="hidden", queue=False)
    panel.expand(lambda: gr.Timer(active=True), None, timer, queue=False, show_progress="hidden").then(**refresh)
    panel.expand(lambda: pause_label(ensure_queue(engine).paused), None, pause, queue=False, show_progress="hidden")
    panel.collapse(lambda: gr.Timer(active=False), None, timer, queue=False, show_progress="hidden")
    timer.tick(**refresh)
    for button, action in ((cancel, "cancel"), (up, "up"), (down, "down")):
        button.click(lambda j, c, a=action: _message(act(engine, a, j, c)), [jobs, client], message, queue=False,
                     show_progress="hidden").then(**refresh)
    pause.click(lambda: toggle_pause(engine), None, pause, queue=False, show_progress="hidden").then(**refresh)
    def turned(on: bool, client_id: str) -> None:
        if not on:
            ensure_queue(engine).stop_forever(client_id, tab)

    forever.change(turned, [forever, client], None, queue=False, show_progress="hidden")
    return QueuePanel(client=client, forever=forever, jobs=jobs, status=status)


def _message(text: str) -> str:
    return f"<div class='sd-note'>{html.escape(text)}</div><span hidden>{time.time()}</span>"

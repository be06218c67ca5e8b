"""A1111's `POST /internal/progress`: how far a task is, by its `id_task`, in A1111's ProgressResponse shape.

Its page script `requestProgress` (and extensions' copies of it) poll this while a generation runs. A task is a
job of the visible queue (by job id, or by the `force_task_id` an API call gave), or a task an extension keeps
with A1111's `modules.progress` functions (`add_task_to_queue` / `start_task` / `finish_task`, kept by the shim
in modules/a1111/progress.py). Running: the engine's JobState (fraction, ETA, the live preview when asked for and
newer than the one the page has).
"""
from __future__ import annotations

import base64
import io
from typing import Any

from pydantic import BaseModel, Field


class ProgressRequest(BaseModel):
    id_task: str | None = Field(default=None, title="Task ID", description="id of the task to get progress for")
    id_live_preview: int = Field(default=-1, title="Live preview image ID",
                                 description="id of last received last preview image")
    live_preview: bool = Field(default=True, title="Include live preview",
                               description="boolean flag indicating whether to include the live preview image")


class ProgressResponse(BaseModel):
    active: bool = Field(title="Whether the task is being worked on right now")
    queued: bool = Field(title="Whether the task is in queue")
    completed: bool = Field(title="Whether the task has already finished")
    progress: float | None = Field(default=None, title="Progress", description="The progress with a range of 0 to 1")
    eta: float | None = Field(default=None, title="ETA in secs")
    live_preview: str | None = Field(default=None, title="Live preview image",
                                     description="Current live preview; a data: uri")
    id_live_preview: int | None = Field(default=None, title="Live preview image ID")
    textinfo: str | None = Field(default=None, title="Info text", description="Info text used by WebUI.")


def _answer(active=False, queued=False, completed=False, progress=None, eta=None, live_preview=None,
            id_live_preview=-1, textinfo=None) -> dict[str, Any]:
    return {"active": active, "queued": queued, "completed": completed, "progress": progress, "eta": eta,
            "live_preview": live_preview, "id_live_preview": id_live_preview, "textinfo": textinfo}


def _running(state, id_live_preview: int, live_preview: bool) -> dict[str, Any]:
    preview, preview_id = None, id_live_preview
    image = state.current_image
    if live_preview and image is not None and state.current_image_step != id_live_preview:
        try:
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="JPEG", quality=90)
            preview = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
            preview_id = state.current_image_step
        except (AttributeError, OSError, ValueError):  # a preview being replaced under us: next poll
            preview = None
    return _answer(active=True, progress=state.progress() if state.active else 0.0, eta=state.eta() or None,
                   live_preview=preview, id_live_preview=preview_id, textinfo=state.textinfo)


def progress(engine, id_task: str, id_live_preview: int = -1, live_preview: bool = True) -> dict[str, Any]:
    from modules.a1111 import progress as tasks

    queue = getattr(engine, "visible_queue", None)
    job = queue.by_task(id_task) if queue is not None and id_task else None
    if job is not None:
        if job.status == "queued":
            index = queue.queued_index(job)
            waiting = sum(1 for j in queue.jobs() if j.status == "queued")
            return _answer(queued=True, textinfo=f"In queue: {(index or 0) + 1}/{max(waiting, 1)}")
        if job.status == "running":
            return _running(engine.state, id_live_preview, live_preview)
        return _answer(completed=True, textinfo=job.error or None)
    if id_task and id_task == tasks.current_task:
        return _running(engine.state, id_live_preview, live_preview)
    if id_task in tasks.pending_tasks:
        order = sorted(tasks.pending_tasks, key=tasks.pending_tasks.get)
        return _answer(queued=True, textinfo=f"In queue: {order.index(id_task) + 1}/{len(order)}")
    return _answer(completed=id_task in tasks.finished_tasks, textinfo="Waiting...")


def pending(engine) -> dict[str, Any]:
    """A1111's `GET /internal/pending-tasks`: the tasks waiting (queue jobs and extensions' tasks)."""
    from modules.a1111 import progress as tasks

    queue = getattr(engine, "visible_queue", None)
    waiting = [j.task_id or j.id for j in (queue.jobs() if queue is not None else []) if j.status == "queued"]
    waiting += list(tasks.pending_tasks)
    return {"size": len(waiting), "tasks": waiting}

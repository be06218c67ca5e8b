"""A1111's `modules.progress`: task ids the UI polls. Extensions that queue work call these; our progress is the
engine's job state, so the bookkeeping here only answers who is queued, running and finished."""
from __future__ import annotations

import random
import string
import time
from collections import OrderedDict

current_task = None
pending_tasks: "OrderedDict[str, float]" = OrderedDict()
finished_tasks: list[str] = []
recorded_results: list = []
recorded_results_limit = 2


def create_task_id(task_type: str) -> str:
    suffix = "".join(random.choices(string.ascii_uppercase + string.digits, k=7))
    return f"task({task_type}-{suffix})"


def start_task(id_task: str) -> None:
    global current_task
    current_task = id_task
    pending_tasks.pop(id_task, None)


def finish_task(id_task: str) -> None:
    global current_task
    if current_task == id_task:
        current_task = None
    finished_tasks.append(id_task)
    del finished_tasks[:-16]


def record_results(id_task, res) -> None:
    recorded_results.append((id_task, res))
    del recorded_results[:-recorded_results_limit]


def add_task_to_queue(id_job: str) -> None:
    pending_tasks[id_job] = time.time()


def progressapi(req):
    """A1111's handler of POST /internal/progress, for extensions that call it themselves (modules/task_progress)."""
    from modules import shared, task_progress

    return task_progress.ProgressResponse(**task_progress.progress(
        shared.engine, getattr(req, "id_task", None) or "", getattr(req, "id_live_preview", -1),
        getattr(req, "live_preview", True)))


def __getattr__(name: str):
    if name in ("ProgressRequest", "ProgressResponse"):
        from modules import task_progress

        return getattr(task_progress, name)
    raise AttributeError(name)

"""A1111's `/internal/*` routes that its page script and extensions' scripts call: `POST /internal/progress`
(what `requestProgress` polls: modules/task_progress.py), `GET /internal/pending-tasks`, `GET /internal/ping`.
They belong to the UI (A1111 serves them with the page, behind its login): without `--api` too, and 401 to a
request without the UI's login when there is one."""
from __future__ import annotations

from typing import Callable

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from modules import task_progress
from modules.task_progress import ProgressRequest


def add(app: FastAPI, engine, gradio_app: Callable[[], object | None]) -> None:
    from webui.app import logged_in

    def refused(request: Request) -> JSONResponse | None:
        return None if logged_in(gradio_app(), request) else JSONResponse({"detail": "Not authenticated"}, 401)

    @app.post("/internal/progress", include_in_schema=False)
    async def internal_progress(body: ProgressRequest, request: Request):
        return refused(request) or await run_in_threadpool(
            task_progress.progress, engine, body.id_task or "", body.id_live_preview, body.live_preview)

    @app.get("/internal/pending-tasks", include_in_schema=False)
    async def pending_tasks(request: Request):
        return refused(request) or task_progress.pending(engine)

    @app.get("/internal/ping", include_in_schema=False)
    async def ping(request: Request):
        return refused(request) or {}

    for route in app.routes:  # the UI's own (behind its login): not an extension's open route for --listen's warning
        if getattr(route, "path", "").startswith("/internal/") and getattr(route, "endpoint", None) in (
                internal_progress, pending_tasks, ping):
            route.ui_route = True

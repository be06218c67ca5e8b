"""`/sdapi/v1/queue`: generations submitted without waiting (modules/job_queue.py). A queued job runs exactly as
the blocking `/sdapi/v1/txt2img` / `img2img` call with the same body, whose answer it keeps (`result`). A1111's
routes themselves keep their blocking behaviour (their jobs are listed here while they wait and run), so existing
clients are unchanged."""
from __future__ import annotations

from typing import Any

from fastapi import Body, Depends, FastAPI, Request
from starlette.concurrency import run_in_threadpool
from starlette.convertors import StringConvertor, register_url_convertor

from modules.api import models
from modules.api.api import ApiError, _errors
from modules.job_queue import QueueError, QueuedJob, ensure_queue, public, workers_of

PREFIX = "/sdapi/v1/queue"


class _JobId(StringConvertor):
    """Job ids are 16 hex digits: `/queue/txt2img`, `/queue/pause` … are never taken for one (nor advertised as
    GET/DELETE in a 405's Allow)."""

    regex = "[0-9a-f]{16}"


register_url_convertor("jobid", _JobId())
BODIES = {"txt2img": models.StableDiffusionTxt2ImgProcessingAPI, "img2img": models.StableDiffusionImg2ImgProcessingAPI}


class QueueApi:
    def __init__(self, app: FastAPI, api, engine, auth=None):
        self.api, self.engine = api, engine
        self.queue = ensure_queue(engine)
        self.queue.register("api", self._run)
        deps = [Depends(auth)] if auth is not None else []
        extra = _errors(401) if auth is not None else {}
        add = app.add_api_route
        add(PREFIX + "/txt2img", self.submit_txt2img, methods=["POST"], dependencies=deps, tags=["queue"],
            responses={**extra, **_errors(422, 429)})
        add(PREFIX + "/img2img", self.submit_img2img, methods=["POST"], dependencies=deps, tags=["queue"],
            responses={**extra, **_errors(404, 422, 429)})
        add(PREFIX, self.listing, methods=["GET"], dependencies=deps, tags=["queue"], responses=extra)
        add(PREFIX + "/pause", self.pause, methods=["POST"], dependencies=deps, tags=["queue"], responses=extra)
        add(PREFIX + "/resume", self.resume, methods=["POST"], dependencies=deps, tags=["queue"], responses=extra)
        add(PREFIX + "/{job_id:jobid}", self.get, methods=["GET"], dependencies=deps, tags=["queue"],
            responses={**extra, **_errors(404, 422)})
        add(PREFIX + "/{job_id:jobid}", self.cancel, methods=["DELETE"], dependencies=deps, tags=["queue"],
            responses={**extra, **_errors(404, 409, 422)})
        add(PREFIX + "/{job_id:jobid}/move", self.move, methods=["POST"], dependencies=deps, tags=["queue"],
            responses={**extra, **_errors(404, 409, 422)})
        add("/sdapi/v1/workers", self.workers, methods=["GET"], dependencies=deps, tags=["queue"], responses=extra)

    # -- running a job -----------------------------------------------------------------------------------------

    def _run(self, job: QueuedJob) -> dict:
        body = BODIES[job.mode](**job.body)
        return self.api.txt2img(body) if job.mode == "txt2img" else self.api.img2img(body)

    def _submit(self, mode: str, body, request: Request) -> dict:
        if mode == "img2img" and not body.init_images:
            raise ApiError(404, "Init image not found", "NotFound")
        from modules.request_types import Img2ImgRequest, Txt2ImgRequest

        # the same checks as the blocking call, now: a bad request is a 422 here, not a failed job later
        req, raw = self.api._build(Txt2ImgRequest if mode == "txt2img" else Img2ImgRequest, body,
                                   ("init_images", "mask") if mode == "img2img" else ())
        echo = None if mode == "txt2img" else (raw if req.include_init_images else {"init_images": None, "mask": None})
        client = request.client.host if request.client else ""
        try:
            job = self.queue.submit(mode, body.model_dump(exclude_unset=True, mode="json"), "api", client,
                                    request=req, convert=lambda result: self.api._response(req, result, echo),
                                    task_id=req.force_task_id or "")
        except QueueError as e:
            raise ApiError(e.status, str(e)) from None
        return {"id": job.id, "status": job.status, "position": self.queue.position(job)}

    async def submit_txt2img(self, request: Request, body: models.StableDiffusionTxt2ImgProcessingAPI):
        """Queue a txt2img job; answers at once with its id (follow it with GET /sdapi/v1/queue/{id})."""
        return await run_in_threadpool(self._submit, "txt2img", body, request)

    async def submit_img2img(self, request: Request, body: models.StableDiffusionImg2ImgProcessingAPI):
        """Queue an img2img job; answers at once with its id."""
        return await run_in_threadpool(self._submit, "img2img", body, request)

    # -- looking and changing ----------------------------------------------------------------------------------

    def _job(self, job_id: str) -> QueuedJob:
        try:
            return self.queue.get(job_id)
        except QueueError as e:
            raise ApiError(e.status, str(e)) from None

    async def listing(self):
        jobs = self.queue.jobs()
        return {"paused": self.queue.paused,
                "jobs": [public(j, self.queue.position(j), with_result=False) for j in jobs]}

    async def get(self, job_id: str):
        """Status and position; while running, progress as /sdapi/v1/progress gives it; once done, `result` is the
        txt2img/img2img answer (images, parameters, info)."""
        job = self._job(job_id)
        progress = None
        if job.status == "running":
            st = self.engine.state
            progress = {"progress": st.progress(), "eta_relative": st.eta(), "sampling_step": st.sampling_step,
                        "sampling_steps": st.sampling_steps}
        return public(job, self.queue.position(job), progress)

    async def cancel(self, job_id: str):
        """A queued job is cancelled; the running one is interrupted (its finished pictures are kept)."""
        self._job(job_id)
        try:
            job = self.queue.cancel(job_id)
        except QueueError as e:
            raise ApiError(e.status, str(e)) from None
        return public(job, self.queue.position(job), with_result=False)

    async def move(self, job_id: str, change: dict[str, Any] = Body(...)):
        """`{"position": N}`: the job's place among the queued ones (0: next to run)."""
        position = change.get("position")
        if not isinstance(position, int) or isinstance(position, bool) or position < 0:
            raise ApiError(422, "position: a whole number from 0 (next to run)")
        self._job(job_id)
        try:
            job = self.queue.move(job_id, position)
        except QueueError as e:
            raise ApiError(e.status, str(e)) from None
        return public(job, self.queue.position(job), with_result=False)

    async def workers(self):
        """Who runs the jobs: this process ("local") and, with --cluster, each worker: device, memory, loaded
        checkpoints, current job, jobs done, it/s, whether it is alive."""
        return {"workers": workers_of(self.engine)}

    async def pause(self):
        """The running job finishes; queued ones wait until resume."""
        self.queue.pause()
        return {"paused": True}

    async def resume(self):
        self.queue.resume()
        return {"paused": False}


def mount(app: FastAPI, api, engine, auth=None) -> QueueApi:
    return QueueApi(app, api, engine, auth)

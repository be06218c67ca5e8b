"""The visible queue: every generation (the UI's Generate, A1111's blocking API routes, `POST
/sdapi/v1/queue/txt2img`) is a job here, listed, moved, cancelled, paused, served one at a time by a worker thread,
and kept across a restart.

A job is its request body (what the listing shows, and what a restart runs again) plus its status (queued, running,
done, failed, interrupted, cancelled). The worker runs a job through its in-memory `work` (the UI's click, a waiting
API call) or, after a restart, through the runner registered for its source ("api": the API's own txt2img/img2img
path; "ui": the engine with the stored request). Jobs are stored in the history database's `jobs` table: queued ones
come back after a restart (unless the setting says not to, or nobody can use their answer any more: a blocking API
call's caller is gone); one that was running when the process died is marked failed "interrupted by shutdown", never
silently lost.
"""
from __future__ import annotations

import base64
import io
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger(__name__)

STATUSES = ("queued", "running", "done", "failed", "interrupted", "cancelled")
FINISHED = ("done", "failed", "interrupted", "cancelled")
KEEP_FINISHED = 200  # finished jobs listed (and their results kept in memory) at most
KEEP_SHOWN_RESULTS = 8  # pictures of jobs a page has already shown are kept only for the newest few

JOBS_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, mode TEXT NOT NULL, body TEXT NOT NULL, source TEXT NOT NULL, client TEXT NOT NULL,
    status TEXT NOT NULL, position REAL NOT NULL, created REAL NOT NULL, started REAL, finished REAL,
    error TEXT NOT NULL DEFAULT '', resumable INTEGER NOT NULL DEFAULT 1, worker TEXT NOT NULL DEFAULT '',
    retried INTEGER NOT NULL DEFAULT 0
);
"""


class QueueError(Exception):
    """`status` (404 unknown job, 409 not movable/cancellable now, 429 queue full) and the reason."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status


@dataclass
class QueuedJob:
    id: str
    mode: str
    body: dict
    source: str = "api"
    client: str = ""
    status: str = "queued"
    position: float = 0.0
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    error: str = ""
    result: Any = None  # once done (in memory only): the A1111 answer, or the UI's GenerationResult
    resumable: bool = True  # its body alone can run it again after a restart
    work: Callable[[], Any] | None = field(default=None, repr=False)  # how to run it now (in memory only)
    forever: bool = False  # "Generate forever": when done, the same job is queued again
    next_id: str | None = None  # the job "Generate forever" queued after this one
    previous: "QueuedJob | None" = field(default=None, repr=False)  # the forever job this one was queued after
    exception: BaseException | None = field(default=None, repr=False)  # why it failed, for a caller waiting on it
    delivered: bool = False  # a page has shown its result (a reload re-attaches to those not yet shown)
    request: Any = field(default=None, repr=False)  # the typed request, for running it on a cluster worker
    script_args: list | None = field(default=None, repr=False)  # the UI's script arguments, with `request`
    worker: str = ""  # the cluster worker running or that ran it
    retried: int = 0  # requeued after its worker was lost
    progress: dict | None = None  # a cluster worker's JobState while it runs (the page reads it)
    convert: Callable[[Any], Any] | None = field(default=None, repr=False)  # a worker's result → this job's answer
    stage: str = ""  # where a job of several generations is ("picture 2 of 5: cat.png"), shown with its progress
    task_id: str = ""  # A1111's id_task for it (the API's force_task_id), answered by POST /internal/progress

    def summary(self) -> dict:
        body = self.body
        return {"id": self.id, "mode": self.mode, "status": self.status, "source": self.source,
                "client": self.client, "prompt": str(body.get("prompt", ""))[:200],
                "width": body.get("width", 512), "height": body.get("height", 512), "steps": body.get("steps", 20),
                "batch_size": body.get("batch_size", 1), "n_iter": body.get("n_iter", 1), "created": self.created,
                "started": self.started, "finished": self.finished, "error": self.error, "forever": self.forever,
                "worker": self.worker, "retried": self.retried, "stage": self.stage}


class JobStore:
    """The `jobs` table (in the history database, one writer)."""

    def __init__(self, history):
        self.history = history
        with history._lock:
            history._writer.executescript(JOBS_SCHEMA)
            columns = {row[1] for row in history._writer.execute("PRAGMA table_info(jobs)")}
            for name, kind in (("resumable", "INTEGER NOT NULL DEFAULT 1"), ("worker", "TEXT NOT NULL DEFAULT ''"),
                               ("retried", "INTEGER NOT NULL DEFAULT 0")):
                if name not in columns:  # a database from before the column
                    history._writer.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")

    def save(self, job: QueuedJob) -> None:
        with self.history._lock:
            self.history._writer.execute(
                "INSERT INTO jobs (id, mode, body, source, client, status, position, created, started, finished, "
                "error, resumable, worker, retried) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) "
                "DO UPDATE SET status = excluded.status, position = excluded.position, started = excluded.started, "
                "finished = excluded.finished, error = excluded.error, worker = excluded.worker, retried = "
                "excluded.retried",
                (job.id, job.mode, json.dumps(job.body), job.source, job.client, job.status, job.position,
                 job.created, job.started, job.finished, job.error, int(job.resumable), job.worker, job.retried))

    def recover(self) -> tuple[list[QueuedJob], list[QueuedJob]]:
        """(queued jobs in order, jobs that stopped with the process — now failed or cancelled).

        The one that was running is failed "interrupted by shutdown"; a queued one its body cannot run again (a
        blocking API call, whose caller has gone; a UI click with a script's controls) is cancelled, saying so."""
        now = time.time()
        with self.history._lock:
            conn = self.history._writer
            rows = conn.execute("SELECT * FROM jobs WHERE status IN ('queued', 'running') ORDER BY position").fetchall()
            ended: dict[str, tuple[str, str]] = {}
            for row in rows:
                if row["status"] == "running":
                    ended[row["id"]] = ("failed", "interrupted by shutdown")
                elif not row["resumable"]:
                    ended[row["id"]] = ("cancelled", "not run after the restart: " + (
                        "its caller had gone" if row["source"] == "api" else "it cannot be stored whole"))
            for job_id, (status, error) in ended.items():
                conn.execute("UPDATE jobs SET status = ?, finished = ?, error = ? WHERE id = ?",
                             (status, now, error, job_id))

        def job(r, status="queued", error="", finished=None) -> QueuedJob:
            return QueuedJob(id=r["id"], mode=r["mode"], body=json.loads(r["body"]), source=r["source"],
                             client=r["client"], status=status, position=r["position"], created=r["created"],
                             finished=finished, error=error, resumable=bool(r["resumable"]))

        queued = [job(r) for r in rows if r["id"] not in ended]
        stopped = [job(r, *ended[r["id"]], finished=now) for r in rows if r["id"] in ended]
        return queued, stopped

    def drop_queued(self) -> None:
        with self.history._lock:
            self.history._writer.execute("UPDATE jobs SET status = 'cancelled', finished = ?, error = ? WHERE status "
                                         "= 'queued'", (time.time(), "not resumed after a restart"))


Runner = Callable[[QueuedJob], Any]


class VisibleQueue:
    """Jobs in order; a worker thread serves them one at a time, each through its `work` or its source's runner."""

    def __init__(self, run: Runner | None = None, store: JobStore | None = None, *, max_per_client: int = 20,
                 max_total: int = 100, resume: bool = True, interrupt=None):
        self.store, self.interrupt = store, interrupt
        self.runners: dict[str, Runner] = {}
        self.default_runner = run  # for jobs whose source has no runner of its own
        self.max_per_client, self.max_total = max_per_client, max_total
        self.executor = None  # a cluster's workers (modules/cluster), else jobs run in the worker thread
        self._jobs: dict[str, QueuedJob] = {}
        self._cond = threading.Condition()
        self._in_job = threading.local()
        self.paused = False
        self._stop = False
        if store is not None:
            queued, stopped = store.recover()
            if not resume:
                store.drop_queued()
                queued = []
            for job in [*stopped, *queued]:
                self._jobs[job.id] = job
            if queued:
                log.info("queue: %d job(s) from before the restart are queued again", len(queued))
        self._worker = threading.Thread(target=self._serve, name="visible queue", daemon=True)
        self._worker.start()

    def register(self, source: str, run: Runner) -> None:
        """How jobs from `source` run from their body alone (after a restart, or queued through the API)."""
        with self._cond:
            self.runners[source] = run
            self._cond.notify_all()

    def fail_unrunnable(self) -> list[QueuedJob]:
        """Once every runner is registered: queued jobs nothing can run (an API job, restarted without --api) fail,
        saying why, instead of waiting for ever."""
        with self._cond:
            stuck = [j for j in self._jobs.values() if j.status == "queued" and self._runner(j) is None]
            for job in stuck:
                job.status, job.finished = "failed", time.time()
                job.error = f"cannot run a {job.source} job here (start with --api to run the API's jobs)"
                self._persist(job)
            return stuck

    # -- submitting and looking ----------------------------------------------------------------------------------

    def submit(self, mode: str, body: dict, source: str = "api", client: str = "", *,
               work: Callable[[], Any] | None = None, resumable: bool = True, forever: bool = False,
               request: Any = None, script_args: list | None = None,
               convert: Callable[[Any], Any] | None = None, task_id: str = "") -> QueuedJob:
        """Queue a job (429 past the limits). `work` runs it now; without it, its source's runner runs `body`."""
        with self._cond:
            waiting = [j for j in self._jobs.values() if j.status == "queued"]
            if len(waiting) >= self.max_total:
                raise QueueError(429, f"the queue is full ({self.max_total} jobs waiting); try again later")
            if sum(1 for j in waiting if j.client == client) >= self.max_per_client:
                raise QueueError(429, f"{self.max_per_client} of your jobs are already waiting; wait for one "
                                      "to start")
            return self._add(QueuedJob(id=uuid.uuid4().hex[:16], mode=mode, body=body, source=source,
                                       client=client, work=work, resumable=resumable, forever=forever,
                                       request=request, script_args=script_args, convert=convert,
                                       task_id=task_id))

    def _add(self, job: QueuedJob) -> QueuedJob:
        job.position = max((j.position for j in self._jobs.values()), default=0.0) + 1
        self._jobs[job.id] = job
        self._persist(job)
        self._cond.notify_all()
        return job

    def call(self, mode: str, body: dict, work: Callable[[], Any], source: str = "api", client: str = "",
             request: Any = None, task_id: str = "") -> Any:
        """Run `work` as a listed job and wait for it (A1111's blocking routes): its result, or its exception.

        Called from within a job (a queued API job running the blocking path) it simply runs."""
        if getattr(self._in_job, "running", False):
            return work()
        job = self.submit(mode, body, source, client, work=work, resumable=False, request=request, task_id=task_id)
        with self._cond:
            while job.status not in FINISHED:
                self._cond.wait(timeout=1.0)
        if job.exception is not None:
            raise job.exception
        if job.status == "cancelled":
            raise QueueError(409, f"job {job.id} was cancelled in the queue before it ran")
        if job.status == "failed":
            raise QueueError(503, f"job {job.id} failed: {job.error}")
        result, job.result = job.result, None  # handed over: the queue keeps no copy of the pictures
        return result

    def get(self, job_id: str) -> QueuedJob:
        job = self._jobs.get(job_id)
        if job is None:
            raise QueueError(404, f"no job {job_id!r} in the queue")
        return job

    def by_task(self, id_task: str) -> QueuedJob | None:
        """The job with that id, or with that A1111 task id (the newest, if one was reused)."""
        with self._cond:
            if id_task in self._jobs:
                return self._jobs[id_task]
            found = [j for j in self._jobs.values() if id_task and j.task_id == id_task]
        return max(found, key=lambda j: j.created) if found else None

    def jobs(self) -> list[QueuedJob]:
        """Running and queued jobs in the order they will run, then the finished ones, newest first."""
        with self._cond:
            active = sorted((j for j in self._jobs.values() if j.status in ("queued", "running")),
                            key=lambda j: (j.status != "running", j.position))
            done = sorted((j for j in self._jobs.values() if j.status in FINISHED), key=lambda j: -(j.finished or 0))
            return active + done[:KEEP_FINISHED]

    def position(self, job: QueuedJob) -> int | None:
        """0 for the running job, 1… for queued ones; None once finished."""
        if job.status not in ("queued", "running"):
            return None
        return next((i for i, j in enumerate(self.jobs()) if j.id == job.id), None)

    def undelivered(self, client: str, mode: str, source: str = "ui") -> list[QueuedJob]:
        """A page's jobs it has not shown yet (queued, running, or done while no page followed), oldest first."""
        with self._cond:
            mine = [j for j in self._jobs.values() if j.client == client and j.mode == mode and j.source == source
                    and not j.delivered and j.status != "cancelled"]
            return sorted(mine, key=lambda j: j.position)

    # -- changing the order ------------------------------------------------------------------------------------

    def cancel(self, job_id: str) -> QueuedJob:
        """A queued job is cancelled; the running one is interrupted (its finished pictures are kept)."""
        with self._cond:
            job = self.get(job_id)
            if job.status == "queued":
                job.status, job.finished, job.forever = "cancelled", time.time(), False
                self._persist(job)
                self._cond.notify_all()
            elif job.status == "running":
                job.error, job.forever = "interrupted by request", False
                if self.interrupt is not None:
                    self.interrupt()
            else:
                raise QueueError(409, f"job {job_id} has already {job.status}")
            return job

    def move(self, job_id: str, position: int) -> QueuedJob:
        """Put a queued job at `position` among the queued ones (0: next to run)."""
        with self._cond:
            job = self.get(job_id)
            if job.status != "queued":
                raise QueueError(409, f"job {job_id} is {job.status}; only queued jobs move")
            queued = [j for j in sorted(self._jobs.values(), key=lambda j: j.position) if j.status == "queued"
                      and j is not job]
            position = max(0, min(int(position), len(queued)))
            queued.insert(position, job)
            base = min((j.position for j in queued), default=1.0)
            for i, j in enumerate(queued):
                j.position = base + i
                self._persist(j)
            return job

    def queued_index(self, job: QueuedJob) -> int | None:
        """The job's place among the queued ones (what `move` takes), None when it is not queued."""
        with self._cond:
            queued = sorted((j for j in self._jobs.values() if j.status == "queued"), key=lambda j: j.position)
            return next((i for i, j in enumerate(queued) if j is job), None)

    def stop_forever(self, client: str, mode: str | None = None) -> int:
        """"Cancel generate forever": the client's jobs run as they are and no more are queued after them."""
        with self._cond:
            mine = [j for j in self._jobs.values() if j.client == client and j.forever
                    and j.status in ("queued", "running") and (mode is None or j.mode == mode)]
            for job in mine:
                job.forever = False
            return len(mine)

    def pause(self) -> None:
        with self._cond:
            self.paused = True

    def resume(self) -> None:
        with self._cond:
            self.paused = False
            self._cond.notify_all()

    def shutdown(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()

    @property
    def stopped(self) -> bool:
        return self._stop

    # -- the worker --------------------------------------------------------------------------------------------

    def _runner(self, job: QueuedJob) -> Callable[[], Any] | None:
        if job.work is not None:
            return job.work
        run = self.runners.get(job.source, self.default_runner)
        return (lambda: run(job)) if run is not None else None

    def _next(self) -> tuple[QueuedJob | None, Any]:
        """The next job to start and where (None: in this thread; else the executor's slot), or (None, None)."""
        if self.paused:
            return None, None
        queued = sorted((j for j in self._jobs.values() if j.status == "queued"), key=lambda j: j.position)
        if self.executor is not None:  # which job starts next, and on which worker, is the executor's choice
            return self.executor.assign(queued, self) or (None, None)
        for job in queued:
            if self._runner(job) is not None:
                return job, None
        return None, None

    def _serve(self) -> None:
        while not self._stop:
            try:
                self._serve_one()
            except Exception:  # noqa: BLE001 - a bug here must not stop the queue: every generation waits on it
                log.exception("queue: dispatching failed; going on")
                time.sleep(1.0)

    def _serve_one(self) -> None:
        with self._cond:
            job, slot = self._next()
            while job is None and not self._stop:
                self._cond.wait(timeout=1.0)
                job, slot = self._next()
            if self._stop:
                return
            job.status, job.started = "running", time.time()
            run = self._runner(job) if slot is None else None
            self._persist(job)
            self._cond.notify_all()
        if slot is None:
            self._run_here(job, run)
            return
        try:
            self.executor.launch(job, slot, self)
        except Exception as e:  # noqa: BLE001 - the job could not be started: it fails, saying why
            self.finish(job, None, e)

    def run_here(self, job: QueuedJob) -> None:
        """Run a job in the calling thread (a cluster's local lane: what a worker cannot run)."""
        self._run_here(job, self._runner(job))

    def _run_here(self, job: QueuedJob, run: Callable[[], Any]) -> None:
        self._in_job.running = True
        try:
            result = run()
        except Exception as e:  # noqa: BLE001 - a job's failure is its own; the queue goes on
            self.finish(job, None, e)
        else:
            self.finish(job, result, None)
        finally:
            self._in_job.running = False

    def finish(self, job: QueuedJob, result: Any, exception: BaseException | None) -> None:
        """A job has ended (here or on a cluster worker): its result or error, and "Generate forever"'s next."""
        if exception is None:
            status, error = ("interrupted" if job.error == "interrupted by request" else "done"), job.error
        else:
            status = "failed"
            error = str(getattr(exception, "detail", None) or exception) or type(exception).__name__
        with self._cond:
            job.result, job.status, job.error, job.finished = result, status, error, time.time()
            job.exception, job.progress = exception, None
            # no page showed the result two jobs back either: nobody is watching (a closed tab), so the chain ends
            # (a page shows each result within a moment of its end, long before the next job after it is done)
            grand = job.previous.previous if job.previous is not None else None
            unseen = grand is not None and not grand.delivered
            if job.forever and unseen:
                log.info("queue: Generate forever stopped after job %s: no page is following it", job.id)
            if job.forever and status == "done" and not getattr(result, "interrupted", False) and not self._stop \
                    and not unseen:
                again = self._add(QueuedJob(id=uuid.uuid4().hex[:16], mode=job.mode, body=job.body,
                                            source=job.source, client=job.client, work=job.work,
                                            resumable=job.resumable, forever=True, request=job.request,
                                            script_args=job.script_args, previous=job))
                job.next_id = again.id
            job.forever = False
            if job.previous is not None:
                job.previous.previous = None  # the chain keeps two links, no more
            self._persist(job)
            self._trim()
            self._cond.notify_all()

    def requeue(self, job: QueuedJob, reason: str) -> None:
        """A cluster worker was lost while running `job`: it goes first in line again, once."""
        with self._cond:
            job.status, job.started, job.progress, job.worker = "queued", None, None, ""
            job.retried += 1
            job.position = min((j.position for j in self._jobs.values()), default=1.0) - 1
            log.warning("queue: job %s requeued (%s)", job.id, reason)
            self._persist(job)
            self._cond.notify_all()

    def wake(self) -> None:
        """Something the dispatch depends on changed (a cluster worker became free)."""
        with self._cond:
            self._cond.notify_all()

    def _trim(self) -> None:
        finished = sorted((j for j in self._jobs.values() if j.status in FINISHED), key=lambda j: j.finished or 0)
        for job in finished[:-KEEP_FINISHED]:
            self._jobs.pop(job.id, None)
        for job in finished[:-KEEP_SHOWN_RESULTS]:
            if job.delivered:
                job.result = None

    def _persist(self, job: QueuedJob) -> None:
        if self.store is None:
            return
        try:
            self.store.save(job)
        except Exception as e:  # noqa: BLE001 - the queue in memory still serves the job
            log.warning("queue: could not store job %s (%s)", job.id, e)

    def wait(self, job_id: str, timeout: float = 600) -> QueuedJob:
        """Block until the job has finished (for tests and clients that poll in-process)."""
        deadline = time.time() + timeout
        job = self.get(job_id)
        with self._cond:
            while job.status not in FINISHED and time.time() < deadline:
                self._cond.wait(timeout=min(1.0, max(deadline - time.time(), 0.01)))
        return job


def public(job: QueuedJob, position: int | None, progress: dict | None = None, with_result: bool = True) -> dict[str, Any]:
    """What `GET /sdapi/v1/queue/{id}` answers."""
    out = job.summary()
    out["position"] = position
    if progress is not None:
        out["progress"] = progress
    if with_result and isinstance(job.result, dict):
        out["result"] = job.result
    return out


# -- the engine's one queue ---------------------------------------------------------------------------------------

def ensure_queue(engine) -> VisibleQueue:
    """The engine's visible queue, made on first use (stored in its history database when there is one) with the
    limits from the settings, and a runner for jobs the UI stored whole."""
    queue = getattr(engine, "visible_queue", None)
    if queue is not None and not queue.stopped:
        return queue
    settings = engine.settings
    store = JobStore(engine.history) if getattr(engine, "history", None) is not None else None
    queue = VisibleQueue(None, store, max_per_client=int(settings.get("queue_max_per_client", 20)),
                         max_total=int(settings.get("queue_max_total", 100)),
                         resume=bool(settings.get("queue_resume_after_restart", True)), interrupt=engine.interrupt)
    queue.register("ui", lambda job: run_stored_ui_job(engine, job))
    engine.visible_queue = queue
    return queue


def workers_of(engine) -> list[dict]:
    """Who runs the jobs: this process ("local") and, with a cluster, each worker."""
    executor = getattr(engine.visible_queue, "executor", None)
    if executor is not None:
        return executor.workers()
    running = any(j.status == "running" for j in engine.visible_queue.jobs()) if engine.visible_queue else False
    return [{"name": "local", "device": str(engine.device_config.device), "loaded": [
        str(m.filename) for m in engine.models.loaded], "busy": running, "alive": True, "jobs_done": None,
        "job": None, "it_s": None, "memory": ""}]


def request_summary(req) -> dict:
    """What the queue lists of a request that is not stored whole (a blocking API call, a UI click with scripts)."""
    return {name: getattr(req, name) for name in ("prompt", "negative_prompt", "width", "height", "steps",
                                                   "batch_size", "n_iter", "sampler_name", "seed")
            if isinstance(getattr(req, name, None), (str, int, float))}


_PNG = "__png_base64__"


def body_from_fields(data: dict) -> dict | None:
    """The UI's request fields as JSON (pictures as PNG), so that a restart can run the job again; None when some
    value cannot be stored (then the job runs now but is not resumed after a restart)."""
    from PIL import Image

    def encode(value):
        if isinstance(value, Image.Image):
            buf = io.BytesIO()
            value.save(buf, format="PNG")
            return {_PNG: base64.b64encode(buf.getvalue()).decode("ascii")}
        if isinstance(value, dict):
            return {str(k): encode(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [encode(v) for v in value]
        if value is None or isinstance(value, (str, int, float, bool)):
            return value
        raise TypeError(type(value).__name__)

    try:
        return encode(data)
    except TypeError:
        return None


def fields_from_body(body: dict) -> dict:
    from PIL import Image

    def decode(value):
        if isinstance(value, dict):
            if set(value) == {_PNG}:
                with Image.open(io.BytesIO(base64.b64decode(value[_PNG]))) as im:
                    im.load()
                    return im.copy()
            return {k: decode(v) for k, v in value.items()}
        if isinstance(value, list):
            return [decode(v) for v in value]
        return value

    return decode(body)


def request_from_body(mode: str, body: dict):
    """The typed request a stored UI job was made from."""
    from modules.request_types import Img2ImgRequest, Txt2ImgRequest

    fields = {k: v for k, v in fields_from_body(body).items() if not k.startswith("__")}
    return (Img2ImgRequest if mode == "img2img" else Txt2ImgRequest).from_dict(fields)


def script_titles(engine, mode: str) -> list[str]:
    """The scripts a mode's flat script arguments are laid out for (a stored job's arguments fit only those)."""
    return [s.title() for s in engine.scripts.for_mode(mode).scripts] if engine.scripts is not None else []


def run_stored_ui_job(engine, job: QueuedJob):
    """A UI job queued before a restart: its request, with its script arguments when the same scripts are loaded."""
    from modules.request_types import RequestError

    args = job.body.get("__script_args__")
    if args is not None:
        if script_titles(engine, job.mode) != job.body.get("__scripts__"):
            raise RequestError("the scripts have changed since this job was queued; generate it again")
        args = fields_from_body({"args": args})["args"]
    return engine.generate(request_from_body(job.mode, job.body), args)

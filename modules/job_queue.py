"""The visible queue: generations submitted without waiting (`POST /sdapi/v1/queue/txt2img`), listed, moved,
cancelled, paused, served one at a time by a worker thread, and kept across a restart.

Each job is its A1111 request body plus its status (queued, running, done, failed, interrupted, cancelled). The
worker hands a job to `run` (the API's own txt2img/img2img path, so a queued job is exactly the blocking call) and
that takes the engine's turn like every other generation. Jobs are stored in the history database's `jobs` table:
queued ones come back after a restart (unless the setting says not to); one that was running when the process died
is marked failed "interrupted by shutdown", never silently lost.
"""
from __future__ import annotations

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

JOBS_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, mode TEXT NOT NULL, body TEXT NOT NULL, source TEXT NOT NULL, client TEXT NOT NULL,
    status TEXT NOT NULL, position REAL NOT NULL, created REAL NOT NULL, started REAL, finished REAL,
    error TEXT NOT NULL DEFAULT ''
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
    result: dict | None = None  # the A1111 response once done (in memory only)

    def summary(self) -> dict:
        body = self.body
        return {"id": self.id, "mode": self.mode, "status": self.status, "source": self.source,
                "client": self.client, "prompt": str(body.get("prompt", ""))[:200],
                "width": body.get("width", 512), "height": body.get("height", 512), "steps": body.get("steps", 20),
                "batch_size": body.get("batch_size", 1), "n_iter": body.get("n_iter", 1), "created": self.created,
                "started": self.started, "finished": self.finished, "error": self.error}


class JobStore:
    """The `jobs` table (in the history database, one writer)."""

    def __init__(self, history):
        self.history = history
        with history._lock:
            history._writer.executescript(JOBS_SCHEMA)

    def save(self, job: QueuedJob) -> None:
        with self.history._lock:
            self.history._writer.execute(
                "INSERT INTO jobs (id, mode, body, source, client, status, position, created, started, finished, "
                "error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET status = "
                "excluded.status, position = excluded.position, started = excluded.started, finished = "
                "excluded.finished, error = excluded.error",
                (job.id, job.mode, json.dumps(job.body), job.source, job.client, job.status, job.position,
                 job.created, job.started, job.finished, job.error))

    def recover(self) -> tuple[list[QueuedJob], list[QueuedJob]]:
        """(queued jobs in order, jobs that were running when the process stopped — now failed)."""
        with self.history._lock:
            conn = self.history._writer
            rows = conn.execute("SELECT * FROM jobs WHERE status IN ('queued', 'running') ORDER BY position").fetchall()
            lost = []
            for row in rows:
                if row["status"] == "running":
                    conn.execute("UPDATE jobs SET status = 'failed', finished = ?, error = ? WHERE id = ?",
                                 (time.time(), "interrupted by shutdown", row["id"]))
                    lost.append(row["id"])
        queued = [QueuedJob(id=r["id"], mode=r["mode"], body=json.loads(r["body"]), source=r["source"],
                            client=r["client"], status="queued", position=r["position"], created=r["created"])
                  for r in rows if r["status"] == "queued"]
        failed = [QueuedJob(id=r["id"], mode=r["mode"], body=json.loads(r["body"]), source=r["source"],
                            client=r["client"], status="failed", position=r["position"], created=r["created"],
                            finished=time.time(), error="interrupted by shutdown") for r in rows if r["id"] in lost]
        return queued, failed

    def drop_queued(self) -> None:
        with self.history._lock:
            self.history._writer.execute("UPDATE jobs SET status = 'cancelled', finished = ?, error = ? WHERE status "
                                         "= 'queued'", (time.time(), "not resumed after a restart"))


class VisibleQueue:
    """Jobs in order; a worker thread serves them one at a time through `run(job) -> result dict`."""

    def __init__(self, run: Callable[[QueuedJob], dict], store: JobStore | None = None, *,
                 max_per_client: int = 20, max_total: int = 100, resume: bool = True, interrupt=None):
        self.run, self.store, self.interrupt = run, store, interrupt
        self.max_per_client, self.max_total = max_per_client, max_total
        self._jobs: dict[str, QueuedJob] = {}
        self._cond = threading.Condition()
        self.paused = False
        self._stop = False
        if store is not None:
            queued, failed = store.recover()
            if not resume:
                store.drop_queued()
                queued = []
            for job in [*failed, *queued]:
                self._jobs[job.id] = job
            if queued:
                log.info("queue: %d job(s) from before the restart are queued again", len(queued))
        self._worker = threading.Thread(target=self._serve, name="visible queue", daemon=True)
        self._worker.start()

    # -- submitting and looking ----------------------------------------------------------------------------------

    def submit(self, mode: str, body: dict, source: str = "api", client: str = "") -> QueuedJob:
        with self._cond:
            waiting = [j for j in self._jobs.values() if j.status == "queued"]
            if len(waiting) >= self.max_total:
                raise QueueError(429, f"the queue is full ({self.max_total} jobs waiting); try again later")
            if sum(1 for j in waiting if j.client == client) >= self.max_per_client:
                raise QueueError(429, f"{self.max_per_client} of your jobs are already waiting; wait for one "
                                      "to start")
            last = max((j.position for j in self._jobs.values()), default=0.0)
            job = QueuedJob(id=uuid.uuid4().hex[:16], mode=mode, body=body, source=source, client=client,
                            position=last + 1)
            self._jobs[job.id] = job
            self._persist(job)
            self._cond.notify_all()
            return job

    def get(self, job_id: str) -> QueuedJob:
        job = self._jobs.get(job_id)
        if job is None:
            raise QueueError(404, f"no job {job_id!r} in the queue")
        return job

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
        return next(i for i, j in enumerate(self.jobs()) if j.id == job.id)

    # -- changing the order ------------------------------------------------------------------------------------

    def cancel(self, job_id: str) -> QueuedJob:
        """A queued job is cancelled; the running one is interrupted (its finished pictures are kept)."""
        with self._cond:
            job = self.get(job_id)
            if job.status == "queued":
                job.status, job.finished = "cancelled", time.time()
                self._persist(job)
            elif job.status == "running":
                job.error = "interrupted by request"
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

    # -- the worker --------------------------------------------------------------------------------------------

    def _next(self) -> QueuedJob | None:
        queued = [j for j in self._jobs.values() if j.status == "queued"]
        return min(queued, key=lambda j: j.position) if queued and not self.paused else None

    def _serve(self) -> None:
        while True:
            with self._cond:
                job = self._next()
                while job is None and not self._stop:
                    self._cond.wait(timeout=1.0)
                    job = self._next()
                if self._stop:
                    return
                job.status, job.started = "running", time.time()
                self._persist(job)
            try:
                result = self.run(job)
                status, error = ("interrupted" if job.error == "interrupted by request" else "done"), job.error
            except Exception as e:  # noqa: BLE001 - a job's failure is its own; the queue goes on
                result, status, error = None, "failed", str(getattr(e, "detail", None) or e) or type(e).__name__
            with self._cond:
                job.result, job.status, job.error, job.finished = result, status, error, time.time()
                self._persist(job)
                self._trim()

    def _trim(self) -> None:
        finished = sorted((j for j in self._jobs.values() if j.status in FINISHED), key=lambda j: j.finished or 0)
        for job in finished[:-KEEP_FINISHED]:
            self._jobs.pop(job.id, None)

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
        while job.status not in FINISHED and time.time() < deadline:
            time.sleep(0.02)
        return job


def public(job: QueuedJob, position: int | None, progress: dict | None = None, with_result: bool = True) -> dict[str, Any]:
    """What `GET /sdapi/v1/queue/{id}` answers."""
    out = job.summary()
    out["position"] = position
    if progress is not None:
        out["progress"] = progress
    if with_result and job.result is not None:
        out["result"] = job.result
    return out

"""Which worker takes which job: an idle worker that already holds a job's checkpoint takes it, looking down the
queue for such a match first (so X runs where X is loaded while the Y worker takes the next Y); only when no queued
job matches an idle worker does the first in line go to the idle worker used least recently (its models are the
likeliest to be stale), which loads it. Else the jobs wait. Pure, so it is tested on tables."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class WorkerView:
    """What the dispatcher knows of a worker; `loaded`: the checkpoint files it holds in memory."""

    name: str
    device: str = ""
    loaded: tuple[str, ...] = ()
    busy: bool = False
    alive: bool = True
    last_used: float = 0.0
    jobs_done: int = 0
    job: str = ""  # the id of the job it runs now
    its: float | None = None  # sampling steps per second of its last job
    loras: tuple[str, ...] = ()  # the LoRAs its last job used (patched into its weights still)
    memory: str = ""
    extra: dict = field(default_factory=dict)

    def public(self) -> dict:
        return {"name": self.name, "device": self.device, "loaded": list(self.loaded), "loras": list(self.loras),
                "busy": self.busy,
                "alive": self.alive, "jobs_done": self.jobs_done, "job": self.job or None, "it_s": self.its,
                "memory": self.memory}


def pick_worker(checkpoint: str | None, workers: list[WorkerView], holders_only: bool = False,
                loras: tuple[str, ...] = ()) -> WorkerView | None:
    """The worker for a job on `checkpoint` (a file path; None: any) with `loras`: an idle one holding it (one
    whose weights carry the same LoRAs first), else (unless `holders_only`) the least recently used idle one;
    None when there is none."""
    idle = [w for w in workers if w.alive and not w.busy]
    holding = [w for w in idle if checkpoint is not None and checkpoint in w.loaded]
    if holding or holders_only:
        return min(holding, key=lambda w: (tuple(sorted(w.loras)) != tuple(sorted(loras)), w.last_used),
                   default=None)
    return min(idle, key=lambda w: w.last_used, default=None)


def assign(jobs: list[tuple], workers: list[WorkerView]) -> tuple[str, WorkerView] | None:
    """The next (job id, worker) to start from `jobs` in queue order [(id, checkpoint[, loras])]: the first job an
    idle holder can take, else the first job on the least recently used idle worker; None when none can start."""
    for job_id, checkpoint, *rest in jobs:
        worker = pick_worker(checkpoint, workers, holders_only=True, loras=tuple(rest[0]) if rest else ())
        if worker is not None:
            return job_id, worker
    if jobs:
        worker = pick_worker(jobs[0][1], workers)
        if worker is not None:
            return jobs[0][0], worker
    return None

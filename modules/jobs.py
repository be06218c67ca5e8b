"""One generation at a time, and what the outside sees of it: progress, preview, interrupt and skip.

The UI and the HTTP API share one `JobQueue`; requests are served in arrival order (a fair lock), and `JobState`
is what GET /sdapi/v1/progress and the UI progress bar read.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass
class JobState:
    job: str = ""
    job_count: int = 0
    job_no: int = 0
    job_timestamp: str = "0"
    sampling_step: int = 0
    sampling_steps: int = 0
    interrupted: bool = False
    skipped: bool = False
    textinfo: str | None = None
    time_start: float | None = None
    current_latent: Any = None
    current_image: Any = None
    current_image_step: int = -1
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def begin(self, job: str, job_count: int = 1) -> None:
        with self._lock:
            self.job, self.job_count, self.job_no = job, job_count, 0
            self.job_timestamp = time.strftime("%Y%m%d%H%M%S")
            self.sampling_step = self.sampling_steps = 0
            self.interrupted = self.skipped = False
            self.textinfo = None
            self.current_latent = self.current_image = None
            self.current_image_step = -1
            self.time_start = time.time()

    def end(self) -> None:
        with self._lock:
            self.job, self.job_count, self.job_no = "", 0, 0
            self.sampling_step = self.sampling_steps = 0
            self.current_latent = None
            self.time_start = None

    def next_job(self) -> None:
        with self._lock:
            self.job_no += 1
            self.sampling_step = 0
            self.skipped = False

    def interrupt(self) -> None:
        self.interrupted = True

    # A1111's State names, which extensions call (`shared.state`).

    @property
    def stopping_generation(self) -> bool:
        return self.interrupted

    def stop_generating(self) -> None:
        self.interrupt()

    def nextjob(self) -> None:
        self.next_job()

    def assign_current_image(self, image) -> None:
        """An extension's own preview (shown by the progress bar like ours)."""
        self.current_image = image
        self.current_image_step = self.sampling_step

    def set_current_image(self) -> None:
        """A1111 decodes a preview here; ours are made by the sampling loop."""

    def do_set_current_image(self) -> None:
        """See set_current_image."""

    @property
    def current_image_sampling_step(self) -> int:
        return self.current_image_step

    def dict(self) -> dict:
        return {"skipped": self.skipped, "interrupted": self.interrupted, "stopping_generation": self.interrupted,
                "job": self.job, "job_count": self.job_count, "job_timestamp": self.job_timestamp,
                "job_no": self.job_no, "sampling_step": self.sampling_step, "sampling_steps": self.sampling_steps}

    def skip(self) -> None:
        self.skipped = True

    @property
    def active(self) -> bool:
        return self.time_start is not None

    def progress(self) -> float:
        """Fraction done over the whole job (all batches), 0..1."""
        if not self.job_count:
            return 0.0
        per_job = 1.0 / self.job_count
        done = self.job_no * per_job
        if self.sampling_steps:
            done += per_job * self.sampling_step / self.sampling_steps
        return min(max(done, 0.0), 1.0)

    def eta(self) -> float:
        """Seconds left, extrapolated from the time spent so far."""
        if self.time_start is None:
            return 0.0
        p = self.progress()
        elapsed = time.time() - self.time_start
        return elapsed / p - elapsed if p > 0 else 0.0


class JobQueue:
    """A first-come-first-served lock: each generation waits its turn behind the ones that asked earlier."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: deque[threading.Event] = deque()
        self._busy = False

    @contextmanager
    def turn(self):
        me = threading.Event()
        with self._lock:
            if not self._busy and not self._waiting:
                self._busy = True
                me.set()
            else:
                self._waiting.append(me)
        me.wait()
        try:
            yield
        finally:
            with self._lock:
                if self._waiting:
                    self._waiting.popleft().set()
                else:
                    self._busy = False

    @property
    def pending(self) -> int:
        return len(self._waiting)

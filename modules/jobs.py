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
    stopping: bool = False  # stop after the picture (batch) being made: A1111's stop_generating
    textinfo: str | None = None
    time_start: float | None = None
    current_latent: Any = None
    current_image: Any = None
    current_image_step: int = -1
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _timing: "_StepTiming" = field(default_factory=lambda: _StepTiming(), repr=False)

    def __setattr__(self, name: str, value) -> None:
        object.__setattr__(self, name, value)
        if name == "sampling_step" and "_timing" in self.__dict__:
            self._timing.step(value)

    def begin(self, job: str, job_count: int = 1) -> None:
        with self._lock:
            self.job, self.job_count, self.job_no = job, job_count, 0
            self.job_timestamp = time.strftime("%Y%m%d%H%M%S")
            self.sampling_step = self.sampling_steps = 0
            self.interrupted = self.skipped = self.stopping = False
            self.textinfo = None
            self.current_latent = self.current_image = None
            self.current_image_step = -1
            self.time_start = time.time()
            self._timing = _StepTiming()

    def end(self) -> None:
        with self._lock:
            self.job, self.job_count, self.job_no = "", 0, 0
            self.sampling_step = self.sampling_steps = 0
            self.current_latent = None
            self.time_start = None

    def next_job(self) -> None:
        with self._lock:
            self._timing.batch_done()
            self.job_no += 1
            self.sampling_step = 0
            self.skipped = False

    def interrupt(self) -> None:
        self.interrupted = True

    # A1111's State names, which extensions call (`shared.state`).

    @property
    def stopping_generation(self) -> bool:
        return self.stopping or self.interrupted

    def stop_generating(self) -> None:
        """A1111's: finish the picture (batch) being made, then stop."""
        self.stopping = True

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
        """Seconds left: the steps still to run times the measured time of one step, plus the measured time
        between a batch's last step and the next batch (decoding, saving) for each batch still to finish.

        Measured from the steps themselves, not from the time since the job began: that includes loading the
        model and encoding prompts, which made the estimate at step 1 many times too high."""
        if self.time_start is None or not self.sampling_steps:
            return 0.0
        per_step = self._timing.per_step()
        if per_step is None:
            return 0.0
        batches_left = max(self.job_count - self.job_no - 1, 0)
        steps_left = max(self.sampling_steps - self.sampling_step, 0) + batches_left * self.sampling_steps
        tail = self._timing.per_batch_tail() or 0.0
        return steps_left * per_step + (batches_left + 1) * tail


def _now() -> float:
    return time.monotonic()


class _StepTiming:
    """When each sampling step of the current job ended: the durations of steps (and of what happens between a
    batch's last step and the next batch), for `JobState.eta`."""

    def __init__(self) -> None:
        self.last_step: int | None = None
        self.last_mark: float | None = None
        self.step_total = 0.0
        self.step_count = 0
        self.tail_total = 0.0
        self.tail_count = 0

    def step(self, value) -> None:
        now = _now()
        if not isinstance(value, int) or value <= 0 or self.last_step is None or value <= self.last_step:
            self.last_step, self.last_mark = (value if isinstance(value, int) else None), now  # a new sampling run
            return
        self.step_total += (now - self.last_mark) / (value - self.last_step)
        self.step_count += 1
        self.last_step, self.last_mark = value, now

    def batch_done(self) -> None:
        if self.last_mark is not None and self.step_count:
            self.tail_total += _now() - self.last_mark
            self.tail_count += 1
        self.last_step = self.last_mark = None

    def per_step(self) -> float | None:
        return self.step_total / self.step_count if self.step_count else None

    def per_batch_tail(self) -> float | None:
        return self.tail_total / self.tail_count if self.tail_count else None


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

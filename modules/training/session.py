"""What a training run needs from outside, and how it gets it from the engine: the model, the folders, the
settings, a `JobState` (interrupt flag, progress the UI and /sdapi/v1/progress read) and a progress callback.

`engine_session` waits for the engine's job queue turn, so training never runs at the same time as a generation
(generations asked for meanwhile wait, in order, until the run ends).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from modules.jobs import JobState
from modules.training.common import TrainingProgress


@dataclass
class TrainingSession:
    model: Any  # modules.models.loader.LoadedModel
    paths: Any  # modules.paths.Paths
    options: dict[str, Any] = field(default_factory=dict)  # settings for sample images
    state: JobState = field(default_factory=JobState)
    embeddings: Any = None  # modules.networks.embeddings.EmbeddingDatabase
    on_progress: Callable[[TrainingProgress], None] | None = None
    cpu_threads: Callable[[int, int], None] | None = None  # (resolution, batch) → sets this thread's CPU threads

    def use_cpu_threads(self, resolution: int, batch: int = 1) -> None:
        """The engine's thread policy (modules/cpu_threads.py) for training steps at this size."""
        if self.cpu_threads is not None:
            self.cpu_threads(resolution, batch)

    @property
    def interrupted(self) -> bool:
        return bool(self.state.interrupted)

    def log_dir(self, kind: str, name: str) -> Path:
        """Where a run keeps its samples, loss plot and resume state: `<data>/training/<kind>/<name>`."""
        return Path(self.paths.data_dir) / "training" / kind / name

    def report(self, progress: TrainingProgress) -> None:
        s = self.state
        s.sampling_step, s.sampling_steps = progress.step, progress.total
        s.textinfo = progress.text()
        if progress.sample is not None:
            s.current_image_step = progress.step
        if self.on_progress is not None:
            self.on_progress(progress)


@contextmanager
def engine_session(engine, job: str, checkpoint: str | None = None,
                   on_progress: Callable[[TrainingProgress], None] | None = None):
    """Hold the engine's queue turn for a whole run; the model is the chosen (or current) one, with any applied
    `<lora:…>` weights and `<hypernet:…>` hooks taken out first so training starts from the checkpoint's own
    weights."""
    from modules import cpu_threads
    from modules.networks import hypernetworks, lora

    with engine.queue.turn():
        engine.state.begin(job, 1)
        try:
            model = engine.models.get(checkpoint)
            lora.restore(model)
            hypernetworks.remove(model)

            def threads(resolution: int, batch: int) -> None:
                work = cpu_threads.Work.for_job(model.unet.config, resolution, resolution, batch, cfg=False)
                engine.use_cpu_threads(model, work=work)

            yield TrainingSession(model=model, paths=engine.paths, options=engine.settings.as_dict(),
                                  state=engine.state, embeddings=engine.embeddings, on_progress=on_progress,
                                  cpu_threads=threads)
        finally:
            engine.state.end()

"""The step loop both trainers run: progress reports, saving every N steps, samples every N steps, the loss plot,
interrupt (saves, then stops) and clear errors for out of memory and a diverged loss."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from modules.training.common import ProgressMeter, TrainingError, is_out_of_memory, out_of_memory_error
from modules.training.loss_plot import save_loss_plot
from modules.training.samples import save_sample


@dataclass
class LoopHooks:
    step: Callable[[int], float]  # run optimisation step n (1-based), return its loss
    save: Callable[[int], Path]  # save the output and the resume state after step n
    sample: Callable[[int], object] | None = None  # make a sample image (PIL) after step n


@dataclass
class LoopOutcome:
    steps_done: int
    interrupted: bool = False
    samples: list[Path] = field(default_factory=list)
    loss_plot: Path | None = None


def run_loop(session, config, log_dir: Path, start_step: int, losses: list[float], hooks: LoopHooks) -> LoopOutcome:
    """Steps `start_step+1 … config.steps`; `losses` (one per step since step 1) is extended in place."""
    total = int(config.steps)
    meter = ProgressMeter(start_step, total)
    plot_path = log_dir / "loss.png"
    outcome = LoopOutcome(start_step, loss_plot=plot_path if losses else None)
    session.report(meter.update(start_step, losses[-1] if losses else None,
                                "resumed" if start_step else "starting"))
    step = start_step
    saved_at = start_step
    while step < total:
        if session.interrupted:
            outcome.interrupted = True
            break
        n = step + 1
        try:
            loss = hooks.step(n)
        except (RuntimeError, MemoryError) as e:
            if is_out_of_memory(e):
                raise out_of_memory_error(n) from None
            raise
        if not math.isfinite(loss):
            raise TrainingError(f"the loss became {loss} at step {n}; lower the learning rate (the last saved "
                                "state is kept)")
        step = n
        losses.append(loss)
        progress = meter.update(step, loss)
        if config.save_every and step % config.save_every == 0 and step < total:
            progress.saved = hooks.save(step)
            progress.message = "saved"
            saved_at = step
            progress.loss_plot = outcome.loss_plot = save_loss_plot(losses, plot_path)
        if hooks.sample is not None and config.sample_every and step % config.sample_every == 0:
            path = save_sample(hooks.sample(step), log_dir / "samples", config.output_name, step)
            outcome.samples.append(path)
            progress.sample = path
            progress.loss_plot = outcome.loss_plot = save_loss_plot(losses, plot_path)
        session.report(progress)
    outcome.steps_done = step
    if step != saved_at or step == total:
        final = hooks.save(step)
        outcome.loss_plot = save_loss_plot(losses, plot_path)
        done = meter.update(step, losses[-1] if losses else None, "interrupted: saved" if outcome.interrupted
                            else "done")
        done.saved, done.loss_plot = final, outcome.loss_plot
        done.sample = outcome.samples[-1] if outcome.samples else None
        session.report(done)
    return outcome

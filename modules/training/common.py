"""What every training loop here shares: errors, progress reports, noise/timestep sampling, precision, stepping.

Kept small and stable on purpose: the LoRA and embedding trainers and the from-scratch demo training import it.
"""
from __future__ import annotations

import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import torch


class TrainingError(Exception):
    """Bad input or a failed run, with a message meant for the user (empty folder, unreadable image, out of memory)."""


@dataclass
class TrainingProgress:
    """One report from a running loop; `text()` is the progress line the UI and the CLI show."""

    step: int
    total: int
    loss: float | None = None
    it_per_s: float = 0.0
    eta: float = 0.0  # seconds left
    elapsed: float = 0.0
    message: str = ""
    sample: Path | None = None  # latest sample image
    loss_plot: Path | None = None
    saved: Path | None = None  # latest saved output

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total) if self.total else 0.0

    def text(self) -> str:
        parts = [f"Step {self.step}/{self.total}"]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self.it_per_s:
            parts.append(f"{self.it_per_s:.2f} it/s")
            parts.append(f"ETA {format_seconds(self.eta)}")
        if self.message:
            parts.append(self.message)
        return " · ".join(parts)


@dataclass
class TrainingResult:
    output: Path
    steps_done: int
    losses: list[float] = field(default_factory=list)
    interrupted: bool = False
    samples: list[Path] = field(default_factory=list)
    loss_plot: Path | None = None
    resume_file: Path | None = None


def format_seconds(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressMeter:
    """it/s over the last `window` steps (a resumed run counts only the steps of this run) and the ETA from it."""

    def __init__(self, first_step: int, total: int, window: int = 20):
        self.total = total
        self.started = time.perf_counter()
        self._times: deque[tuple[int, float]] = deque([(first_step, self.started)], maxlen=window + 1)

    def update(self, step: int, loss: float | None, message: str = "") -> TrainingProgress:
        now = time.perf_counter()
        self._times.append((step, now))
        (s0, t0), (s1, t1) = self._times[0], self._times[-1]
        rate = (s1 - s0) / (t1 - t0) if t1 > t0 and s1 > s0 else 0.0
        eta = (self.total - step) / rate if rate else 0.0
        return TrainingProgress(step, self.total, loss, rate, eta, now - self.started, message)


# ---------------------------------------------------------------------------------------------------------------
# Diffusion objective


def noise_scheduler(scheduler_config: dict):
    """The model's own training noise schedule (betas, timesteps, epsilon or v-prediction) as a DDPM scheduler."""
    from diffusers import DDPMScheduler

    config = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
    return DDPMScheduler.from_config(config)


def noisy_latents_and_target(scheduler, latents: torch.Tensor, generator: torch.Generator | None = None):
    """Draw noise and a uniform timestep per sample: (noisy latents, timesteps, the target the UNet should predict)."""
    device = latents.device
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(device, latents.dtype)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],),
                              generator=generator).to(device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    prediction = scheduler.config.prediction_type
    if prediction == "epsilon":
        target = noise
    elif prediction == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    elif prediction == "sample":
        target = latents
    else:
        raise TrainingError(f"unsupported prediction type {prediction!r}")
    return noisy, timesteps, target


def mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.mse_loss(prediction.float(), target.float(), reduction="mean")


# ---------------------------------------------------------------------------------------------------------------
# Precision and stepping


def autocast_dtype(device: torch.device, model_dtype: torch.dtype, mixed_precision: str) -> torch.dtype | None:
    """The autocast dtype on a GPU (None: no autocast). Half-precision weights always need autocast, since the
    trained parameters are kept in float32."""
    if device.type != "cuda":
        return None
    if mixed_precision == "bf16":
        return torch.bfloat16
    if mixed_precision == "fp16" or model_dtype == torch.float16:
        return torch.float16
    if model_dtype == torch.bfloat16:
        return torch.bfloat16
    return None


def precision(device: torch.device, dtype: torch.dtype | None):
    """Autocast for the forward pass on a GPU, nothing on the CPU."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class Stepper:
    """Backward + optimiser step with fp16 loss scaling when needed and gradient clipping."""

    def __init__(self, optimizer: torch.optim.Optimizer, params: list[torch.Tensor], amp_dtype: torch.dtype | None,
                 device: torch.device, max_grad_norm: float = 1.0):
        self.optimizer, self.params, self.max_grad_norm = optimizer, params, max_grad_norm
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    def step(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()
        if self.max_grad_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)


def is_out_of_memory(e: BaseException) -> bool:
    return isinstance(e, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in str(e).lower()


def out_of_memory_error(step: int) -> TrainingError:
    return TrainingError(f"out of memory at step {step}: lower the batch size or the resolution, or turn on "
                         "gradient checkpointing (the last saved state is kept)")


__all__ = ["TrainingError", "TrainingProgress", "TrainingResult", "ProgressMeter", "format_seconds",
           "noise_scheduler", "noisy_latents_and_target", "mse", "autocast_dtype", "precision", "Stepper",
           "is_out_of_memory", "out_of_memory_error"]

"""Sampler names → diffusers' flow-matching schedulers, for Flux.1 and SD3/SD3.5.

The SD table (`samplers.py`) maps A1111's names onto noise-prediction schedulers; flow-matching models predict a
velocity, which only these classes integrate: Euler (FlowMatchEulerDiscrete), Heun (FlowMatchHeunDiscrete), DPM++ 2M
and DPM++ 2M SDE (DPMSolverMultistep on flow sigmas), UniPC (UniPCMultistep on flow sigmas) and LCM (FlowMatchLCM).
Schedule types Karras/Exponential/Beta exist only where the class reshapes flow sigmas (Euler, LCM). Any other
name is refused with the list of those that work.

Timesteps are set as the family's diffusers pipeline sets them, so Euler reproduces `FluxPipeline` and
`StableDiffusion3Pipeline`: Flux passes sigmas `linspace(1, 1/n, n)` and `mu` from the image's token count
(dynamic shift, dev models); SD3 lets the scheduler space them and shift by 3. A shift set by the user replaces
the model's, fixed for every resolution. Classes without dynamic shifting get its equivalent fixed shift, e^mu.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import numpy as np
import torch

from modules.sampling import samplers
from modules.sampling.samplers import SamplerSpec, SchedulerBundle, UnknownSamplerError

_FLOW = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}

FLOW_SAMPLERS: tuple[SamplerSpec, ...] = (
    SamplerSpec("Euler", ("k_euler",), "FlowMatchEulerDiscreteScheduler"),
    SamplerSpec("Heun", ("k_heun",), "FlowMatchHeunDiscreteScheduler"),
    SamplerSpec("DPM++ 2M", ("k_dpmpp_2m",), "DPMSolverMultistepScheduler",
                {**_FLOW, "algorithm_type": "dpmsolver++", "solver_order": 2}),
    SamplerSpec("DPM++ 2M SDE", ("k_dpmpp_2m_sde",), "DPMSolverMultistepScheduler",
                {**_FLOW, "algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    SamplerSpec("UniPC", ("uni_pc",), "UniPCMultistepScheduler", dict(_FLOW)),
    SamplerSpec("LCM", ("k_lcm",), "FlowMatchLCMScheduler"),
)
_SCHEDULE_FLAGS = {"Karras": "use_karras_sigmas", "Exponential": "use_exponential_sigmas", "Beta": "use_beta_sigmas"}
FLOW_SCHEDULE_TYPES = ("Automatic", "Simple", *_SCHEDULE_FLAGS)
_SHAPED = ("FlowMatchEulerDiscreteScheduler", "FlowMatchLCMScheduler")  # classes that reshape flow sigmas


@dataclass(frozen=True)
class FlowSchedule:
    """A schedule type as the flow table knows it (`label` is what infotext and the API show)."""

    label: str
    flag: str | None = None


def flow_sampler_names() -> list[str]:
    return [s.name for s in FLOW_SAMPLERS]


def schedule_types_for(spec: SamplerSpec) -> list[str]:
    return list(FLOW_SCHEDULE_TYPES) if spec.scheduler_class in _SHAPED else ["Automatic", "Simple"]


def _find(name: str) -> SamplerSpec | None:
    low = name.strip().lower()
    return next((s for s in FLOW_SAMPLERS if low == s.name.lower() or low in s.aliases), None)


def resolve_flow(sampler_name: str | None, schedule: str | None) -> tuple[SamplerSpec, FlowSchedule]:
    """A request's `sampler_name`/`scheduler` → the flow sampler and schedule type (names, aliases, any case,
    and legacy "DPM++ 2M Karras" suffixes as in the SD table)."""
    name = (sampler_name or "Euler").strip()
    spec = _find(name)
    if spec is None:
        try:  # "DPM++ 2M Karras", "k_euler": the SD table knows how to split and alias them
            sd_spec, sd_schedule = samplers.resolve(name, schedule)
        except ValueError:
            sd_spec = sd_schedule = None
        spec = _find(sd_spec.name) if sd_spec is not None else None
        if spec is None:
            raise UnknownSamplerError(name, flow_sampler_names(), extra="It is not available for flow-matching "
                                      "(Flux/SD3) models.")
        if sd_schedule is not None and sd_schedule.label != "Automatic" and name.lower() != sd_spec.name.lower():
            schedule = sd_schedule.label
    label = (schedule or "Automatic").strip()
    label = next((t for t in FLOW_SCHEDULE_TYPES if t.lower() == label.lower()), label)
    if label == "Uniform":
        label = "Simple"
    allowed = schedule_types_for(spec)
    if label not in allowed:
        raise ValueError(f"Schedule type {label!r} is not available for {spec.name} on flow-matching (Flux/SD3) "
                         f"models. Schedule types for {spec.name}: {', '.join(allowed)}.")
    return spec, FlowSchedule(label, _SCHEDULE_FLAGS.get(label))


def _class(name: str):
    import diffusers

    return getattr(diffusers, name)


def build_flow_scheduler(sampler_name: str | None, schedule: str | None, base_config: dict, *,
                         shift: float | None = None) -> SchedulerBundle:
    """A fresh scheduler for one job from the model's FlowMatchEuler config; `shift` (a user's setting) replaces
    the model's shift and turns dynamic shifting off."""
    spec, sched = resolve_flow(sampler_name, schedule)
    cls = _class(spec.scheduler_class)
    params = set(inspect.signature(cls.__init__).parameters)
    config = dict(base_config)
    dynamic = bool(config.get("use_dynamic_shifting")) and shift is None
    model_shift = float(shift if shift is not None else config.get("shift", 1.0))
    kwargs = {k: v for k, v in spec.kwargs.items() if k in params}
    for flag in _SCHEDULE_FLAGS.values():
        if flag in params:
            kwargs[flag] = flag == sched.flag
    if "shift" in params:
        kwargs["shift"] = model_shift
    if "flow_shift" in params:
        kwargs["flow_shift"] = model_shift
    if "use_dynamic_shifting" in params:
        kwargs["use_dynamic_shifting"] = dynamic
    if "final_sigmas_type" in params:
        kwargs["final_sigmas_type"] = "zero"
    scheduler = cls.from_config(config, **kwargs)
    scheduler.flow_dynamic = dict(config) if dynamic else None  # how Flux shifts by resolution, for set_flow_timesteps
    step = set(inspect.signature(cls.step).parameters)
    return SchedulerBundle(scheduler, accepts_generator="generator" in step, accepts_eta="eta" in step,
                           sampler=spec, schedule=sched)


def _mu(config: dict, image_seq_len: int) -> float:
    """FluxPipeline's calculate_shift: the shift's log, linear in the image's token count."""
    base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base_shift, max_shift = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    m = (max_shift - base_shift) / (max_len - base_len)
    return image_seq_len * m + (base_shift - m * base_len)


def set_flow_timesteps(scheduler, steps: int, image_seq_len: int, device, family: str = "flux") -> torch.Tensor:
    """Set the scheduler's timesteps as the family's pipeline does and return them."""
    takes = set(inspect.signature(scheduler.set_timesteps).parameters)
    kwargs: dict = {}
    dynamic = getattr(scheduler, "flow_dynamic", None)
    if dynamic is not None:
        mu = _mu(dynamic, image_seq_len)
        if "mu" in takes and scheduler.config.get("use_dynamic_shifting"):
            kwargs["mu"] = mu
        else:  # no dynamic shifting in this class: the same shift, fixed for this resolution
            key = "flow_shift" if "flow_shift" in scheduler.config else "shift"
            scheduler.register_to_config(**{key: math.exp(mu)})
    if family == "flux" and "sigmas" in takes and not scheduler.config.get("use_flow_sigmas"):
        kwargs["sigmas"] = np.linspace(1.0, 1 / steps, steps)
        scheduler.set_timesteps(sigmas=kwargs.pop("sigmas"), device=device, **kwargs)
    else:
        scheduler.set_timesteps(steps, device=device, **kwargs)
    return scheduler.timesteps


def add_flow_noise(scheduler, latents: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """The img2img start (and inpainting's re-noised known region): (1 − σ)·x0 + σ·noise at `timestep`."""
    if hasattr(scheduler, "scale_noise"):
        return scheduler.scale_noise(latents, timestep, noise)
    return scheduler.add_noise(latents, noise, timestep)


__all__ = ["FLOW_SAMPLERS", "FLOW_SCHEDULE_TYPES", "build_flow_scheduler", "set_flow_timesteps", "add_flow_noise",
           "flow_sampler_names", "resolve_flow", "schedule_types_for"]

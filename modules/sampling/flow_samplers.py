"""A1111 sampler names mapped onto diffusers' flow-matching schedulers, for Flux.1 and SD3/SD3.5.

The SD table (``samplers.py``) maps A1111's names onto noise-prediction schedulers. Flow-matching models predict a
velocity, which only these set-ups integrate:

* Euler: ``FlowMatchEulerDiscreteScheduler`` (what ``FluxPipeline`` and ``StableDiffusion3Pipeline`` use);
* Heun: ``FlowMatchHeunDiscreteScheduler`` (two model calls per step);
* DPM++ 2M / DPM++ 2M SDE: ``DPMSolverMultistepScheduler`` on flow sigmas (``use_flow_sigmas``,
  ``prediction_type="flow_prediction"``, the model's shift as ``flow_shift``);
* UniPC: ``UniPCMultistepScheduler`` on flow sigmas, likewise;
* LCM: ``FlowMatchLCMScheduler``.

Names, aliases, letter case and legacy suffixes ("k_euler", "Euler Karras") are read by ``samplers.resolve``; an SD
sampler without a flow counterpart ("Euler a", "DDIM"...) or an unknown name is refused with the list that works.

Schedule types: "Automatic" and "Simple" are the family pipeline's own schedule (evenly spaced, then shifted).
Karras, Exponential and Beta exist only where the class reshapes the *shifted flow* sigmas (Euler, LCM).
DPMSolverMultistep and UniPCMultistep have ``use_karras_sigmas``/... options too, but those branches build the
sigmas of the SD noise schedule instead of flow sigmas (DPM++ 2M + Karras: sigmas up to ~157), so they are refused.

Timesteps are set as the family's diffusers pipeline sets them (``set_flow_timesteps``): Flux passes sigmas
``linspace(1, 1/n, n)`` and ``mu`` from the image's token count (dynamic shift, Flux dev); SD3 lets the scheduler space
them and shifts by 3. DPM/UniPC take ``mu`` themselves (the same shift, e^mu, on their flow sigmas); FlowMatchHeun
has no dynamic shifting and gets e^mu as a fixed shift for the job's resolution. A shift set by the user replaces the
model's and turns dynamic shifting off: the same schedule at every resolution.
"""
from __future__ import annotations

import functools
import inspect
import math

import numpy as np
import torch

from modules.sampling import samplers
from modules.sampling.samplers import (
    SamplerSpec,
    ScheduleType,
    SchedulerBundle,
    UnknownSamplerError,
    UnsupportedScheduleError,
)

__all__ = [
    "FLOW_SAMPLERS",
    "FLOW_SCHEDULE_TYPES",
    "DEFAULT_FLOW_SAMPLER",
    "flow_sampler_names",
    "schedule_types_for",
    "resolve_flow",
    "build_flow_scheduler",
    "calculate_shift",
    "set_flow_timesteps",
    "add_flow_noise",
]

DEFAULT_FLOW_SAMPLER = "Euler"  # the scheduler both families' pipelines ship with

_FLOW_SIGMAS = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}

FLOW_SAMPLERS: tuple[SamplerSpec, ...] = (
    SamplerSpec("Euler", ("k_euler",), "FlowMatchEulerDiscreteScheduler"),
    SamplerSpec(
        "Heun", ("k_heun",), "FlowMatchHeunDiscreteScheduler", options={"second_order": True},
        note="No dynamic shifting in the class: Flux dev gets its shift for the job's resolution, e^mu, fixed.",
    ),
    SamplerSpec(
        "DPM++ 2M", ("k_dpmpp_2m",), "DPMSolverMultistepScheduler",
        {**_FLOW_SIGMAS, "algorithm_type": "dpmsolver++", "solver_order": 2},
    ),
    SamplerSpec(
        "DPM++ 2M SDE", ("k_dpmpp_2m_sde",), "DPMSolverMultistepScheduler",
        {**_FLOW_SIGMAS, "algorithm_type": "sde-dpmsolver++", "solver_order": 2},
        note="Gaussian step noise from the generator instead of A1111's Brownian tree.",
    ),
    SamplerSpec("UniPC", ("unipc",), "UniPCMultistepScheduler", dict(_FLOW_SIGMAS)),
    SamplerSpec("LCM", ("k_lcm",), "FlowMatchLCMScheduler"),
)

# Schedule-type label → the option that reshapes flow sigmas; Automatic and Simple need none.
_SHAPE_FLAGS = {"Karras": "use_karras_sigmas", "Exponential": "use_exponential_sigmas", "Beta": "use_beta_sigmas"}
FLOW_SCHEDULE_TYPES: tuple[str, ...] = ("Automatic", "Simple", *_SHAPE_FLAGS)
# Classes whose sigma-shaping options act on the shifted flow sigmas (see the module docstring).
_SHAPES_FLOW_SIGMAS = ("FlowMatchEulerDiscreteScheduler", "FlowMatchLCMScheduler")

_NOT_FLOW = "It is not available for flow-matching (Flux/SD3) models."


def flow_sampler_names() -> list[str]:
    return [s.name for s in FLOW_SAMPLERS]


@functools.lru_cache(maxsize=None)
def _by_name() -> dict[str, SamplerSpec]:
    return {s.name: s for s in FLOW_SAMPLERS}


def schedule_types_for(sampler: SamplerSpec | str) -> list[str]:
    """The schedule-type labels that work for ``sampler`` on a flow-matching model, Automatic first."""
    spec = sampler if isinstance(sampler, SamplerSpec) else resolve_flow(sampler, None)[0]
    labels = ["Automatic", "Simple"]
    if spec.scheduler_class in _SHAPES_FLOW_SIGMAS:
        params = samplers._init_params(spec.scheduler_class)
        labels += [label for label, flag in _SHAPE_FLAGS.items() if flag in params]
    return labels


def _unavailable(name: str) -> UnknownSamplerError:
    return UnknownSamplerError(name, flow_sampler_names(), extra=_NOT_FLOW)


def resolve_flow(sampler_name: str | None, schedule: str | None) -> tuple[SamplerSpec, ScheduleType]:
    """A request's ``sampler_name``/``scheduler`` → the flow sampler and its schedule type.

    Names, aliases and any letter case as ``samplers.resolve`` reads them; a legacy name's schedule suffix ("Euler
    Karras", "DPM++ 2M Simple") wins over ``schedule``. None/"" → Euler and Automatic. An SD-only or unknown sampler
    raises UnknownSamplerError; a schedule type this sampler cannot run on flow sigmas ("DPM++ 2M Karras") raises
    ValueError listing those it can.
    """
    name = DEFAULT_FLOW_SAMPLER if sampler_name is None or not str(sampler_name).strip() else str(sampler_name)
    suffix: ScheduleType | None = None
    try:
        sd_spec = samplers.get_sampler(name)
    except UnknownSamplerError:
        try:  # not a plain name: "DPM++ 2M Karras" and the like, split by the SD table
            sd_spec, suffix = samplers.resolve(name, None)
        except UnsupportedScheduleError as e:  # the SD class lacks the option; the flow class may have it
            sd_spec, suffix = e.sampler, e.schedule
        except UnknownSamplerError:
            raise _unavailable(name) from None
    spec = _by_name().get(sd_spec.name)
    if spec is None:
        raise _unavailable(name)

    if suffix is None:
        try:
            suffix = samplers.get_schedule_type(schedule)
        except UnknownSamplerError:  # refused below with this sampler's list rather than the SD one
            pass
    label = suffix.label if suffix is not None else str(schedule)
    allowed = schedule_types_for(spec)
    if label not in allowed:
        raise ValueError(
            f"Schedule type {label!r} is not available for {spec.name} on flow-matching (Flux/SD3) models. "
            f"Schedule types for {spec.name}: {', '.join(allowed)}."
        )
    return spec, suffix


def build_flow_scheduler(
    sampler_name: str | None, schedule: str | None, base_config: dict, *, shift: float | None = None
) -> SchedulerBundle:
    """A fresh scheduler for one job, from the model's FlowMatchEulerDiscreteScheduler config.

    The model's whole config ends up in ``scheduler.config`` (keys the class has no option for as plain entries), so
    ``set_flow_timesteps`` finds the dynamic-shift settings on any class. ``shift`` (the user's setting; None = the
    model's own) replaces the model's shift and turns dynamic shifting off. DPM/UniPC get the shift as ``flow_shift``
    and keep ``use_dynamic_shifting``: they take ``mu`` themselves.
    """
    spec, schedule_type = resolve_flow(sampler_name, schedule)
    cls = samplers._scheduler_class(spec.scheduler_class)
    params = samplers._init_params(spec.scheduler_class)
    unknown = [k for k in spec.kwargs if k not in params]
    if unknown:  # a table error or a diffusers API change; fail loudly rather than sample with the wrong maths
        raise ValueError(f"{spec.scheduler_class} has no option(s) {unknown} needed by flow sampler {spec.name!r}")

    config = {k: v for k, v in dict(base_config).items() if not k.startswith("_")}
    if shift is not None:
        config.update(shift=float(shift), use_dynamic_shifting=False)
    # The model's shift settings that this class has no option for (SD3's "shift" on DPM, Flux's "base_shift"...):
    # kept in its config for set_flow_timesteps, but not passed to from_config, which would log them as ignored.
    extra = {k: v for k, v in config.items() if k not in params}
    kwargs = dict(spec.kwargs)
    for label, flag in _SHAPE_FLAGS.items():  # reset the model's own flags unless this schedule type asks for them
        if flag in params:
            kwargs[flag] = label == schedule_type.label
    if "flow_shift" in params:
        kwargs["flow_shift"] = float(config.get("shift", 1.0))
    if "final_sigmas_type" in params:
        kwargs["final_sigmas_type"] = "zero"  # the last step lands on the clean image, as FlowMatchEuler's does

    scheduler = cls.from_config({k: v for k, v in config.items() if k in params}, **kwargs)
    scheduler.register_to_config(**extra)
    return SchedulerBundle.of(scheduler, spec, schedule_type)


def calculate_shift(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096,
                    base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """``mu``, the log of the dynamic shift: linear in the image's token count (diffusers' Flux/SD3 pipelines)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    b = base_shift - m * base_seq_len
    return image_seq_len * m + b


@functools.lru_cache(maxsize=None)
def _set_timesteps_params(cls) -> frozenset[str]:
    return frozenset(inspect.signature(cls.set_timesteps).parameters)


def _fix_shift(scheduler, shift: float) -> None:
    """Re-initialise a class without dynamic shifting (FlowMatchHeun) as if the model's config said ``shift``:
    its ``__init__`` derives more than the config value from it (``sigma_min``)."""
    params = inspect.signature(type(scheduler).__init__).parameters
    init = {k: v for k, v in scheduler.config.items() if k in params and k not in ("self", "kwargs")}
    init["shift"] = shift
    type(scheduler).__init__(scheduler, **init)


def set_flow_timesteps(scheduler, steps: int, image_seq_len: int, device, family: str | None = None) -> torch.Tensor:
    """Set the scheduler's timesteps as the family's diffusers pipeline does; returns ``scheduler.timesteps``.

    ``family`` "flux" takes ``FluxPipeline``'s path (sigmas ``linspace(1, 1/n, n)`` unless the class makes its own
    flow sigmas), anything else ``StableDiffusion3Pipeline``'s (the scheduler's own spacing). None decides by the
    scheduler's ``use_dynamic_shifting``, which Flux dev's config has; Flux schnell's has not, and neither has any
    Flux model's under a user shift, so callers that know the family pass it. ``mu`` (from ``image_seq_len``, the
    latent's token count) is passed where the config shifts dynamically and the class takes it.
    """
    config = scheduler.config
    dynamic = bool(config.get("use_dynamic_shifting"))
    flux = family == "flux" if family else dynamic
    takes = _set_timesteps_params(type(scheduler))
    kwargs: dict = {}
    if dynamic:
        mu = calculate_shift(
            image_seq_len,
            config.get("base_image_seq_len", 256),
            config.get("max_image_seq_len", 4096),
            config.get("base_shift", 0.5),
            config.get("max_shift", 1.15 if flux else 1.16),  # the pipelines' own fallbacks differ
        )
        if "mu" in takes:
            kwargs["mu"] = mu
        else:
            _fix_shift(scheduler, math.exp(mu))
    if flux and "sigmas" in takes and not config.get("use_flow_sigmas"):
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), device=device, **kwargs)
    else:
        scheduler.set_timesteps(steps, device=device, **kwargs)
    return scheduler.timesteps


def add_flow_noise(scheduler, latents: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """The img2img start (and inpainting's re-noised known region): (1 − σ)·x0 + σ·noise at ``timestep``.

    FlowMatch classes call it ``scale_noise``; DPM/UniPC on flow sigmas compute the same in ``add_noise``."""
    if hasattr(scheduler, "scale_noise"):
        return scheduler.scale_noise(latents, timestep, noise)
    return scheduler.add_noise(latents, noise, timestep)

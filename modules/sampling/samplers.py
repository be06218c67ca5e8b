"""A1111 sampler and schedule-type names mapped onto diffusers schedulers.

A1111 (1.10) runs k-diffusion samplers; this web UI runs diffusers' scheduler classes inside its own loop. This
module is the translation table:

* ``SAMPLERS``: A1111's sampler names (UI order, A1111 aliases and options), each bound to a diffusers scheduler class
  and the ``from_config`` keyword arguments that make it behave like the A1111 sampler.
* ``SCHEDULE_TYPES``: A1111's "Schedule type" choices that diffusers can express through ``from_config`` arguments.
* ``resolve()`` turns a request's ``sampler_name`` / ``scheduler`` (A1111 API field names) into a pair of specs,
  accepting aliases, any letter case and legacy names with a schedule suffix ("DPM++ 2M Karras").
* ``build_scheduler()`` makes a fresh scheduler instance for one job from the model's scheduler config.

Fidelity notes (what differs from A1111):

* A1111's k-diffusion samplers take their sigmas from the whole training range (``t`` = linspace(999, 0, n)).
  diffusers' default for SD1.5/SDXL configs is ``timestep_spacing="leading"`` (t = 901 ... 1 for 10 steps), which
  also shrinks the Karras/Exponential range for Euler/Heun/LMS/DPM2. The k-diffusion samplers below therefore set
  ``timestep_spacing="linspace"`` (where the class has the parameter), which reproduces A1111's range. The
  timestep samplers (DDIM, PLMS, UniPC) keep the model config's spacing, which is what A1111's DDIM
  discretisation ("uniform" = leading, offset 1) does.
* A1111 draws the DPM++ 2M SDE / 3M SDE noise from a Brownian tree; diffusers' ``DPMSolverMultistepScheduler``
  draws plain Gaussian noise from ``generator`` each step. Same sampler family, different noise.
* A1111's "discard_next_to_last_sigma" option (DPM2, DPM2 a, DPM++ 3M SDE) has no ``from_config`` counterpart; it is
  kept in ``SamplerSpec.options`` (as in A1111's API) for a loop that wants to honour it.
* A1111 samplers without a diffusers counterpart are not offered: DPM fast, DPM adaptive, Restart, DDIM CFG++
  (see ``A1111_ONLY_SAMPLERS``). Schedule types without one: Polyexponential, KL Optimal, Align Your Steps
  (see ``A1111_ONLY_SCHEDULE_TYPES``).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, Sequence

__all__ = [
    "SamplerSpec",
    "ScheduleType",
    "SchedulerBundle",
    "UnknownSamplerError",
    "UnsupportedScheduleError",
    "SAMPLERS",
    "SCHEDULE_TYPES",
    "A1111_ONLY_SAMPLERS",
    "A1111_ONLY_SCHEDULE_TYPES",
    "DEFAULT_SAMPLER",
    "UI_DEFAULT_SAMPLER",
    "resolve",
    "get_sampler",
    "get_schedule_type",
    "schedule_supported",
    "supported_schedule_types",
    "build_scheduler",
    "step_kwargs",
    "list_samplers_api",
    "list_schedulers_api",
    "sampler_names",
    "schedule_type_labels",
]

DEFAULT_SAMPLER = "Euler"  # A1111 API default (StableDiffusionProcessing.sampler_name)
UI_DEFAULT_SAMPLER = "DPM++ 2M"  # A1111 UI default


# --------------------------------------------------------------------------------------------------------------------
# Data types


@dataclass(frozen=True)
class SamplerSpec:
    """One A1111 sampler and its diffusers counterpart."""

    name: str  # A1111 label, e.g. "DPM++ 2M"
    aliases: tuple[str, ...]  # A1111 aliases, e.g. ("k_dpmpp_2m",)
    scheduler_class: str  # diffusers class name
    kwargs: dict = field(default_factory=dict)  # extra ``from_config`` kwargs
    default_schedule: str = "Automatic"  # label of the ScheduleType "Automatic" resolves to
    options: dict = field(default_factory=dict)  # A1111's options dict, as GET /sdapi/v1/samplers shows it
    note: str = ""  # how faithful the diffusers counterpart is, when it is not exact

    def __hash__(self) -> int:  # dict fields make the generated hash fail; the name is unique
        return hash(self.name)


@dataclass(frozen=True)
class ScheduleType:
    """One A1111 "Schedule type" and the ``from_config`` kwargs that give it in diffusers."""

    name: str  # A1111 internal name, e.g. "karras"
    label: str  # A1111 label, e.g. "Karras"
    aliases: tuple[str, ...] = ()
    kwargs: dict = field(default_factory=dict)
    default_rho: float = -1  # A1111 API field
    need_inner_model: bool = False  # A1111 API field
    note: str = ""

    def __hash__(self) -> int:
        return hash(self.name)


class UnknownSamplerError(ValueError):
    """An unknown sampler or schedule-type name. The message names the value and lists the valid ones."""

    def __init__(self, value: Any, valid: Sequence[str], what: str = "sampler", extra: str = ""):
        self.value = value
        self.valid = list(valid)
        self.what = what
        msg = f"Unknown {what} {value!r}."
        if extra:
            msg += f" {extra}"
        msg += f" Valid {what}s: {', '.join(self.valid)}."
        super().__init__(msg)


class UnsupportedScheduleError(ValueError):
    """A known schedule type that the chosen sampler's diffusers class cannot produce (e.g. Euler a + Karras)."""

    def __init__(self, sampler: SamplerSpec, schedule: ScheduleType):
        self.sampler = sampler
        self.schedule = schedule
        valid = [s.label for s in supported_schedule_types(sampler)]
        super().__init__(
            f"Schedule type {schedule.label!r} is not available for sampler {sampler.name!r} "
            f"(diffusers' {sampler.scheduler_class} has no {', '.join(sorted(schedule.kwargs))} option). "
            f"Schedule types for {sampler.name}: {', '.join(valid)}."
        )


# --------------------------------------------------------------------------------------------------------------------
# Tables

_LINSPACE = {"timestep_spacing": "linspace"}  # A1111's k-diffusion sigma range, see the module docstring

SAMPLERS: tuple[SamplerSpec, ...] = (
    SamplerSpec(
        "DPM++ 2M", ("k_dpmpp_2m",), "DPMSolverMultistepScheduler",
        {**_LINSPACE, "algorithm_type": "dpmsolver++", "solver_order": 2, "solver_type": "midpoint"},
        "Karras", {"scheduler": "karras"},
    ),
    SamplerSpec(
        "DPM++ SDE", ("k_dpmpp_sde",), "DPMSolverSDEScheduler", dict(_LINSPACE),
        "Karras", {"scheduler": "karras", "second_order": True, "brownian_noise": True},
        note="Port of k-diffusion's sample_dpmpp_sde; its Brownian tree is seeded per image by build_scheduler(seed=).",
    ),
    SamplerSpec(
        "DPM++ 2M SDE", ("k_dpmpp_2m_sde",), "DPMSolverMultistepScheduler",
        {**_LINSPACE, "algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "midpoint"},
        "Exponential", {"scheduler": "exponential", "brownian_noise": True},
        note="Gaussian step noise from the generator instead of A1111's Brownian tree.",
    ),
    SamplerSpec(
        "DPM++ 2M SDE Heun", ("k_dpmpp_2m_sde_heun",), "DPMSolverMultistepScheduler",
        {**_LINSPACE, "algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "heun"},
        "Exponential", {"scheduler": "exponential", "brownian_noise": True, "solver_type": "heun"},
        note="Same update formula as k-diffusion's solver_type='heun'; Gaussian step noise instead of a Brownian tree.",
    ),
    # k-diffusion's DPM++ 2S a is an ancestral step (DPM-Solver++(2S) to sigma_down, then sigma_up noise). diffusers
    # has no ancestral single-step solver; the closest is the stochastic single-step DPM-Solver++ of order 2
    # (diffusers' docs list "DPM++ 2S a" as N/A). It also counts steps differently: A1111 makes 2 model calls per
    # step, diffusers' single-step solver 1 call per step (alternating 1st/2nd order).
    SamplerSpec(
        "DPM++ 2S a", ("k_dpmpp_2s_a",), "DPMSolverSinglestepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "midpoint", "lower_order_final": True},
        "Karras", {"scheduler": "karras", "uses_ensd": True, "second_order": True},
        note="Approximation: stochastic single-step DPM-Solver++(2) (no ancestral single-step solver in diffusers).",
    ),
    SamplerSpec(
        "DPM++ 3M SDE", ("k_dpmpp_3m_sde",), "DPMSolverMultistepScheduler",
        {**_LINSPACE, "algorithm_type": "sde-dpmsolver++", "solver_order": 3, "solver_type": "midpoint"},
        "Exponential", {"scheduler": "exponential", "discard_next_to_last_sigma": True, "brownian_noise": True},
        note="Third-order SDE-DPM-Solver++; Gaussian step noise instead of a Brownian tree.",
    ),
    SamplerSpec(
        "Euler a", ("k_euler_a", "k_euler_ancestral"), "EulerAncestralDiscreteScheduler", dict(_LINSPACE),
        "Automatic", {"uses_ensd": True},
    ),
    SamplerSpec("Euler", ("k_euler",), "EulerDiscreteScheduler", dict(_LINSPACE), "Automatic", {}),
    SamplerSpec("LMS", ("k_lms",), "LMSDiscreteScheduler", dict(_LINSPACE), "Automatic", {}),
    SamplerSpec("Heun", ("k_heun",), "HeunDiscreteScheduler", dict(_LINSPACE), "Automatic", {"second_order": True}),
    SamplerSpec(
        "DPM2", ("k_dpm_2",), "KDPM2DiscreteScheduler", dict(_LINSPACE),
        "Karras", {"scheduler": "karras", "discard_next_to_last_sigma": True, "second_order": True},
    ),
    SamplerSpec(
        "DPM2 a", ("k_dpm_2_a",), "KDPM2AncestralDiscreteScheduler", dict(_LINSPACE),
        "Karras", {"scheduler": "karras", "discard_next_to_last_sigma": True, "uses_ensd": True, "second_order": True},
    ),
    # A1111's timestep samplers: keep the model config's spacing (A1111's "uniform" DDIM discretisation = leading).
    SamplerSpec("DDIM", ("ddim",), "DDIMScheduler", {}, "Automatic", {}),
    SamplerSpec("PLMS", ("plms",), "PNDMScheduler", {"skip_prk_steps": True}, "Automatic", {}),
    SamplerSpec("UniPC", ("unipc",), "UniPCMultistepScheduler", {}, "Automatic", {}),
    SamplerSpec(
        "LCM", ("k_lcm",), "LCMScheduler", {}, "Automatic", {},
        note="diffusers' LCM timesteps (skipping over original_inference_steps), not A1111's sigma schedule.",
    ),
    # diffusers schedulers A1111 does not ship (names as in other diffusers-based A1111 forks).
    SamplerSpec("DDPM", ("ddpm",), "DDPMScheduler", {}, "Automatic", {}),
    SamplerSpec("DEIS", ("deis",), "DEISMultistepScheduler", {}, "Automatic", {}),
    SamplerSpec("TCD", ("tcd",), "TCDScheduler", {}, "Automatic", {}),
    SamplerSpec("SA-Solver", ("sa_solver", "sasolver"), "SASolverScheduler", {}, "Automatic", {}),
)

# A1111 1.10 samplers with no diffusers scheduler (not offered; named in error messages).
A1111_ONLY_SAMPLERS: dict[str, str] = {
    "DPM fast": "k-diffusion's sample_dpm_fast (adaptive-order DPM-Solver) has no diffusers scheduler",
    "DPM adaptive": "k-diffusion's sample_dpm_adaptive (error-controlled steps) has no diffusers scheduler",
    "Restart": "A1111's restart sampler has no diffusers scheduler",
    "DDIM CFG++": "CFG++ changes the guidance combination, not the scheduler; no diffusers scheduler",
}

SCHEDULE_TYPES: tuple[ScheduleType, ...] = (
    ScheduleType("automatic", "Automatic", (), {}, note="the sampler's default schedule type"),
    # k-diffusion get_sigmas: t = linspace(999, 0, n)
    ScheduleType("uniform", "Uniform", (), {"timestep_spacing": "linspace"}, need_inner_model=True),
    ScheduleType("karras", "Karras", (), {"use_karras_sigmas": True}, default_rho=7.0),
    ScheduleType("exponential", "Exponential", (), {"use_exponential_sigmas": True}),
    # A1111: t = linspace(999, 0, n + 1)[:-1]; diffusers' "trailing" gives the same timesteps up to rounding.
    ScheduleType(
        "sgm_uniform", "SGM Uniform", ("SGMUniform",), {"timestep_spacing": "trailing"}, need_inner_model=True,
        note="diffusers' trailing spacing (A1111's timesteps up to rounding)",
    ),
    # A1111: t = 999 - int(i * 1000 / n); identical to trailing when steps divides 1000, else within 1 timestep.
    ScheduleType(
        "simple", "Simple", (), {"timestep_spacing": "trailing"}, need_inner_model=True,
        note="diffusers' trailing spacing (identical when steps divides 1000)",
    ),
    # A1111: t = linspace(999, 0, n), the same timesteps as Uniform.
    ScheduleType("normal", "Normal", (), {"timestep_spacing": "linspace"}, need_inner_model=True),
    # A1111: t = 1, 1 + 1000 // n, ...; diffusers' leading spacing with steps_offset 1.
    ScheduleType(
        "ddim", "DDIM", (), {"timestep_spacing": "leading", "steps_offset": 1}, need_inner_model=True,
        note="diffusers' leading spacing, offset 1",
    ),
    # Beta(0.6, 0.6) as A1111's defaults (beta_dist_alpha/beta = 0.6) and diffusers' _convert_to_beta defaults.
    ScheduleType("beta", "Beta", (), {"use_beta_sigmas": True}, need_inner_model=True),
)

A1111_ONLY_SCHEDULE_TYPES: dict[str, str] = {
    "Polyexponential": "no diffusers counterpart",
    "KL Optimal": "no diffusers counterpart",
    "Align Your Steps": "needs custom sigmas, not a diffusers scheduler option",
}

# Flags in a model's scheduler config that would silently change the schedule type; reset unless requested.
_SIGMA_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")


# --------------------------------------------------------------------------------------------------------------------
# Look-ups


def _key(s: str) -> str:
    return " ".join(str(s).split()).lower()


@functools.lru_cache(maxsize=None)
def _sampler_index() -> dict[str, SamplerSpec]:
    index: dict[str, SamplerSpec] = {}
    for spec in SAMPLERS:
        index[_key(spec.name)] = spec
    for spec in SAMPLERS:
        for alias in spec.aliases:
            index.setdefault(_key(alias), spec)
    return index


@functools.lru_cache(maxsize=None)
def _schedule_index() -> dict[str, ScheduleType]:
    index: dict[str, ScheduleType] = {}
    for st in SCHEDULE_TYPES:
        for n in (st.label, st.name, *st.aliases):
            index.setdefault(_key(n), st)
    return index


def sampler_names() -> list[str]:
    return [s.name for s in SAMPLERS]


def schedule_type_labels() -> list[str]:
    return [s.label for s in SCHEDULE_TYPES]


def get_sampler(name: str) -> SamplerSpec:
    """The sampler called ``name`` (label or alias, any case); UnknownSamplerError otherwise."""
    spec = _sampler_index().get(_key(name)) if name is not None else None
    if spec is None:
        raise _unknown_sampler(name)
    return spec


def get_schedule_type(name: str | None) -> ScheduleType:
    """The schedule type called ``name`` (label, A1111 name or alias, any case); None/"" → Automatic."""
    if name is None or str(name).strip() == "":
        return SCHEDULE_TYPES[0]
    st = _schedule_index().get(_key(name))
    if st is None:
        extra = ""
        for label, why in A1111_ONLY_SCHEDULE_TYPES.items():
            if _key(label) in (_key(name), _key(name).replace("_", " ")):
                extra = f"{label!r} is an A1111 schedule type this web UI does not offer ({why})."
        raise UnknownSamplerError(name, schedule_type_labels(), what="schedule type", extra=extra)
    return st


def _unknown_sampler(name: Any) -> UnknownSamplerError:
    extra = ""
    for label, why in A1111_ONLY_SAMPLERS.items():
        if name is not None and _key(label) == _key(name):
            extra = f"{label!r} is an A1111 sampler this web UI does not offer ({why})."
    return UnknownSamplerError(name, sampler_names(), what="sampler", extra=extra)


@functools.lru_cache(maxsize=None)
def _init_params(class_name: str) -> frozenset[str]:
    return frozenset(inspect.signature(_scheduler_class(class_name).__init__).parameters)


def _scheduler_class(class_name: str):
    import diffusers

    cls = getattr(diffusers, class_name, None)
    if cls is None:
        raise ValueError(f"diffusers has no scheduler class {class_name!r} (diffusers {diffusers.__version__})")
    return cls


def schedule_supported(spec: SamplerSpec, schedule: ScheduleType) -> bool:
    """Whether ``spec``'s diffusers class has every ``from_config`` option ``schedule`` needs."""
    schedule = _effective_schedule(spec, schedule)
    params = _init_params(spec.scheduler_class)
    return all(k in params for k in schedule.kwargs)


def supported_schedule_types(spec: SamplerSpec) -> list[ScheduleType]:
    """The schedule types a UI should offer for ``spec``, Automatic first."""
    return [st for st in SCHEDULE_TYPES if schedule_supported(spec, st)]


def _effective_schedule(spec: SamplerSpec, schedule: ScheduleType) -> ScheduleType:
    if schedule.name == "automatic":
        return get_schedule_type(spec.default_schedule)
    return schedule


# A1111's legacy alias suffixes: "k_dpmpp_2m_ka" = DPM++ 2M Karras, "k_dpmpp_3m_sde_exp" = DPM++ 3M SDE Exponential.
_ALIAS_SUFFIXES = (("_ka", "Karras"), ("_exp", "Exponential"))


def resolve(
    sampler_name: str | None, scheduler: str | None = None, *, strict: bool = True
) -> tuple[SamplerSpec, ScheduleType]:
    """Resolve A1111's ``sampler_name`` and ``scheduler`` request fields.

    - ``sampler_name`` None or "" → "Euler" (the A1111 API default; the UI passes its own default).
    - Names and aliases match in any letter case.
    - A name that is not a sampler but ends in a schedule type ("DPM++ 2M Karras", "Euler a sgm_uniform") is split
      into sampler and schedule type, and, as in A1111's ``get_sampler_and_scheduler``, the suffix wins over
      ``scheduler``. Legacy aliases such as "k_dpmpp_2m_ka" work too.
    - ``scheduler`` None / "" / "Automatic" → the sampler's default schedule type (A1111's "Automatic").

    Returns the sampler and its schedule type, "Automatic" already replaced by the sampler's default (which is
    itself "Automatic" for samplers such as Euler, meaning the sampler's own spacing).
    Raises UnknownSamplerError for an unknown sampler or schedule type, and UnsupportedScheduleError when the
    sampler's diffusers class cannot produce the schedule type; with ``strict=False`` that case falls back to the
    sampler's default schedule type instead (useful for pasted infotexts such as "Euler a" + "Karras").
    """
    if sampler_name is None or str(sampler_name).strip() == "":
        sampler_name = DEFAULT_SAMPLER
    name = str(sampler_name)
    schedule = get_schedule_type(scheduler)

    spec = _sampler_index().get(_key(name))
    if spec is None:
        spec, suffix_schedule = _split_legacy_name(name)
        if spec is None:
            raise _unknown_sampler(sampler_name)
        if suffix_schedule is not None:
            schedule = suffix_schedule

    schedule = _effective_schedule(spec, schedule)
    if not schedule_supported(spec, schedule):
        if strict:
            raise UnsupportedScheduleError(spec, schedule)
        schedule = get_schedule_type(spec.default_schedule)
    return spec, schedule


def _split_legacy_name(name: str) -> tuple[SamplerSpec | None, ScheduleType | None]:
    key = _key(name)
    index = _sampler_index()
    for suffix, label in _ALIAS_SUFFIXES:
        if key.endswith(suffix) and key[: -len(suffix)] in index:
            return index[key[: -len(suffix)]], get_schedule_type(label)
    # "<sampler> <schedule>": try the longest schedule names first ("SGM Uniform" before "Uniform").
    options = sorted(
        ((_key(n), st) for st in SCHEDULE_TYPES for n in (st.label, st.name, *st.aliases)),
        key=lambda t: -len(t[0]),
    )
    for opt, st in options:
        if key.endswith(" " + opt):
            base = key[: -(len(opt) + 1)]
            if base in index:
                return index[base], st
    return None, None


# --------------------------------------------------------------------------------------------------------------------
# Building


@dataclass
class SchedulerBundle:
    """A scheduler instance plus what its ``step()`` accepts (mirrors diffusers' ``prepare_extra_step_kwargs``)."""

    scheduler: Any
    accepts_generator: bool
    accepts_eta: bool
    accepts_variance_noise: bool = False
    sampler: SamplerSpec | None = None
    schedule: ScheduleType | None = None
    eta: float | None = None  # from build_scheduler(eta=); used when step_kwargs gets none

    def step_kwargs(self, generator=None, eta: float | None = None, **extra) -> dict:
        return step_kwargs(self.scheduler, generator, self.eta if eta is None else eta, **extra)

    @classmethod
    def of(cls, scheduler, sampler=None, schedule=None, eta: float | None = None) -> "SchedulerBundle":
        """A bundle whose ``accepts_*`` flags are read off the scheduler class's ``step()``."""
        sp = _step_params_of(type(scheduler))
        return cls(scheduler=scheduler, accepts_generator="generator" in sp, accepts_eta="eta" in sp,
                   accepts_variance_noise="variance_noise" in sp, sampler=sampler, schedule=schedule, eta=eta)


def step_kwargs(scheduler, generator=None, eta: float | None = None, **extra) -> dict:
    """Extra keyword arguments for ``scheduler.step()``: ``generator`` (a torch.Generator or a per-image list) and
    ``eta`` where the step accepts them and they are not None; any ``extra`` (``s_churn``, ``s_noise``,
    ``variance_noise``...) likewise only where accepted."""
    params = _step_params_of(type(scheduler))
    out: dict = {}
    if generator is not None and "generator" in params:
        out["generator"] = generator
    if eta is not None and "eta" in params:
        out["eta"] = eta
    for k, v in extra.items():
        if v is not None and k in params:
            out[k] = v
    return out


@functools.lru_cache(maxsize=None)
def _step_params_of(cls) -> frozenset[str]:
    return frozenset(inspect.signature(cls.step).parameters)


def build_scheduler(
    spec: SamplerSpec | str,
    schedule: ScheduleType | str | None,
    base_config: dict,
    *,
    seed: int | Sequence[int] | None = None,
    eta: float | None = None,
    zero_terminal_snr: bool = False,
) -> SchedulerBundle:
    """A fresh diffusers scheduler for one job: ``cls.from_config(base_config, **kwargs)``.

    ``base_config`` is the model's scheduler config (``pipe.scheduler.config`` or the model folder's
    scheduler_config.json); only its noise-schedule fields matter, its class does not. ``kwargs`` are the sampler's
    and the schedule type's options, plus ``final_sigmas_type="zero"`` where the class has that option (k-diffusion
    ends at sigma 0). Schedule-shaping flags from the model config (``use_karras_sigmas``...) are reset unless the
    schedule type asks for them, so "Automatic" means the sampler's A1111 default and nothing else.

    ``seed``: DPM++ SDE's Brownian tree is seeded from it (an int, or one seed per image: a list whose length is the
    latent batch size), else it would use the global RNG. Other schedulers take noise from the ``generator``
    passed to ``step()``. ``eta`` (negative → ValueError) is kept in the bundle and passed by
    ``bundle.step_kwargs()`` to schedulers whose ``step()`` takes it (DDIM, TCD); None keeps diffusers' default.
    ``zero_terminal_snr``: A1111's "Noise schedule for sampling: Zero Terminal SNR" (the betas rescaled so the last
    step is pure noise; diffusers' ``rescale_betas_zero_snr``, where the class has it).
    """
    if isinstance(spec, str):
        spec, schedule = resolve(spec, schedule if isinstance(schedule, str) or schedule is None else schedule.label)
    if schedule is None or isinstance(schedule, str):
        schedule = get_schedule_type(schedule)
    schedule = _effective_schedule(spec, schedule)
    if not schedule_supported(spec, schedule):
        raise UnsupportedScheduleError(spec, schedule)
    if eta is not None and eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")

    cls = _scheduler_class(spec.scheduler_class)
    params = _init_params(spec.scheduler_class)
    unknown = [k for k in spec.kwargs if k not in params]
    if unknown:  # a table error or a diffusers API change; fail loudly rather than silently ignore
        raise ValueError(f"{spec.scheduler_class} has no option(s) {unknown} needed by sampler {spec.name!r}")

    kwargs: dict = {}
    for flag in _SIGMA_FLAGS:
        if flag in params:
            kwargs[flag] = False
    if "final_sigmas_type" in params:
        kwargs["final_sigmas_type"] = "zero"
    kwargs.update(spec.kwargs)
    kwargs.update(schedule.kwargs)
    if zero_terminal_snr and "rescale_betas_zero_snr" in params:
        kwargs["rescale_betas_zero_snr"] = True
    if spec.scheduler_class == "DPMSolverSDEScheduler" and seed is not None:
        kwargs["noise_sampler_seed"] = [int(s) for s in seed] if isinstance(seed, (list, tuple)) else int(seed)

    # Only the class's own options: the model config's other keys (skip_prk_steps, set_alpha_to_one...) would
    # only make diffusers log "config attributes ... are not expected".
    config = {k: v for k, v in dict(base_config).items() if k in params and k not in ("self", "kwargs")}
    scheduler = cls.from_config(config, **kwargs)
    return SchedulerBundle.of(scheduler, spec, schedule, eta)


# --------------------------------------------------------------------------------------------------------------------
# API shapes


def list_samplers_api() -> list[dict]:
    """GET /sdapi/v1/samplers: ``[{name, aliases, options}]``; option values are strings as in A1111's model."""
    return [
        {"name": s.name, "aliases": list(s.aliases), "options": {k: str(v) for k, v in s.options.items()}}
        for s in SAMPLERS
    ]


def list_schedulers_api() -> list[dict]:
    """GET /sdapi/v1/schedulers: ``[{name, label, aliases, default_rho, need_inner_model}]``."""
    return [
        {
            "name": s.name,
            "label": s.label,
            "aliases": list(s.aliases) if s.aliases else None,
            "default_rho": s.default_rho,
            "need_inner_model": s.need_inner_model,
        }
        for s in SCHEDULE_TYPES
    ]

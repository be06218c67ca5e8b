"""A1111's `modules.sd_samplers`: the sampler list as `SamplerData` records built from our sampler table
(modules/sampling/samplers.py). Creating A1111 sampler objects is k-diffusion internals and unsupported."""
from __future__ import annotations

from modules.a1111.sd_samplers_common import SamplerData
from modules.a1111.unsupported import Unsupported, unsupported
from modules.sampling import samplers as _ours


def _data(spec) -> SamplerData:
    return SamplerData(spec.name, Unsupported(f"sampler constructor for {spec.name!r}",
                                              "samplers run in the engine's own loop"), list(spec.aliases),
                       dict(spec.options))


all_samplers: list[SamplerData] = [_data(s) for s in _ours.SAMPLERS]
all_samplers_map: dict[str, SamplerData] = {s.name: s for s in all_samplers}
samplers = all_samplers
samplers_for_img2img = all_samplers
samplers_map: dict[str, str] = {}
for _s in all_samplers:
    samplers_map[_s.name.lower()] = _s.name
    for _alias in _s.aliases:
        samplers_map[_alias.lower()] = _s.name


def find_sampler_config(name):
    """The record for a sampler name or alias (any case), or None."""
    if name is None:
        return None
    canonical = samplers_map.get(str(name).lower())
    return all_samplers_map.get(canonical) if canonical else None


def get_sampler_from_infotext(d: dict):
    return (find_sampler_config(d.get("Sampler")) or all_samplers[0]).name


def get_sampler_and_scheduler(sampler_name, scheduler_name, *, convert_automatic=True):
    config = find_sampler_config(sampler_name)
    name = config.name if config else "Euler"
    try:
        schedule = _ours.get_schedule_type(scheduler_name).label
    except ValueError:
        schedule = "Automatic"
    return name, schedule


def visible_sampler_names() -> list[str]:
    return [s.name for s in all_samplers]


def set_samplers() -> None:
    """A1111 rebuilds its lists after options change; ours are fixed."""


create_sampler = unsupported("sd_samplers.create_sampler", "samplers run in the engine's own loop")

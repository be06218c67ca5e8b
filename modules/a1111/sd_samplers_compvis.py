"""A1111's CompVis/timestep sampler modules (DDIM, PLMS, UniPC wrappers): internals we do not have."""
from __future__ import annotations

from modules.a1111.sd_samplers import all_samplers
from modules.a1111.unsupported import unsupported

samplers_data_compvis = [s for s in all_samplers if s.name in ("DDIM", "PLMS", "UniPC")]
samplers_timesteps = [(s.name, None, s.aliases, s.options) for s in samplers_data_compvis]
samplers_data_timesteps = samplers_data_compvis


class VanillaStableDiffusionSampler:
    def __init__(self, *args, **kwargs):
        unsupported("sd_samplers_compvis.VanillaStableDiffusionSampler", "samplers run in the engine's own loop")()


CompVisSampler = VanillaStableDiffusionSampler

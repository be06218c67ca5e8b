"""A1111's `modules.sd_samplers_kdiffusion`: k-diffusion internals. The lists exist (from our sampler table); the
classes stand for code we do not have and fail when instantiated."""
from __future__ import annotations

from modules.a1111.sd_samplers import all_samplers
from modules.a1111.unsupported import unsupported

samplers_k_diffusion = [(s.name, None, s.aliases, s.options) for s in all_samplers]
samplers_data_k_diffusion = list(all_samplers)
k_diffusion_scheduler = {"Automatic": None, "karras": None, "exponential": None, "polyexponential": None}


class KDiffusionSampler:
    def __init__(self, *args, **kwargs):
        unsupported("sd_samplers_kdiffusion.KDiffusionSampler", "samplers run in the engine's own loop")()


class CFGDenoiserKDiffusion(KDiffusionSampler):
    pass

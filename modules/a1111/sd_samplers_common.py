"""A1111's `modules.sd_samplers_common`: the sampler record and the interrupt exception extensions catch."""
from __future__ import annotations

from collections import namedtuple

from modules.a1111.unsupported import unsupported

SamplerData = namedtuple("SamplerData", ["name", "constructor", "aliases", "options"])


class InterruptedException(BaseException):
    """A1111 raises this to stop sampling; our loop uses its own exceptions and honours `state.interrupted`."""


approximation_indexes = {"Full": 0, "Approx NN": 1, "Approx cheap": 2, "TAESD": 3}

samples_to_image_grid = unsupported("sd_samplers_common.samples_to_image_grid", "live previews are built in")
sample_to_image = unsupported("sd_samplers_common.sample_to_image", "decode latents through the engine instead")
images_tensor_to_samples = unsupported("sd_samplers_common.images_tensor_to_samples", "LDM VAE internals")
store_latent = unsupported("sd_samplers_common.store_latent", "live previews are built in")

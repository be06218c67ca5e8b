"""--upcast-sampling (A1111's Mac default): with a 16-bit model the sampler's latents, CFG and scheduler run in
fp32 while the UNet computes in 16 bits; the picture is the same one, without 16-bit rounding between steps."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from modules import cmd_args, devices
from modules.sampling import loop

REQUEST = {"prompt": "a cat", "negative_prompt": "ugly", "steps": 4, "width": 64, "height": 64, "cfg_scale": 7,
           "sampler_name": "Euler a", "seed": 3, "do_not_save_samples": True, "do_not_save_grid": True}


def _half_engine(data_dir, upcast: bool):
    from modules.engine import Engine
    from modules.paths import Paths

    ns = cmd_args.parse_args(["--data-dir", str(data_dir), "--skip-install"], env={})
    config = devices.DeviceConfig(device=torch.device("cpu"), dtype=torch.float16, vae_dtype=torch.float32,
                                  upcast_sampling=upcast)
    return Engine.create(Paths.from_args(ns), device_config=config)


@pytest.fixture
def sampled(monkeypatch):
    """What each sampling run kept its latents in and gave the UNet."""
    seen = []
    original = loop.sample

    def recording(job):
        unet_inputs = []
        hook = job.unet.register_forward_pre_hook(lambda m, args: unet_inputs.append(args[0].dtype))
        try:
            out = original(job)
        finally:
            hook.remove()
        seen.append({"latents": out.dtype, "unet_input": set(unet_inputs)})
        return out

    monkeypatch.setattr(loop, "sample", recording)
    monkeypatch.setattr("modules.processing.sample", recording)
    return seen


@pytest.mark.slow  # a second or more of parity/size checks: out of the -m "not slow" loop
def test_upcast_sampling_keeps_latents_in_fp32_and_feeds_the_unet_16_bits(data_dir, sampled):
    plain = _half_engine(data_dir, upcast=False).txt2img(dict(REQUEST)).images[0]
    upcast = _half_engine(data_dir, upcast=True).txt2img(dict(REQUEST)).images[0]
    assert sampled[0] == {"latents": torch.float16, "unet_input": {torch.float16}}
    assert sampled[1] == {"latents": torch.float32, "unet_input": {torch.float16}}
    a = np.asarray(plain.convert("RGB"), dtype=np.int16)
    b = np.asarray(upcast.convert("RGB"), dtype=np.int16)
    assert a.std() > 5 and float(np.abs(a - b).mean()) < 4, "the same picture, up to 16-bit rounding"


def test_the_flag_reaches_the_engine_and_means_nothing_for_a_32_bit_model():
    ns = cmd_args.parse_args(["--upcast-sampling", "--skip-install"], env={})
    assert ns.upcast_sampling
    assert devices.from_flags(no_half=True, upcast_sampling=True).upcast_sampling is False

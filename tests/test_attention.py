"""A1111's setting "Cross attention optimization": the denoiser's attention as the user picks it, at the next
generation, with the same picture (up to float rounding) whichever way attention is computed."""
from __future__ import annotations

import numpy as np

REQ = {"prompt": "a cat", "steps": 3, "width": 64, "height": 64, "seed": 5, "sampler_name": "Euler",
       "do_not_save_samples": True, "do_not_save_grid": True}


def _kinds(engine) -> set[str]:
    return {type(p).__name__ for p in engine.models.current.unet.attn_processors.values()}


def test_the_setting_picks_the_attention_and_the_picture_stays(engine):
    from modules.models import attention

    pictures = {}
    for setting, processor in (("Automatic", "AttnProcessor2_0"), ("None", "AttnProcessor"),
                               ("V1", "SlicedAttnProcessor"), ("sdp", "AttnProcessor2_0")):
        engine.settings.set("cross_attention_optimization", setting)
        pictures[setting] = np.asarray(engine.txt2img(dict(REQ)).images[0], dtype=np.int16)
        assert _kinds(engine) == {processor}, setting
    for setting in ("None", "V1", "sdp"):
        assert np.abs(pictures[setting] - pictures["Automatic"]).max() <= 2
    assert attention.mode_for("Automatic", "xformers") == "xformers"  # what the flags chose
    assert attention.mode_for("sdp-no-mem", "sdpa") == "sdpa-no-mem" and attention.mode_for("Doggettx", "sdpa") == "sliced"

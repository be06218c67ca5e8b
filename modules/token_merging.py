"""Token merging (ToMe for SD, the `tomesd` package A1111 uses): the UNet's self-attention works on fewer tokens
where neighbouring ones are alike — faster at high resolutions, the picture changes a little.

The ratios are A1111's: "Token merging ratio" (`token_merging_ratio`), for img2img "…ratio for img2img" unless
the job overrides the plain one, for the hires pass "…ratio for high-res pass" (else the plain one); a pasted
infotext's ratios come back as the job's override_settings. tomesd patches UNets (SD 1.x/2.x/SDXL); Flux/SD3
transformers are left as they are."""
from __future__ import annotations

import contextlib


def ratio_for(req, opt, hires: bool = False) -> float:
    """The ratio this pass runs with (A1111's get_token_merging_ratio; `opt` reads the job's options)."""
    base = float(opt("token_merging_ratio", 0.0) or 0)
    if hires:
        return float(opt("token_merging_ratio_hr", 0.0) or 0) or base
    if getattr(req, "mode", "txt2img") == "img2img":
        overridden = "token_merging_ratio" in (getattr(req, "override_settings", None) or {})
        return (overridden and base) or float(opt("token_merging_ratio_img2img", 0.0) or 0) or base
    return base


def apply(unet, ratio: float) -> float:
    """Merge tokens in `unet` at `ratio` (0: as it was); returns the ratio in effect."""
    current = getattr(unet, "_token_merging_ratio", 0.0)
    if current == ratio or not hasattr(unet, "set_attention_slice"):  # not a UNet: tomesd has nothing to patch
        return current
    import tomesd

    if current > 0:
        tomesd.remove_patch(unet)
    if ratio > 0:  # A1111's arguments (random merging upsets some samplers)
        tomesd.apply_patch(unet, ratio=ratio, use_rand=False, merge_attn=True, merge_crossattn=False,
                           merge_mlp=False)
    unet._token_merging_ratio = ratio
    return ratio


@contextlib.contextmanager
def removed_after(models):
    """Run a job; afterwards every model in `models()` computes without merging again (a later job, training or
    a preview never inherits a ratio)."""
    try:
        yield
    finally:
        for model in models():
            unet = getattr(model, "unet", None)
            if unet is not None and getattr(unet, "_token_merging_ratio", 0.0):
                apply(unet, 0.0)

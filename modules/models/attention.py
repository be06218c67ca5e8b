"""How the denoiser computes attention: A1111's setting "Cross attention optimization" over the flags' choice.

A1111's names map to diffusers' processors: Automatic → what the flags chose (--xformers; --opt-split-attention:
sliced; else PyTorch SDPA); "sdp" → SDPA; "sdp-no-mem" → SDPA without its memory-efficient kernel (flash or math
only, as A1111); "xformers"; "None" → plain attention (softmax(QKᵀ)V, A1111's unoptimized path); the low-memory
ones ("sub-quadratic", "V1", "InvokeAI", "Doggettx", "Split attention") → sliced attention. A change applies at the
next generation, to every loaded model (A1111 re-hijacks the model at once). Flux and SD3 transformers keep their
own SDPA processors (sliced and plain attention are UNet processors). Torch is imported when applied: the
settings' list of choices is read before the server binds its port."""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)

CHOICES = ["Automatic", "None", "sdp", "sdp-no-mem", "xformers", "sub-quadratic", "V1", "InvokeAI", "Doggettx",
           "Split attention"]
_SLICED = {"sub-quadratic", "V1", "InvokeAI", "Doggettx", "Split attention"}


def mode_for(setting: str | None, flags_choice: str) -> str:
    """One of "sdpa", "sdpa-no-mem", "xformers", "sliced", "plain" for the setting's value (`flags_choice`:
    DeviceConfig.attention, what Automatic means)."""
    if not setting or setting == "Automatic":
        return flags_choice
    if setting == "None":
        return "plain"
    if setting in _SLICED:
        return "sliced"
    return {"sdp": "sdpa", "sdp-no-mem": "sdpa-no-mem", "xformers": "xformers"}.get(setting, flags_choice)


def apply(denoiser, mode: str) -> str:
    """Set the denoiser's attention processors for `mode`; returns the mode in effect (xformers missing, or a
    transformer asked for a UNet-only mode: SDPA)."""
    import torch
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    is_unet = hasattr(denoiser, "set_attention_slice")
    if torch.cuda.is_available():
        torch.backends.cuda.enable_mem_efficient_sdp(mode != "sdpa-no-mem")
    if mode == "xformers":
        try:
            denoiser.enable_xformers_memory_efficient_attention()
            return mode
        except Exception as e:  # xformers missing or built for another torch: SDPA still works
            log.warning("xformers unavailable (%s); using PyTorch SDPA attention", e)
            mode = "sdpa"
    if not is_unet:
        if mode in ("sliced", "plain"):
            log.info("%s attention is for UNets; %s keeps PyTorch SDPA attention", mode, type(denoiser).__name__)
        return "sdpa"
    if mode == "sliced":
        denoiser.set_attention_slice("auto")
    elif mode == "plain":
        denoiser.set_attn_processor(AttnProcessor())
    else:
        denoiser.set_attn_processor(AttnProcessor2_0())
    return mode


def ensure(model, setting: str | None, flags_choice: str) -> None:
    """The loaded model's denoiser as the setting asks (a no-op when it already is)."""
    wanted = mode_for(setting, flags_choice)
    if model.extra.get("attention_asked") == wanted or getattr(model, "unet", None) is None:
        return
    model.extra["attention"] = apply(model.unet, wanted)
    model.extra["attention_asked"] = wanted

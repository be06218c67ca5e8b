"""A1111's `modules.lowvram`: extensions call `send_everything_to_cpu()` before loading their own big models."""
from __future__ import annotations

from modules.a1111.unsupported import unsupported


def _engine():
    from modules import shared

    return shared.engine


def send_everything_to_cpu() -> None:
    """Move the loaded models' weights off the GPU so an extension's model fits (they come back on the next job)."""
    engine = _engine()
    if engine is None:
        return
    import torch

    from modules.memory.offload import offloader_of

    for model in engine.models.loaded:
        off = offloader_of(model)
        if off is not None:  # parked parts: drop what is on the device; the plan brings it back
            off.drop_all()
            continue
        for part in (model.unet, model.vae, model.text_encoder, model.text_encoder_2):
            if part is not None and hasattr(part, "to"):
                part.to("cpu")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def is_enabled(sd_model=None) -> bool:
    """Whether the engine's memory plan offloads (--medvram/--lowvram, the Memory setting or automatically)."""
    engine = _engine()
    plan = getattr(getattr(engine, "memory", None), "last_plan", None)
    if plan is not None:
        return plan.mode != "resident"
    memory = getattr(engine, "memory", None)
    return memory is not None and memory.forced(sd_model)[0] in ("model", "sequential")


def is_needed(sd_model=None) -> bool:
    return is_enabled(sd_model)


def send_me_to_gpu(module, _):
    """A1111's forward pre-hook for its own offload; our offload is planned by the engine."""


setup_for_low_vram = unsupported("lowvram.setup_for_low_vram", "offload is planned by the engine")
apply = unsupported("lowvram.apply", "offload is planned by the engine")

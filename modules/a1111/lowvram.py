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

    for model in engine.models.loaded:
        for part in (model.unet, model.vae, model.text_encoder, model.text_encoder_2):
            if part is not None and hasattr(part, "to"):
                part.to("cpu")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def is_enabled(sd_model=None) -> bool:
    engine = _engine()
    return engine is not None and engine.device_config.offload != "none"


def is_needed(sd_model=None) -> bool:
    return is_enabled(sd_model)


def send_me_to_gpu(module, _):
    """A1111's forward pre-hook for its own offload; our offload is planned by the engine."""


setup_for_low_vram = unsupported("lowvram.setup_for_low_vram", "offload is planned by the engine")
apply = unsupported("lowvram.apply", "offload is planned by the engine")

"""The ModelSpec of a Flux/SD3 file: transformer config from its shapes, the parts it carries, and the per-variant
defaults that no tensor tells (scheduler shift, T5 length, guidance defaults: the values of the released models'
own scheduler configs and pipelines)."""
from __future__ import annotations

import copy
from typing import Mapping

from modules.models import flow_parts
from modules.models.detect import ModelSpec, load_template
from modules.models.detect_flow import FlowTransformerSpec

_FLUX_DEV_SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0,
                       "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256,
                       "max_image_seq_len": 4096}
_FLUX_SCHNELL_SCHEDULER = {**_FLUX_DEV_SCHEDULER, "shift": 1.0, "use_dynamic_shifting": False}
_SD3_SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}

# What each released variant's pipeline uses: T5 tokens, CFG (real), distilled guidance, steps
_DEFAULTS = {
    "flux_dev": {"t5_max_length": 512, "cfg_scale": 1.0, "distilled_cfg_scale": 3.5, "steps": 20},
    "flux_schnell": {"t5_max_length": 256, "cfg_scale": 1.0, "distilled_cfg_scale": None, "steps": 4},
    "sd3": {"t5_max_length": 256, "cfg_scale": 5.0, "distilled_cfg_scale": None, "steps": 28},
}
REQUIRED_PARTS = {"flux": ("clip_l", "t5"), "sd3": ("clip_l", "clip_g", "t5")}


def variant_defaults(flow: FlowTransformerSpec) -> tuple[dict, dict]:
    """(scheduler config, defaults) for a detected transformer."""
    if flow.family == "sd3":
        return copy.deepcopy(_SD3_SCHEDULER), dict(_DEFAULTS["sd3"])
    if flow.config.get("guidance_embeds"):
        return copy.deepcopy(_FLUX_DEV_SCHEDULER), dict(_DEFAULTS["flux_dev"])
    return copy.deepcopy(_FLUX_SCHNELL_SCHEDULER), dict(_DEFAULTS["flux_schnell"])


def flow_model_spec(sd: Mapping, flow: FlowTransformerSpec) -> ModelSpec:
    """The spec of a file holding a Flux/SD3 transformer; text encoders/VAE only where the file carries them (the
    loader finds the others in models/text_encoder and models/VAE)."""
    scheduler, defaults = variant_defaults(flow)
    encoders: dict[str, dict] = {}
    prefixes: dict[str, str] = {}
    for role, prefix in flow_parts.text_encoder_roles(sd).items():
        try:
            part = flow_parts.text_encoder_part(sd, role, prefix, "checkpoint")
        except (KeyError, ValueError):
            continue
        encoders[role], prefixes[role] = part.config, prefix
    vae = flow_parts.vae_part(sd, flow.family, "checkpoint") if flow_parts.is_flow_vae(sd) else None
    return ModelSpec(
        family=flow.family, inpainting=flow.variant == "Flux.1 Fill", prediction_type="flow",
        unet=dict(flow.config), vae=vae.config if vae is not None else load_template(flow.family, "vae"),
        text_encoders=encoders, scheduler=scheduler, te_prefixes=prefixes,
        te_layouts={r: "hf" for r in encoders}, variant=flow.variant, flow=flow,
        defaults={**defaults, "has_vae": vae is not None},
    )


"""Flux.1 ControlNets in diffusers' layout (InstantX canny/depth/Union, Shakker-Labs Union Pro): a few of Flux's
transformer blocks that read the control picture's packed latents and add to the transformer's hidden states.

Config from shapes, the rope axes from the checkpoint's own transformer (no tensor holds them). In the loop the
FluxDenoiser runs them with the transformer's own inputs (packed latents, ids, timestep/1000, guidance), as
diffusers' FluxControlNetPipeline does; the control picture is encoded by the VAE with each image's generator
before its noise is drawn, also as the pipeline does."""
from __future__ import annotations

from collections.abc import Mapping

from modules.controlnet.detect import ControlNetFileError, ControlNetSpec, _indices, _shape


def is_flux_controlnet(sd: Mapping) -> bool:
    return "controlnet_x_embedder.weight" in sd and "x_embedder.weight" in sd and any(
        k.startswith("transformer_blocks.") for k in sd)


def spec(sd: Mapping, rope_axes=None) -> ControlNetSpec:
    if any(k.startswith("input_hint_block.") for k in sd):
        raise ControlNetFileError("an XLabs Flux ControlNet (pixel hint block): not supported yet (the InstantX and "
                                  "Shakker-Labs ones are)")
    inner, in_channels = _shape(sd, "x_embedder.weight")
    head_dim = _shape(sd, "transformer_blocks.0.attn.norm_q.weight")[0]
    config = {
        "patch_size": 1, "in_channels": in_channels,
        "num_layers": len(_indices(sd, "transformer_blocks.")),
        "num_single_layers": len(_indices(sd, "single_transformer_blocks.")),
        "attention_head_dim": head_dim, "num_attention_heads": inner // head_dim,
        "joint_attention_dim": _shape(sd, "context_embedder.weight")[1],
        "pooled_projection_dim": _shape(sd, "time_text_embed.text_embedder.linear_1.weight")[1],
        "guidance_embeds": "time_text_embed.guidance_embedder.linear_1.weight" in sd,
    }
    if rope_axes is not None:
        config["axes_dims_rope"] = list(rope_axes)
    if "controlnet_mode_embedder.weight" in sd:
        config["num_mode"] = _shape(sd, "controlnet_mode_embedder.weight")[0]
    return ControlNetSpec(kind="flux", config=config, family="flux")

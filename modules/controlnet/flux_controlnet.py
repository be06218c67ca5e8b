"""Flux.1 ControlNets: diffusers' layout (InstantX canny/depth/Union, Shakker-Labs Union Pro), a few of Flux's
transformer blocks that read the control picture's packed latents, and XLabs-AI's (BFL-named blocks with a pixel
hint block), whose outputs repeat over the transformer's blocks; both add to the transformer's hidden states.

Config from shapes, the rope axes from the checkpoint's own transformer (no tensor holds them). In the loop the
FluxDenoiser runs them with the transformer's own inputs (packed latents, ids, timestep/1000, guidance), as
diffusers' FluxControlNetPipeline does; the control picture is encoded by the VAE with each image's generator
before its noise is drawn, also as the pipeline does."""
from __future__ import annotations

from collections.abc import Mapping

from modules.controlnet.detect import ControlNetFileError, ControlNetSpec, _indices, _shape


# XLabs' pixel hint block: eight 3x3 convs of nn.Sequential (SiLUs between them at the odd indices) → diffusers'
# ControlNetConditioningEmbedding (conv_in, six blocks, conv_out).
_XLABS_HINT = ["conv_in"] + [f"blocks.{i}" for i in range(6)] + ["conv_out"]


def is_flux_controlnet(sd: Mapping) -> bool:
    diffusers = "controlnet_x_embedder.weight" in sd and "x_embedder.weight" in sd and any(
        k.startswith("transformer_blocks.") for k in sd)
    return diffusers or is_xlabs(sd)


def is_xlabs(sd: Mapping) -> bool:
    """XLabs-AI's Flux ControlNets: BFL-named blocks (`double_blocks.N`), `pos_embed_input`, a pixel hint block."""
    return "pos_embed_input.weight" in sd and any(k.startswith("double_blocks.") for k in sd)


def to_diffusers(sd: Mapping) -> dict:
    """Diffusers' FluxControlNetModel layout, from either release layout."""
    if not is_xlabs(sd):
        return dict(sd)
    from modules.models.flux_keys import bfl_to_diffusers

    control = ("pos_embed_input.", "input_hint_block.", "controlnet_blocks.")
    out = bfl_to_diffusers({k: v for k, v in sd.items() if not k.startswith(control)})
    for key, value in sd.items():
        if key.startswith("pos_embed_input."):
            out["controlnet_x_embedder." + key.removeprefix("pos_embed_input.")] = value
        elif key.startswith("controlnet_blocks."):
            out[key] = value
        elif key.startswith("input_hint_block."):
            index, part = key.removeprefix("input_hint_block.").split(".", 1)
            if int(index) % 2 or int(index) // 2 >= len(_XLABS_HINT):
                raise ControlNetFileError(f"an XLabs hint block of another shape ({key})")
            out[f"input_hint_block.{_XLABS_HINT[int(index) // 2]}.{part}"] = value
    return out


def spec(sd: Mapping, rope_axes=None) -> ControlNetSpec:
    """The FluxControlNetModel config of a diffusers-layout state dict."""
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
    if "input_hint_block.conv_out.weight" in sd:  # XLabs: the map is read in pixels, not as VAE latents
        hint = _shape(sd, "input_hint_block.conv_out.weight")[0]
        # the hint block's output is cut into patches as wide as the packed latents (16 channels × 2×2 = 64)
        config.update(conditioning_embedding_channels=hint, patch_size=round((in_channels / hint) ** 0.5))
    if "controlnet_mode_embedder.weight" in sd:
        config["num_mode"] = _shape(sd, "controlnet_mode_embedder.weight")[0]
    return ControlNetSpec(kind="flux", config=config, family="flux")

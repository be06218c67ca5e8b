"""What a ControlNet file is, from its tensors alone: its layout, the diffusers config its shapes imply, and the
checkpoint family (SD1.x / SD2.x / SDXL) it can guide.

Layouts users have in `models/ControlNet/`:
- original (lllyasviel's `control_v11p_sd15_canny.pth`): `control_model.input_blocks.*`, `zero_convs.*`,
  `input_hint_block.*`, `middle_block_out.*` (sometimes without the `control_model.` prefix);
- diffusers (`diffusion_pytorch_model.safetensors` renamed, e.g. `controlnet-canny-sdxl-1.0.safetensors`, or a
  folder with `config.json`): `controlnet_cond_embedding.*`, `down_blocks.*`, `controlnet_down_blocks.*`.
The original layout is converted key by key with diffusers' converter (it needs only `layers_per_block`, read from
the input blocks); the config is then read from the diffusers-layout shapes, one reader for both.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

ORIGINAL_PREFIX = "control_model."


class ControlNetFileError(ValueError):
    """The file is not a ControlNet this program can build; the message says what it is instead."""


@dataclass(frozen=True)
class ControlNetSpec:
    """What the loader needs: the kind of model, its diffusers config, and the family it guides."""

    kind: str  # "controlnet" | "union"
    config: dict
    family: str  # "sd1" | "sd2" | "sdxl"


FAMILY_NAMES = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL", "flux": "Flux.1", "sd3": "SD3"}


def layout(sd: Mapping) -> str:
    """"original", "diffusers", "control_lora", "t2i_adapter" or "unknown"."""
    if "lora_controlnet" in sd:
        return "control_lora"
    if any(k.startswith(ORIGINAL_PREFIX + "input_blocks.") for k in sd) or "zero_convs.0.0.weight" in sd:
        return "original"
    if "controlnet_cond_embedding.conv_in.weight" in sd:
        return "diffusers"
    if any(k.startswith(("adapter.", "body.0.", "conv_in.weight")) for k in sd) and not any(
            k.startswith("down_blocks.") for k in sd):
        return "t2i_adapter"
    return "unknown"


def to_diffusers(sd: Mapping) -> dict:
    """The state dict in diffusers' ControlNetModel layout, whatever layout it came in."""
    kind = layout(sd)
    if kind == "diffusers":
        return dict(sd)
    if kind != "original":
        raise ControlNetFileError(_not_a_controlnet(kind))
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    plain = {k.removeprefix(ORIGINAL_PREFIX): v for k, v in sd.items()}
    converted = convert_controlnet_checkpoint(plain, {"layers_per_block": _ldm_layers_per_block(plain)})
    return {k: v for k, v in converted.items() if v is not None}


def spec_from_diffusers(sd: Mapping, added_time_dim: int | None = None) -> ControlNetSpec:
    """The ControlNetModel config that the (diffusers-layout) tensors imply.

    `added_time_dim`: SDXL's per-time-id embedding width (256), which no ControlNet tensor holds; taken from the
    checkpoint's UNet when known."""
    if "controlnet_cond_embedding.conv_in.weight" not in sd:
        raise ControlNetFileError("no ControlNet conditioning embedding (controlnet_cond_embedding.*) in the file")
    cond_in = _shape(sd, "controlnet_cond_embedding.conv_in.weight")
    embed = [cond_in[0]] + [_shape(sd, f"controlnet_cond_embedding.blocks.{i}.weight")[0]
                            for i in _indices(sd, "controlnet_cond_embedding.blocks.") if i % 2 == 1]
    levels = _indices(sd, "down_blocks.")
    channels = [_shape(sd, f"down_blocks.{i}.resnets.0.conv2.weight")[0] for i in levels]
    layers = [len(_indices(sd, f"down_blocks.{i}.resnets.")) for i in levels]
    depths = [len(_indices(sd, f"down_blocks.{i}.attentions.0.transformer_blocks.")) for i in levels]
    down_types = ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths]
    attn_key = next((k for k in sd if k.endswith("attn2.to_k.weight")), None)
    if attn_key is None:
        raise ControlNetFileError("the ControlNet has no cross-attention layers")
    context = _shape(sd, attn_key)[1]
    proj_in = attn_key.split("transformer_blocks.")[0] + "proj_in.weight"
    sdxl = "add_embedding.linear_1.weight" in sd
    linear = len(_shape(sd, proj_in)) == 2
    # SDXL alone has the added (pooled text + size) embedding; SD2.x projects into attention with linear layers,
    # SD1.x with 1x1 convs. The text width (768 / 1024 / 2048) is checked against the UNet when used.
    family = "sdxl" if sdxl else "sd2" if linear else "sd1"
    mid_depth = len(_indices(sd, "mid_block.attentions.0.transformer_blocks."))
    config = {
        "in_channels": _shape(sd, "conv_in.weight")[1],
        "conditioning_channels": cond_in[1],
        "conditioning_embedding_out_channels": embed,
        "block_out_channels": channels,
        "down_block_types": down_types,
        "layers_per_block": layers[0] if len(set(layers)) == 1 else layers,
        "cross_attention_dim": context,
        "use_linear_projection": linear,
        # diffusers' ControlNetModel reads attention_head_dim as the number of heads (its legacy naming)
        "attention_head_dim": 8 if family == "sd1" else [max(1, c // 64) for c in channels],
        "transformer_layers_per_block": [max(1, d) for d in depths],
        "mid_block_type": "UNetMidBlock2DCrossAttn" if mid_depth else "UNetMidBlock2D",
    }
    if sdxl:
        adm_in = _shape(sd, "add_embedding.linear_1.weight")[1]
        config.update(addition_embed_type="text_time", projection_class_embeddings_input_dim=adm_in,
                      addition_time_embed_dim=added_time_dim or 256)
    kind = "union" if "task_embedding" in sd else "controlnet"
    if kind == "union":  # xinsir's ControlNet Union / ProMax (diffusers' ControlNetUnionModel)
        types, width = _shape(sd, "task_embedding")
        config.update(num_control_type=types, num_trans_channel=width, num_trans_head=8,  # heads: not in any shape
                      num_trans_layer=len(_indices(sd, "transformer_layes.")),
                      num_proj_channel=_shape(sd, "spatial_ch_projs.weight")[0])
    return ControlNetSpec(kind=kind, config=config, family=family)


def _not_a_controlnet(kind: str) -> str:
    return {
        "t2i_adapter": "a T2I-Adapter, not a ControlNet",
    }.get(kind, "not a ControlNet (no control_model.* or controlnet_cond_embedding.* tensors)")


def _ldm_layers_per_block(sd: Mapping) -> int:
    """Input blocks per level in the original layout: the blocks between two downsamplers (`*.0.op`)."""
    blocks = _indices(sd, "input_blocks.")
    count = 0
    for i in blocks[1:]:
        if f"input_blocks.{i}.0.op.weight" in sd:
            break
        count += 1
    if count == 0:
        raise ControlNetFileError("the ControlNet's input blocks are not in the original layout")
    return count


def _indices(sd: Mapping, prefix: str) -> list[int]:
    found = set()
    for k in sd:
        if k.startswith(prefix):
            head = k[len(prefix):].split(".", 1)[0]
            if head.isdigit():
                found.add(int(head))
    return sorted(found)


def _shape(sd: Mapping, key: str) -> tuple[int, ...]:
    if key not in sd:
        raise ControlNetFileError(f"missing tensor {key}")
    return tuple(sd[key].shape)

"""Which flow-matching transformer a state dict holds (Flux.1, SD3, SD3.5), read from its own tensor shapes.

Three key layouts are recognised, each with or without ComfyUI/Forge's `model.diffusion_model.` prefix: Black Forest
Labs' (`double_blocks.N`, `single_blocks.N`), Stability's (`joint_blocks.N`), and diffusers' (`transformer_blocks.N`,
`single_transformer_blocks.N`). The result is the diffusers config of `FluxTransformer2DModel` /
`SD3Transformer2DModel`: depth, widths, heads, channels and variant features come from the tensors; only what shapes
cannot tell (the attention head width of an SD3 without q/k norms, rope axes) comes from the family defaults below.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from modules.models.key_layout import block_ids

PREFIXES = ("model.diffusion_model.", "")
FLUX_ROPE_AXES = (16, 56, 56)  # not in any tensor: Flux.1's rotary embedding split of the 128-wide heads
SD3_HEAD_DIM = 64  # every SD3/SD3.5 release; read from the q/k norm where the file has one


@dataclass
class FlowTransformerSpec:
    family: str  # "flux" or "sd3"
    variant: str  # what a user calls it: "Flux.1 dev", "SD3.5 Large", ...
    layout: str  # "bfl", "sai" or "diffusers"
    prefix: str  # "" or "model.diffusion_model."
    config: dict = field(default_factory=dict)  # the diffusers transformer config

    @property
    def label(self) -> str:
        return f"{self.variant} ({self.layout} layout)"


def _shape(sd: Mapping, key: str) -> tuple[int, ...]:
    return tuple(getattr(sd[key], "shape", ()))


def _count(sd: Mapping, prefix: str) -> int:
    """How many numbered blocks `prefix<N>.` the state dict has."""
    ids = block_ids(sd, prefix)
    return ids[-1] + 1 if ids else 0


def detect_flow_transformer(sd: Mapping) -> FlowTransformerSpec | None:
    """The transformer in `sd`, or None when it holds none of the known layouts."""
    for prefix in PREFIXES:
        for reader in (_flux_bfl, _flux_diffusers, _sd3_sai, _sd3_diffusers):
            spec = reader(sd, prefix)
            if spec is not None:
                return spec
    return None


def fill_mask_channels(config: dict) -> int:
    """How many packed mask channels a Flux Fill transformer takes after its 2×(packed latent) inputs: 4·f² for a
    VAE that shrinks pictures f times (256 for Flux's f = 8); 0 for other variants."""
    out = config.get("out_channels") or 64
    extra = config["in_channels"] - 2 * out
    side = round((extra / 4) ** 0.5) if extra > 0 else 0
    return extra if side >= 2 and 4 * side * side == extra and side & (side - 1) == 0 else 0


def _flux_variant(config: dict) -> str:
    if fill_mask_channels(config):
        return "Flux.1 Fill"
    if config["in_channels"] == 2 * (config.get("out_channels") or 64):
        return "Flux.1 Depth"
    return "Flux.1 dev" if config["guidance_embeds"] else "Flux.1 schnell"


def flux_rope_axes(head_dim: int) -> tuple[int, int, int]:
    """Flux.1's rope split (16, 56, 56) of its 128-wide heads; narrower (reduced-size) models keep its proportions
    (1/8 for the text/time axis, the rest halved between height and width, all even)."""
    if head_dim == 128:
        return FLUX_ROPE_AXES
    hw = 2 * ((head_dim * 7 // 16) // 2)
    return (head_dim - 2 * hw, hw, hw)


def _flux_config(hidden: int, head_dim: int, in_channels: int, out_features: int, joint: int, pooled: int,
                 double: int, single: int, guidance: bool) -> dict:
    return {"patch_size": 1, "in_channels": in_channels,
            "out_channels": None if out_features == in_channels else out_features,
            "num_layers": double, "num_single_layers": single, "attention_head_dim": head_dim,
            "num_attention_heads": hidden // head_dim, "joint_attention_dim": joint, "pooled_projection_dim": pooled,
            "guidance_embeds": guidance, "axes_dims_rope": flux_rope_axes(head_dim)}


def _flux_bfl(sd: Mapping, p: str) -> FlowTransformerSpec | None:
    if f"{p}img_in.weight" not in sd or f"{p}double_blocks.0.img_attn.qkv.weight" not in sd:
        return None
    hidden, in_channels = _shape(sd, f"{p}img_in.weight")
    config = _flux_config(
        hidden, _shape(sd, f"{p}double_blocks.0.img_attn.norm.query_norm.scale")[0], in_channels,
        _shape(sd, f"{p}final_layer.linear.weight")[0], _shape(sd, f"{p}txt_in.weight")[1],
        _shape(sd, f"{p}vector_in.in_layer.weight")[1], _count(sd, f"{p}double_blocks."),
        _count(sd, f"{p}single_blocks."), f"{p}guidance_in.in_layer.weight" in sd)
    return FlowTransformerSpec("flux", _flux_variant(config), "bfl", p, config)


def _flux_diffusers(sd: Mapping, p: str) -> FlowTransformerSpec | None:
    if f"{p}x_embedder.weight" not in sd or f"{p}single_transformer_blocks.0.proj_mlp.weight" not in sd:
        return None
    hidden, in_channels = _shape(sd, f"{p}x_embedder.weight")
    config = _flux_config(
        hidden, _shape(sd, f"{p}transformer_blocks.0.attn.norm_q.weight")[0], in_channels,
        _shape(sd, f"{p}proj_out.weight")[0], _shape(sd, f"{p}context_embedder.weight")[1],
        _shape(sd, f"{p}time_text_embed.text_embedder.linear_1.weight")[1], _count(sd, f"{p}transformer_blocks."),
        _count(sd, f"{p}single_transformer_blocks."),
        f"{p}time_text_embed.guidance_embedder.linear_1.weight" in sd)
    return FlowTransformerSpec("flux", _flux_variant(config), "diffusers", p, config)


def _sd3_variant(config: dict) -> str:
    if config["dual_attention_layers"]:
        return "SD3.5 Medium"
    if config["qk_norm"]:
        return "SD3.5 Large" if config["num_layers"] >= 38 else "SD3.5"
    return "SD3 Medium" if config["num_layers"] == 24 else "SD3"


def _sd3_config(proj: tuple[int, ...], positions: int, joint: int, pooled: int, out_features: int, layers: int,
                head_dim: int, dual: tuple[int, ...], qk_norm: bool) -> dict:
    hidden, in_channels, patch = proj[0], proj[1], proj[2]
    return {"sample_size": 128, "patch_size": patch, "in_channels": in_channels, "num_layers": layers,
            "attention_head_dim": head_dim, "num_attention_heads": hidden // head_dim, "joint_attention_dim": joint,
            "caption_projection_dim": hidden, "pooled_projection_dim": pooled,
            "out_channels": out_features // (patch * patch), "pos_embed_max_size": round(positions ** 0.5),
            "dual_attention_layers": dual, "qk_norm": "rms_norm" if qk_norm else None}


_SD3_KEYS = {  # where each layout keeps the tensors an SD3 config is read from
    "sai": dict(first="joint_blocks.0.x_block.attn.qkv.weight", proj="x_embedder.proj.weight", pos="pos_embed",
                pooled="y_embedder.mlp.0.weight", out="final_layer.linear.weight", blocks="joint_blocks.",
                q_norm="joint_blocks.0.x_block.attn.ln_q.weight", dual=".x_block.attn2."),
    "diffusers": dict(first="transformer_blocks.0.attn.to_q.weight", proj="pos_embed.proj.weight",
                      pos="pos_embed.pos_embed", pooled="time_text_embed.text_embedder.linear_1.weight",
                      out="proj_out.weight", blocks="transformer_blocks.",
                      q_norm="transformer_blocks.0.attn.norm_q.weight", dual=".attn2."),
}


def _sd3(sd: Mapping, p: str, layout: str) -> FlowTransformerSpec | None:
    k = _SD3_KEYS[layout]
    if p + k["first"] not in sd or p + k["proj"] not in sd:
        return None
    qk_norm = p + k["q_norm"] in sd
    head_dim = _shape(sd, p + k["q_norm"])[0] if qk_norm else SD3_HEAD_DIM
    config = _sd3_config(
        _shape(sd, p + k["proj"]), _shape(sd, p + k["pos"])[1], _shape(sd, f"{p}context_embedder.weight")[1],
        _shape(sd, p + k["pooled"])[1], _shape(sd, p + k["out"])[0], _count(sd, p + k["blocks"]), head_dim,
        tuple(block_ids(sd, p + k["blocks"], k["dual"])), qk_norm)
    return FlowTransformerSpec("sd3", _sd3_variant(config), layout, p, config)


def _sd3_sai(sd: Mapping, p: str) -> FlowTransformerSpec | None:
    return _sd3(sd, p, "sai")


def _sd3_diffusers(sd: Mapping, p: str) -> FlowTransformerSpec | None:
    return _sd3(sd, p, "diffusers")

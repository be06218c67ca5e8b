"""SD3 / SD3.5 transformer weights between Stability's key layout (the released `.safetensors`, also inside ComfyUI
all-in-one files) and diffusers' `SD3Transformer2DModel`, in both directions, every width read from the tensors.

Tensors are split and joined along their first dimension only, never upcast. The last joint block has no context
output (no `context_block.attn.proj`, no context MLP) and its context modulation is (shift, scale) in Stability's
order and (scale, shift) in diffusers'; the final layer's modulation likewise.
"""
from __future__ import annotations

from typing import Mapping

import torch

from modules.models.key_layout import block_ids, swap_halves

_RENAMED = {  # Stability name → diffusers name (".weight"/".bias" follow)
    "x_embedder.proj": "pos_embed.proj",
    "t_embedder.mlp.0": "time_text_embed.timestep_embedder.linear_1",
    "t_embedder.mlp.2": "time_text_embed.timestep_embedder.linear_2",
    "y_embedder.mlp.0": "time_text_embed.text_embedder.linear_1",
    "y_embedder.mlp.2": "time_text_embed.text_embedder.linear_2",
    "context_embedder": "context_embedder",
    "final_layer.linear": "proj_out",
}
_BLOCK = {  # within joint_blocks.N → transformer_blocks.N
    "x_block.adaLN_modulation.1": "norm1.linear",
    "x_block.attn.proj": "attn.to_out.0",
    "x_block.mlp.fc1": "ff.net.0.proj",
    "x_block.mlp.fc2": "ff.net.2",
    "context_block.attn.proj": "attn.to_add_out",
    "context_block.mlp.fc1": "ff_context.net.0.proj",
    "context_block.mlp.fc2": "ff_context.net.2",
    "x_block.attn2.proj": "attn2.to_out.0",
}
_NORMS = {  # q/k RMS norms (SD3.5): one weight each
    "x_block.attn.ln_q.weight": "attn.norm_q.weight",
    "x_block.attn.ln_k.weight": "attn.norm_k.weight",
    "context_block.attn.ln_q.weight": "attn.norm_added_q.weight",
    "context_block.attn.ln_k.weight": "attn.norm_added_k.weight",
    "x_block.attn2.ln_q.weight": "attn2.norm_q.weight",
    "x_block.attn2.ln_k.weight": "attn2.norm_k.weight",
}
_QKV = {"x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
        "context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
        "x_block.attn2.qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v")}
_CONTEXT_MOD = ("context_block.adaLN_modulation.1", "norm1_context.linear")
_FINAL_MOD = ("final_layer.adaLN_modulation.1", "norm_out.linear")
_SUFFIXES = (".weight", ".bias")


def sai_to_diffusers(sd: Mapping, prefix: str = "", hidden: int | None = None,
                     last_block: int | None = None) -> dict[str, torch.Tensor]:
    """A diffusers state dict from the Stability-layout tensors under `prefix` (every key there must be used).
    `hidden` (the model width) and `last_block` (the block whose context stream ends) let a partial dict convert,
    e.g. a LoRA's weight deltas."""
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        used.add(key)
        return sd[key]

    def mapped(src: str, dst: str, table: dict) -> None:
        for theirs, ours in table.items():
            for suffix in _SUFFIXES:
                if src + theirs + suffix in sd:
                    out[dst + ours + suffix] = take(src + theirs + suffix)

    mapped(prefix, "", _RENAMED)
    if prefix + "pos_embed" in sd:
        out["pos_embed.pos_embed"] = take(prefix + "pos_embed")
    for suffix in _SUFFIXES:
        if prefix + _FINAL_MOD[0] + suffix in sd:
            out[_FINAL_MOD[1] + suffix] = swap_halves(take(prefix + _FINAL_MOD[0] + suffix))
    hidden = hidden or sd[prefix + "x_embedder.proj.weight"].shape[0]
    for i in block_ids(sd, prefix + "joint_blocks."):
        src, dst = f"{prefix}joint_blocks.{i}.", f"transformer_blocks.{i}."
        mapped(src, dst, _BLOCK)
        for theirs, ours in _NORMS.items():
            if src + theirs in sd:
                out[dst + ours] = take(src + theirs)
        for theirs, names in _QKV.items():
            for suffix in _SUFFIXES:
                if src + theirs + suffix in sd:
                    for name, part in zip(names, take(src + theirs + suffix).split(hidden, dim=0)):
                        out[dst + name + suffix] = part
        last = (i == last_block if last_block is not None
                else src + "context_block.attn.proj.weight" not in sd)  # the context stream ends here
        for suffix in _SUFFIXES:
            if src + _CONTEXT_MOD[0] + suffix in sd:
                mod = take(src + _CONTEXT_MOD[0] + suffix)
                out[dst + _CONTEXT_MOD[1] + suffix] = swap_halves(mod) if last else mod
    left = [k for k in sd if k.startswith(prefix) and k not in used]
    if left:
        raise KeyError(f"SD3 tensors this converter does not know: {', '.join(left[:5])}")
    return out


def diffusers_to_sai(sd: Mapping, prefix: str = "") -> dict[str, torch.Tensor]:
    """The Stability-layout state dict (under `prefix`) of a diffusers SD3 transformer's state dict."""
    out: dict[str, torch.Tensor] = {}

    def mapped(src: str, dst: str, table: dict) -> None:
        for theirs, ours in table.items():
            for suffix in _SUFFIXES:
                if src + ours + suffix in sd:
                    out[dst + theirs + suffix] = sd[src + ours + suffix]

    mapped("", prefix, _RENAMED)
    if "pos_embed.pos_embed" in sd:
        out[prefix + "pos_embed"] = sd["pos_embed.pos_embed"]
    for suffix in _SUFFIXES:
        if _FINAL_MOD[1] + suffix in sd:
            out[prefix + _FINAL_MOD[0] + suffix] = swap_halves(sd[_FINAL_MOD[1] + suffix])
    for i in block_ids(sd, "transformer_blocks."):
        src, dst = f"transformer_blocks.{i}.", f"{prefix}joint_blocks.{i}."
        mapped(src, dst, _BLOCK)
        for theirs, ours in _NORMS.items():
            if src + ours in sd:
                out[dst + theirs] = sd[src + ours]
        for theirs, names in _QKV.items():
            for suffix in _SUFFIXES:
                if src + names[0] + suffix in sd:
                    out[dst + theirs + suffix] = torch.cat([sd[src + n + suffix] for n in names], dim=0)
        last = src + "attn.to_add_out.weight" not in sd
        for suffix in _SUFFIXES:
            if src + _CONTEXT_MOD[1] + suffix in sd:
                mod = sd[src + _CONTEXT_MOD[1] + suffix]
                out[dst + _CONTEXT_MOD[0] + suffix] = swap_halves(mod) if last else mod
    return out

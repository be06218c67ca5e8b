"""Flux transformer weights between Black Forest Labs' key layout (the released `.safetensors`, also inside ComfyUI
and Forge all-in-one files) and diffusers' `FluxTransformer2DModel`, in both directions.

Every width is read from the tensors themselves (diffusers' own converter assumes the full-size model), so a tiny
test model converts by the same code as the 12B release. Tensors are split and joined along their first dimension
only, never upcast: an fp8 or fp16 file keeps its dtype.
"""
from __future__ import annotations

from typing import Mapping

import torch

from modules.models.key_layout import block_ids, swap_halves

_RENAMED = {  # BFL name → diffusers name, for tensors that map one to one (".weight"/".bias" follow)
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "final_layer.linear": "proj_out",
}
_DOUBLE = {  # within double_blocks.N → transformer_blocks.N
    "img_mod.lin": "norm1.linear",
    "txt_mod.lin": "norm1_context.linear",
    "img_attn.proj": "attn.to_out.0",
    "txt_attn.proj": "attn.to_add_out",
    "img_mlp.0": "ff.net.0.proj",
    "img_mlp.2": "ff.net.2",
    "txt_mlp.0": "ff_context.net.0.proj",
    "txt_mlp.2": "ff_context.net.2",
    "img_attn.norm.query_norm.scale": "attn.norm_q.weight",
    "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
    "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
    "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight",
}
_DOUBLE_QKV = {"img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
               "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")}
_SINGLE = {  # within single_blocks.N → single_transformer_blocks.N
    "modulation.lin": "norm.linear",
    "linear2": "proj_out",
    "norm.query_norm.scale": "attn.norm_q.weight",
    "norm.key_norm.scale": "attn.norm_k.weight",
}
_SINGLE_FUSED = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")  # linear1 = q, k, v and the MLP's input
_FINAL_MOD = ("final_layer.adaLN_modulation.1", "norm_out.linear")  # BFL (shift, scale) vs diffusers (scale, shift)


def _suffixed(name: str, sd: Mapping, prefix: str):
    """(suffix, key) for `name.weight` / `name.bias` (or `name` itself for norm scales) present in sd."""
    if name.endswith((".scale", ".weight")) and prefix + name in sd:
        yield "", prefix + name
        return
    for suffix in (".weight", ".bias"):
        if prefix + name + suffix in sd:
            yield suffix, prefix + name + suffix


def bfl_to_diffusers(sd: Mapping, prefix: str = "", hidden: int | None = None) -> dict[str, torch.Tensor]:
    """A diffusers state dict from the BFL-layout tensors under `prefix` (every key there must be used). `hidden`
    (the model width) lets a partial dict convert, e.g. a LoRA's weight deltas."""
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        used.add(key)
        return sd[key]

    for bfl, ours in _RENAMED.items():
        for suffix, key in _suffixed(bfl, sd, prefix):
            out[ours + suffix] = take(key)
    for suffix, key in _suffixed(_FINAL_MOD[0], sd, prefix):
        out[_FINAL_MOD[1] + suffix] = swap_halves(take(key))
    hidden = hidden or sd[prefix + "img_in.weight"].shape[0]
    for i in block_ids(sd, prefix + "double_blocks."):
        src, dst = f"{prefix}double_blocks.{i}.", f"transformer_blocks.{i}."
        for bfl, ours in _DOUBLE.items():
            for suffix, key in _suffixed(bfl, sd, src):
                out[dst + ours + (suffix if not ours.endswith(".weight") else "")] = take(key)
        for bfl, names in _DOUBLE_QKV.items():
            for suffix, key in _suffixed(bfl, sd, src):
                for name, part in zip(names, take(key).split(hidden, dim=0)):
                    out[dst + name + suffix] = part
    for i in block_ids(sd, prefix + "single_blocks."):
        src, dst = f"{prefix}single_blocks.{i}.", f"single_transformer_blocks.{i}."
        for bfl, ours in _SINGLE.items():
            for suffix, key in _suffixed(bfl, sd, src):
                out[dst + ours + (suffix if not ours.endswith(".weight") else "")] = take(key)
        for suffix, key in _suffixed("linear1", sd, src):
            fused = take(key)
            sizes = [hidden, hidden, hidden, fused.shape[0] - 3 * hidden]
            for name, part in zip(_SINGLE_FUSED, fused.split(sizes, dim=0)):
                out[dst + name + suffix] = part
    left = [k for k in sd if k.startswith(prefix) and k not in used]
    if left:
        raise KeyError(f"Flux tensors this converter does not know: {', '.join(left[:5])}")
    return out


def diffusers_to_bfl(sd: Mapping, prefix: str = "") -> dict[str, torch.Tensor]:
    """The BFL-layout state dict (under `prefix`) of a diffusers Flux transformer's state dict."""
    out: dict[str, torch.Tensor] = {}

    def renamed(src: str, dst: str, table: dict) -> None:
        for bfl, ours in table.items():
            for suffix in ("",) if ours.endswith(".weight") else (".weight", ".bias"):  # norm scales have no bias
                if src + ours + suffix in sd:
                    out[dst + bfl + suffix] = sd[src + ours + suffix]

    def fused(src: str, dst: str, names: tuple[str, ...]) -> None:
        for suffix in (".weight", ".bias"):
            if src + names[0] + suffix in sd:
                out[dst + suffix] = torch.cat([sd[src + n + suffix] for n in names], dim=0)

    renamed("", prefix, _RENAMED)
    for suffix in (".weight", ".bias"):
        if _FINAL_MOD[1] + suffix in sd:
            out[prefix + _FINAL_MOD[0] + suffix] = swap_halves(sd[_FINAL_MOD[1] + suffix])
    for i in block_ids(sd, "transformer_blocks."):
        src, dst = f"transformer_blocks.{i}.", f"{prefix}double_blocks.{i}."
        renamed(src, dst, _DOUBLE)
        for bfl, names in _DOUBLE_QKV.items():
            fused(src, dst + bfl, names)
    for i in block_ids(sd, "single_transformer_blocks."):
        src, dst = f"single_transformer_blocks.{i}.", f"{prefix}single_blocks.{i}."
        renamed(src, dst, _SINGLE)
        fused(src, dst + "linear1", _SINGLE_FUSED)
    return out

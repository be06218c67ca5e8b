"""SD3 / SD3.5 ControlNets: a few MMDiT blocks whose outputs are added to the transformer's blocks.

Two kinds users have:
- InstantX's for SD3 Medium (canny, pose, tile; diffusers layout): their own patch embedding and text stream, and
  a zero pooled projection (diffusers' `force_zeros_for_pooled_projection`); the map's latents without the VAE's
  shift;
- Stability's for SD3.5 Large (blur, canny, depth): blocks without a text stream that read the transformer's own
  patch embedding (diffusers' `use_pos_embed=False`), in Stability's key names (`attn.qkv`, `mlp.fc1`,
  `adaLN_modulation.1`), converted here; the map's latents with the VAE's shift.

Config from the shapes (attention head width 64, as every SD3 release; a folder's config.json wins). In the loop
the SD3Denoiser runs them on the transformer's inputs, as StableDiffusion3ControlNetPipeline does.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from modules.controlnet.detect import ControlNetSpec, _indices, _shape

HEAD_DIM = 64  # every SD3 / SD3.5 release; a ControlNet without q/k norms does not show it


def is_sd3_controlnet(sd: Mapping) -> bool:
    return "pos_embed_input.proj.weight" in sd and "controlnet_blocks.0.weight" in sd and any(
        k.startswith("transformer_blocks.") for k in sd)


def to_diffusers(sd: Mapping) -> dict:
    """Diffusers' SD3ControlNetModel layout from either release layout (Stability's names are per block)."""
    out = {}
    for key, value in sd.items():
        if not key.startswith("transformer_blocks."):
            out[key] = value
            continue
        block, _, rest = key.removeprefix("transformer_blocks.").partition(".")
        prefix = f"transformer_blocks.{block}."
        if rest.startswith("attn.qkv."):
            for name, part in zip(("to_q", "to_k", "to_v"), torch.chunk(value, 3, dim=0)):
                out[prefix + f"attn.{name}." + rest.rsplit(".", 1)[1]] = part
            continue
        renamed = {"attn.proj.": "attn.to_out.0.", "mlp.fc1.": "ff.net.0.proj.", "mlp.fc2.": "ff.net.2.",
                   "adaLN_modulation.1.": "norm1.linear."}
        for old, new in renamed.items():
            if rest.startswith(old):
                rest = new + rest.removeprefix(old)
                break
        out[prefix + rest] = value
    return out


def spec(sd: Mapping, transformer_config=None) -> ControlNetSpec:
    """The SD3ControlNetModel config of a diffusers-layout state dict."""
    inner, cond_channels, patch, _ = _shape(sd, "pos_embed_input.proj.weight")
    own_embedding = "pos_embed.proj.weight" in sd
    in_channels = _shape(sd, "pos_embed.proj.weight")[1] if own_embedding else 16
    head_dim = _shape(sd, "transformer_blocks.0.attn.norm_q.weight")[0] \
        if "transformer_blocks.0.attn.norm_q.weight" in sd else HEAD_DIM
    text = "context_embedder.weight" in sd
    max_size = None
    if "pos_embed.pos_embed" in sd:
        max_size = round(_shape(sd, "pos_embed.pos_embed")[1] ** 0.5)
    elif transformer_config is not None:
        max_size = transformer_config.get("pos_embed_max_size") if isinstance(transformer_config, dict) else \
            getattr(transformer_config, "pos_embed_max_size", None)
    layers = _indices(sd, "transformer_blocks.")
    config = {
        "sample_size": max_size or 128, "patch_size": patch, "in_channels": in_channels, "out_channels": in_channels,
        "num_layers": len(layers), "attention_head_dim": head_dim, "num_attention_heads": inner // head_dim,
        "joint_attention_dim": _shape(sd, "context_embedder.weight")[1] if text else None,
        "caption_projection_dim": _shape(sd, "context_embedder.weight")[0] if text else inner,
        "pooled_projection_dim": _shape(sd, "time_text_embed.text_embedder.linear_1.weight")[1],
        "pos_embed_max_size": max_size, "extra_conditioning_channels": cond_channels - in_channels,
        "dual_attention_layers": tuple(i for i in layers if f"transformer_blocks.{i}.attn2.to_q.weight" in sd),
        "qk_norm": "rms_norm" if "transformer_blocks.0.attn.norm_q.weight" in sd else None,
        "pos_embed_type": "sincos" if own_embedding else None, "use_pos_embed": own_embedding,
        # InstantX's (with a text stream) were trained with a zero pooled projection; Stability's were not
        "force_zeros_for_pooled_projection": text,
    }
    return ControlNetSpec(kind="sd3", config=config, family="sd3")


def fit_to(net, transformer) -> str | None:
    """Ready `net` to guide `transformer`: a ControlNet without its own patch embedding takes the transformer's (as
    the pipeline does). Returns why it cannot guide it (another SD3 size), else None."""
    if net.config.num_attention_heads * net.config.attention_head_dim != transformer.inner_dim:
        return (f"it is {net.config.num_attention_heads * net.config.attention_head_dim} wide and this "
                f"checkpoint's transformer {transformer.inner_dim} (made for another SD3 size)")
    if not net.config.use_pos_embed:
        param = next(net.parameters())
        net.pos_embed = net._get_pos_embed_from_transformer(transformer).to(device=param.device, dtype=param.dtype)
    return None

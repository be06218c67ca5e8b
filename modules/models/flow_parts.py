"""Find the parts of a Flux/SD3 model (VAE, CLIP-L, CLIP-G, T5-XXL) in the files users have, and their configs.

A part may sit inside an all-in-one checkpoint (ComfyUI/Forge layout: `text_encoders.clip_l.transformer.*`,
`vae.*` or `first_stage_model.*`) or in its own file (`models/text_encoder/clip_l.safetensors`, `t5xxl_fp16…`,
`models/VAE/ae.safetensors`, HF layouts `text_model.*` / `encoder.block.*`). Each part comes out as a state dict
in the layout its diffusers/transformers class loads, with a config read from its shapes; only what shapes cannot
tell (CLIP activation, T5 buckets and epsilon) comes from the templates.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Mapping

import torch

from modules.models import detect as detect_mod
from modules.models.key_layout import block_ids

TEXT_ENCODER_PREFIXES = {  # role → where ComfyUI/Forge/Stability all-in-one files keep it
    "clip_l": ("text_encoders.clip_l.transformer.",),
    "clip_g": ("text_encoders.clip_g.transformer.",),
    "t5": ("text_encoders.t5xxl.transformer.", "text_encoders.t5xxl."),
}
ROLE_LABELS = {"clip_l": "CLIP-L", "clip_g": "CLIP-G", "t5": "T5-XXL", "vae": "VAE"}
ROLE_FILES = {"clip_l": "clip_l.safetensors", "clip_g": "clip_g.safetensors", "t5": "t5xxl_fp16.safetensors",
              "vae": "ae.safetensors"}


@dataclass
class Part:
    """One component's tensors, ready for its class, and its config."""

    role: str  # "clip_l", "clip_g", "t5" or "vae"
    state_dict: dict
    config: dict
    source: str  # the file it came from (for messages)


def _shape(sd: Mapping, key: str) -> tuple[int, ...]:
    return tuple(sd[key].shape)


def _sub(sd: Mapping, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


# ---------------------------------------------------------------------------------------------------------------
# Text encoders


def _clip_hf(sd: Mapping) -> dict | None:
    """A CLIP text encoder in transformers' layout (`text_model.*`), or None."""
    if "text_model.embeddings.token_embedding.weight" in sd:
        return dict(sd)
    if "embeddings.token_embedding.weight" in sd:  # saved by a flattened CLIPTextModel
        return {("text_model." + k if not k.startswith("text_projection") else k): v for k, v in sd.items()}
    return None


def clip_config(sd: Mapping, role: str) -> dict:
    """CLIPTextModel(WithProjection) config from a `text_model.*` state dict; activation from the role."""
    p = "text_model."
    vocab, hidden = _shape(sd, p + "embeddings.token_embedding.weight")
    template = detect_mod.load_template("sd1", "text_encoder") if role == "clip_l" else \
        detect_mod.load_template("sdxl", "text_encoder_2")
    cfg = copy.deepcopy(template)
    cfg.update(vocab_size=vocab, hidden_size=hidden,
               max_position_embeddings=_shape(sd, p + "embeddings.position_embedding.weight")[0],
               num_hidden_layers=len(block_ids(sd, p + "encoder.layers.")),
               intermediate_size=_shape(sd, p + "encoder.layers.0.mlp.fc1.weight")[0],
               num_attention_heads=max(1, hidden // 64))
    if "text_projection.weight" in sd:
        cfg["projection_dim"] = _shape(sd, "text_projection.weight")[0]
        cfg["_class_name"] = "CLIPTextModelWithProjection"
    else:
        cfg["_class_name"] = "CLIPTextModel"
    return cfg


def _t5_hf(sd: Mapping) -> dict | None:
    if "encoder.block.0.layer.0.SelfAttention.q.weight" not in sd:
        return None
    out = dict(sd)
    if "shared.weight" not in out and "encoder.embed_tokens.weight" in out:
        out["shared.weight"] = out["encoder.embed_tokens.weight"]
    out.setdefault("encoder.embed_tokens.weight", out.get("shared.weight"))
    return out


def t5_config(sd: Mapping) -> dict:
    """T5EncoderModel config from its tensors (v1.1 gated-GELU when `wi_0` is there)."""
    cfg = detect_mod.load_template_file("t5xxl/config.json")
    vocab, d_model = _shape(sd, "shared.weight")
    buckets, heads = _shape(sd, "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in sd
    d_ff = _shape(sd, "encoder.block.0.layer.1.DenseReluDense." + ("wi_0" if gated else "wi") + ".weight")[0]
    cfg.update(vocab_size=vocab, d_model=d_model, num_heads=heads, relative_attention_num_buckets=buckets,
               d_kv=_shape(sd, "encoder.block.0.layer.0.SelfAttention.q.weight")[0] // heads, d_ff=d_ff,
               num_layers=len(block_ids(sd, "encoder.block.")),
               feed_forward_proj="gated-gelu" if gated else "relu")
    return cfg


def text_encoder_roles(sd: Mapping) -> dict[str, str]:
    """role → prefix of every text encoder an all-in-one file carries."""
    found = {}
    for role, prefixes in TEXT_ENCODER_PREFIXES.items():
        for prefix in prefixes:
            if any(k.startswith(prefix) for k in sd):
                found[role] = prefix
                break
    return found


def text_encoder_part(sd: Mapping, role: str, prefix: str, source: str) -> Part:
    """The text encoder `role` under `prefix` of `sd` (all-in-one file, or a standalone file with prefix "")."""
    sub = _sub(sd, prefix) if prefix else dict(sd)
    if role == "t5":
        t5 = _t5_hf(sub)
        if t5 is None:
            raise ValueError(f"{source}: no T5 encoder tensors (encoder.block.0…) under {prefix or 'the top level'}")
        return Part(role, t5, t5_config(t5), source)
    clip = _clip_hf(sub)
    if clip is None:
        raise ValueError(f"{source}: no CLIP text encoder tensors (text_model.…) under {prefix or 'the top level'}")
    return Part(role, clip, clip_config(clip, role), source)


def classify_text_encoder(sd: Mapping) -> str | None:
    """What a standalone text-encoder file holds: "t5", "clip_l", "clip_g", or None (from its shapes: CLIP-G is
    the wide one with a projection; a CLIP narrower than 1024 is CLIP-L)."""
    if _t5_hf(sd) is not None:
        return "t5"
    clip = _clip_hf(sd)
    if clip is None:
        return None
    hidden = _shape(clip, "text_model.embeddings.token_embedding.weight")[1]
    return "clip_g" if hidden >= 1024 else "clip_l"


def clip_width(part: Part) -> int:
    return int(part.config["hidden_size"])


# ---------------------------------------------------------------------------------------------------------------
# VAE


def vae_part(sd: Mapping, family: str, source: str) -> Part | None:
    """The 16-channel VAE in `sd` (LDM layout under `vae.`/`first_stage_model.`/none, or diffusers layout), with
    the family's scale/shift (not in any tensor)."""
    template = detect_mod.load_template(family, "vae")
    prefix = detect_mod.vae_prefix(sd)
    if prefix is not None:
        config = detect_mod.vae_config_from_ldm(sd, template, prefix)
        sub = _sub(sd, prefix) if prefix else dict(sd)
        config["use_quant_conv"] = "quant_conv.weight" in sub
        config["use_post_quant_conv"] = "post_quant_conv.weight" in sub
        return Part("vae", sub, config, source)
    if "encoder.conv_in.weight" in sd or "encoder.down_blocks.0.resnets.0.conv1.weight" in sd:
        config = copy.deepcopy(template)
        levels = block_ids(sd, "encoder.down_blocks.")
        config["block_out_channels"] = [_shape(sd, f"encoder.down_blocks.{i}.resnets.0.conv1.weight")[0]
                                        for i in levels]
        config["down_block_types"] = ["DownEncoderBlock2D"] * len(levels)
        config["up_block_types"] = ["UpDecoderBlock2D"] * len(levels)
        config["layers_per_block"] = len(block_ids(sd, "encoder.down_blocks.0.resnets."))
        config["latent_channels"] = _shape(sd, "decoder.conv_in.weight")[1]
        config["use_quant_conv"] = "quant_conv.weight" in sd
        config["use_post_quant_conv"] = "post_quant_conv.weight" in sd
        return Part("vae", dict(sd), config, source)
    return None


def is_flow_vae(sd: Mapping) -> bool:
    """A 16-channel VAE (Flux's ae.safetensors, SD3's), any layout."""
    for key in ("decoder.conv_in.weight", "vae.decoder.conv_in.weight", "first_stage_model.decoder.conv_in.weight"):
        if key in sd:
            return _shape(sd, key)[1] == 16
    return False


def cast_floating(sd: Mapping, dtype: torch.dtype) -> dict:
    return {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in sd.items()}

"""Flux.1 and SD3/SD3.5 transformers are told apart from their own tensor shapes, at the released sizes, without
real weights: full-size models are built on the `meta` device (no memory) and their key→shape manifests detected."""
from __future__ import annotations

import pytest
import torch

from modules.models.detect import UnsupportedModelError, detect
from modules.models.detect_flow import detect_flow_transformer

FLUX = {"patch_size": 1, "in_channels": 64, "out_channels": None, "num_layers": 19, "num_single_layers": 38,
        "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096,
        "pooled_projection_dim": 768, "guidance_embeds": True, "axes_dims_rope": (16, 56, 56)}
SD3 = {"sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 24, "attention_head_dim": 64,
       "num_attention_heads": 24, "joint_attention_dim": 4096, "caption_projection_dim": 1536,
       "pooled_projection_dim": 2048, "out_channels": 16, "pos_embed_max_size": 192, "dual_attention_layers": (),
       "qk_norm": None}
RELEASES = {  # the released configs (their model_index/transformer config.json), by what users call them
    "Flux.1 dev": ("flux", FLUX),
    "Flux.1 schnell": ("flux", {**FLUX, "guidance_embeds": False}),
    "Flux.1 Fill": ("flux", {**FLUX, "in_channels": 384, "out_channels": 64}),
    "Flux.1 Depth": ("flux", {**FLUX, "in_channels": 128, "out_channels": 64}),
    "SD3 Medium": ("sd3", SD3),
    "SD3.5 Medium": ("sd3", {**SD3, "pos_embed_max_size": 384, "dual_attention_layers": tuple(range(13)),
                             "qk_norm": "rms_norm"}),
    "SD3.5 Large": ("sd3", {**SD3, "num_layers": 38, "num_attention_heads": 38, "caption_projection_dim": 2432,
                            "qk_norm": "rms_norm"}),
}


def meta_manifest(family: str, config: dict) -> dict:
    """The diffusers-layout state dict of a full-size model, as shapes only."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    cls = FluxTransformer2DModel if family == "flux" else SD3Transformer2DModel
    with torch.device("meta"):
        model = cls(**config)
    return dict(model.state_dict())


def bfl_manifest(config: dict) -> dict:
    """Black Forest Labs' key layout of a Flux transformer (the keys and shapes a BFL file has for what is detected,
    and every block)."""
    hidden = config["attention_head_dim"] * config["num_attention_heads"]
    out = config["out_channels"] or config["in_channels"]
    t = lambda *shape: torch.empty(shape, device="meta")  # noqa: E731
    sd = {"img_in.weight": t(hidden, config["in_channels"]), "txt_in.weight": t(hidden, config["joint_attention_dim"]),
          "time_in.in_layer.weight": t(hidden, 256), "vector_in.in_layer.weight": t(hidden, config["pooled_projection_dim"]),
          "final_layer.linear.weight": t(out, hidden)}
    if config["guidance_embeds"]:
        sd["guidance_in.in_layer.weight"] = t(hidden, 256)
    for i in range(config["num_layers"]):
        sd[f"double_blocks.{i}.img_attn.qkv.weight"] = t(3 * hidden, hidden)
        sd[f"double_blocks.{i}.img_attn.norm.query_norm.scale"] = t(config["attention_head_dim"])
    for i in range(config["num_single_layers"]):
        sd[f"single_blocks.{i}.linear1.weight"] = t(3 * hidden + 4 * hidden, hidden)
    return sd


def sai_manifest(config: dict) -> dict:
    """Stability's key layout of an SD3/SD3.5 transformer (what is detected, and every block)."""
    hidden = config["attention_head_dim"] * config["num_attention_heads"]
    p = config["patch_size"]
    t = lambda *shape: torch.empty(shape, device="meta")  # noqa: E731
    sd = {"x_embedder.proj.weight": t(hidden, config["in_channels"], p, p),
          "pos_embed": t(1, config["pos_embed_max_size"] ** 2, hidden),
          "context_embedder.weight": t(hidden, config["joint_attention_dim"]),
          "y_embedder.mlp.0.weight": t(hidden, config["pooled_projection_dim"]),
          "final_layer.linear.weight": t(p * p * config["out_channels"], hidden)}
    for i in range(config["num_layers"]):
        sd[f"joint_blocks.{i}.x_block.attn.qkv.weight"] = t(3 * hidden, hidden)
        if config["qk_norm"]:
            sd[f"joint_blocks.{i}.x_block.attn.ln_q.weight"] = t(config["attention_head_dim"])
        if i in config["dual_attention_layers"]:
            sd[f"joint_blocks.{i}.x_block.attn2.qkv.weight"] = t(3 * hidden, hidden)
    return sd


def expected(config: dict, family: str) -> dict:
    out = dict(config)
    if family == "flux" and out["out_channels"] == out["in_channels"]:
        out["out_channels"] = None
    return out


@pytest.mark.parametrize("variant", list(RELEASES))
def test_diffusers_layout_at_full_size(variant):
    family, config = RELEASES[variant]
    spec = detect_flow_transformer(meta_manifest(family, config))
    assert (spec.family, spec.variant, spec.layout, spec.prefix) == (family, variant, "diffusers", "")
    assert spec.config == expected(config, family)


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
@pytest.mark.parametrize("variant", list(RELEASES))
def test_bfl_and_sai_layouts_with_or_without_comfyui_prefix(variant, prefix):
    family, config = RELEASES[variant]
    manifest = bfl_manifest(config) if family == "flux" else sai_manifest(config)
    spec = detect_flow_transformer({prefix + k: v for k, v in manifest.items()})
    assert (spec.family, spec.variant, spec.layout, spec.prefix) == (family, variant,
                                                                     "bfl" if family == "flux" else "sai", prefix)
    assert spec.config == expected(config, family)


def test_sd_checkpoints_are_not_flow_transformers(tiny_models):
    from safetensors import safe_open

    with safe_open(str(tiny_models.path("sdxl.safetensors")), "pt") as f:
        assert detect_flow_transformer({k: f.get_slice(k) for k in f.keys()}) is None


def test_the_models_spec_names_the_release_at_full_size():
    """What the Models tab shows for a full-size file (header shapes only): the release, with no parts carried."""
    manifest = {"model.diffusion_model." + k: v for k, v in bfl_manifest(RELEASES["Flux.1 schnell"][1]).items()}
    spec = detect(manifest, "flux1-schnell")
    assert (spec.label, spec.family, spec.is_flow, spec.text_encoders) == ("Flux.1 schnell", "flux", True, {})
    assert spec.defaults["t5_max_length"] == 256 and spec.scheduler["shift"] == 1.0

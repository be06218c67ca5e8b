"""Tiny random-weight Flux.1 and SD3/SD3.5 models of the real architectures, written in the layouts users have.

Widths follow the families' conventions where the loader reads them (CLIP: 64-wide heads; SD3 without q/k norms:
64-wide heads; Flux: rope axes in Flux.1's proportions), so that detection runs exactly as for a full-size file.
Layouts: ComfyUI/Forge all-in-one (`model.diffusion_model.` + `vae.` + `text_encoders.*.transformer.`), transformer
only (BFL / Stability / diffusers), the separate part files of `models/text_encoder` and `models/VAE`, and a
diffusers folder.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel, SD3Transformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from modules.models.flux_keys import diffusers_to_bfl
from modules.models.ldm_export import _text_model_state_dict, vae_to_ldm
from modules.models.sd3_keys import diffusers_to_sai

_TOKEN_IDS = dict(bos_token_id=0, eos_token_id=2, pad_token_id=1)
_SCALE = {"flux": (0.3611, 0.1159), "sd3": (1.5305, 0.0609)}


def _clip(hidden: int, act: str, projection: bool):
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=2 * hidden,
                              num_attention_heads=hidden // 64, num_hidden_layers=2, max_position_embeddings=77,
                              hidden_act=act, projection_dim=hidden, **_TOKEN_IDS))


def _t5(d_model: int) -> T5EncoderModel:
    return T5EncoderModel(T5Config(vocab_size=32128, d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2,
                                   num_heads=d_model // 8, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
                                   relative_attention_num_buckets=32, tie_word_embeddings=False))


def _vae(family: str) -> AutoencoderKL:
    scale, shift = _SCALE[family]
    return AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(32, 32),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         layers_per_block=1, latent_channels=16, norm_num_groups=32, sample_size=32,
                         scaling_factor=scale, shift_factor=shift, use_quant_conv=False, use_post_quant_conv=False)


def build_flux(guidance: bool = True, seed: int = 0, fill: bool = False, depth: bool = False) -> dict:
    """Flux.1 dev (guidance embedder) or schnell, Fill (its input also takes the masked picture's packed latents
    and the packed pixel mask: 64 + 64 + 4·2² with this 2× VAE) or Depth/Canny (the control image's packed latents:
    64 + 64): transformer, VAE, CLIP-L, T5 (diffusers' names)."""
    torch.manual_seed(seed)
    in_channels = 64 + 64 + 16 if fill else 128 if depth else 64
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=in_channels, out_channels=64 if fill or depth else None, num_layers=1,
        num_single_layers=1, attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
        pooled_projection_dim=64, guidance_embeds=guidance, axes_dims_rope=(4, 6, 6))
    return {"transformer": transformer.eval(), "vae": _vae("flux").eval(),
            "text_encoder": _clip(64, "quick_gelu", False).eval(), "text_encoder_2": _t5(32).eval()}


def build_sd3(medium35: bool = False, seed: int = 0, large35: bool = False) -> dict:
    """SD3 Medium, SD3.5 Medium (q/k norms and dual-attention blocks) or SD3.5 Large-like (q/k norms only):
    transformer, VAE, CLIP-L, CLIP-G, T5."""
    torch.manual_seed(seed)
    extra = dict(qk_norm="rms_norm", dual_attention_layers=(0,)) if medium35 else {}
    if large35:
        extra = dict(qk_norm="rms_norm")
    transformer = SD3Transformer2DModel(
        sample_size=32, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=64, num_attention_heads=1,
        joint_attention_dim=192, caption_projection_dim=64, pooled_projection_dim=192, out_channels=16,
        pos_embed_max_size=32, **extra)
    return {"transformer": transformer.eval(), "vae": _vae("sd3").eval(),
            "text_encoder": _clip(64, "quick_gelu", True).eval(), "text_encoder_2": _clip(128, "gelu", True).eval(),
            "text_encoder_3": _t5(192).eval()}


def family_of(components: dict) -> str:
    return "flux" if isinstance(components["transformer"], FluxTransformer2DModel) else "sd3"


def transformer_state_dict(components: dict, layout: str, prefix: str = "") -> dict[str, torch.Tensor]:
    sd = components["transformer"].state_dict()
    if layout == "bfl":
        return diffusers_to_bfl(sd, prefix)
    if layout == "sai":
        return diffusers_to_sai(sd, prefix)
    return {prefix + k: v for k, v in sd.items()}


def part_state_dicts(components: dict) -> dict[str, dict[str, torch.Tensor]]:
    """role → the tensors of each separate part file (HF layouts; the VAE in BFL's ae.safetensors layout)."""
    parts = {"vae": vae_to_ldm(components["vae"]), "clip_l": _text_model_state_dict(components["text_encoder"])}
    if family_of(components) == "flux":
        parts["t5"] = components["text_encoder_2"].state_dict()
    else:
        parts["clip_g"] = _text_model_state_dict(components["text_encoder_2"])
        parts["t5"] = components["text_encoder_3"].state_dict()
    parts["t5"] = {k: v for k, v in parts["t5"].items() if k != "encoder.embed_tokens.weight"}  # tied: not stored
    return parts


def _save(sd: dict, path: Path, dtype: torch.dtype | None = None) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
               for k, v in sd.items()}, str(path))
    return path


def write_all_in_one(components: dict, path, layout: str | None = None, dtype: torch.dtype | None = None) -> Path:
    """ComfyUI/Forge's all-in-one checkpoint (`model.diffusion_model.*`, `vae.*`, `text_encoders.*`)."""
    layout = layout or ("bfl" if family_of(components) == "flux" else "sai")
    sd = transformer_state_dict(components, layout, "model.diffusion_model.")
    parts = part_state_dicts(components)
    sd.update({"vae." + k: v for k, v in parts.pop("vae").items()})
    names = {"clip_l": "clip_l", "clip_g": "clip_g", "t5": "t5xxl"}
    for role, part in parts.items():
        sd.update({f"text_encoders.{names[role]}.transformer.{k}": v for k, v in part.items()})
    return _save(sd, Path(path), dtype)


def write_transformer_only(components: dict, path, layout: str, dtype: torch.dtype | None = None) -> Path:
    return _save(transformer_state_dict(components, layout), Path(path), dtype)


def write_parts(components: dict, models_dir, t5_name: str = "t5xxl_fp16.safetensors") -> dict[str, Path]:
    """clip_l / clip_g / T5 into models/text_encoder, the VAE as models/VAE/ae.safetensors."""
    models_dir = Path(models_dir)
    names = {"clip_l": "clip_l.safetensors", "clip_g": "clip_g.safetensors", "t5": t5_name}
    out = {}
    for role, sd in part_state_dicts(components).items():
        where = models_dir / "VAE" / "ae.safetensors" if role == "vae" else models_dir / "text_encoder" / names[role]
        out[role] = _save(sd, where)
    return out


def scheduler_config(components: dict) -> dict:
    from modules.models.detect_flow import detect_flow_transformer
    from modules.models.flow_spec import variant_defaults

    return variant_defaults(detect_flow_transformer(components["transformer"].state_dict()))[0]


def write_diffusers_folder(components: dict, path) -> Path:
    from diffusers import FlowMatchEulerDiscreteScheduler

    import diffusers

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    family = family_of(components)
    index = {"_class_name": "FluxPipeline" if family == "flux" else "StableDiffusion3Pipeline",
             "_diffusers_version": diffusers.__version__}
    for name, model in components.items():
        model.save_pretrained(path / name)
        index[name] = ["diffusers" if name in ("transformer", "vae") else "transformers", type(model).__name__]
    FlowMatchEulerDiscreteScheduler.from_config(scheduler_config(components)).save_pretrained(path / "scheduler")
    index["scheduler"] = ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    (path / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return path


def write_gguf(components: dict, path, quant: str = "Q8_0") -> Path:
    """A transformer-only GGUF file as city96's converter writes them (BFL/Stability names, no prefix): 2-D weights
    whose rows fit the block size in `quant`, the rest F32."""
    import gguf
    from gguf import quants

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    family = family_of(components)
    qtype = gguf.GGMLQuantizationType[quant]
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    writer = gguf.GGUFWriter(str(path), arch=family)
    for name, tensor in transformer_state_dict(components, "bfl" if family == "flux" else "sai").items():
        data = tensor.float().numpy()
        if data.ndim == 2 and name.endswith(".weight") and data.shape[-1] % block == 0:
            writer.add_tensor(name, quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path

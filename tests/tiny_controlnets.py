"""Tiny random-weight ControlNets of the real architecture (`ControlNetModel.from_unet` on the tiny UNets), written
in the layouts users have: lllyasviel's original (`control_model.*`), a diffusers single file, a diffusers folder."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

EMBED = (8, 16, 16, 32)  # four widths: the original layout's hint block is then input_hint_block.0 ... .14


def build_controlnet(unet, seed: int, union: bool = False):
    """A ControlNet copied from `unet` (as training starts), with every zero-initialised conv given weights so it
    visibly guides."""
    from diffusers import ControlNetModel, ControlNetUnionModel

    torch.manual_seed(seed)
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=EMBED)
    if union:  # the Union's control-type transformer is as wide as the first block (320 in the real SDXL one)
        width = unet.config.block_out_channels[0]
        config = {k: v for k, v in net.config.items() if not k.startswith("_")}
        shared = net.state_dict()
        net = ControlNetUnionModel.from_config({**config, "num_trans_channel": width, "num_proj_channel": width,
                                                "num_trans_head": 8})
        net.load_state_dict({k: v for k, v in shared.items() if k in net.state_dict()}, strict=False)
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.2)
    return net.eval()


def original_state_dict(net, unet, prefix: str = "control_model.") -> dict[str, torch.Tensor]:
    """The ControlNet in the original (cldm) layout, built from the UNet exporter plus the control-only parts."""
    from diffusers import UNet2DConditionModel

    from modules.models.ldm_export import unet_to_ldm

    shaped = UNet2DConditionModel.from_config(unet.config)
    shaped.load_state_dict(net.state_dict(), strict=False)  # the shared trunk: conv_in, time/add embeddings, down, mid
    trunk = unet_to_ldm(shaped)
    out = {k: v for k, v in trunk.items()
           if k.startswith(("input_blocks.", "middle_block.", "time_embed.", "label_emb."))}
    sd = net.state_dict()
    for i in range(len([k for k in sd if k.startswith("controlnet_down_blocks.") and k.endswith(".weight")])):
        out[f"zero_convs.{i}.0.weight"] = sd[f"controlnet_down_blocks.{i}.weight"]
        out[f"zero_convs.{i}.0.bias"] = sd[f"controlnet_down_blocks.{i}.bias"]
    out["middle_block_out.0.weight"], out["middle_block_out.0.bias"] = (sd["controlnet_mid_block.weight"],
                                                                          sd["controlnet_mid_block.bias"])
    names = ["conv_in"] + [f"blocks.{j}" for j in range(2 * (len(EMBED) - 1))] + ["conv_out"]
    for index, name in enumerate(names):
        for part in ("weight", "bias"):
            out[f"input_hint_block.{2 * index}.{part}"] = sd[f"controlnet_cond_embedding.{name}.{part}"]
    return {prefix + k: v.detach().clone().contiguous() for k, v in out.items()}


def write_original(net, unet, path: Path, dtype=torch.float16, prefix: str = "control_model.") -> Path:
    sd = {k: v.to(dtype) for k, v in original_state_dict(net, unet, prefix).items()}
    if path.suffix == ".safetensors":
        save_file(sd, str(path))
    else:
        torch.save(sd, str(path))
    return path


def write_diffusers_file(net, path: Path, dtype=torch.float16) -> Path:
    save_file({k: v.detach().to(dtype).contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


def write_diffusers_folder(net, folder: Path) -> Path:
    net.save_pretrained(str(folder), safe_serialization=True)
    return folder


def build_t2i_adapter(unet, seed: int, in_channels: int = 3, xl: bool = False):
    """A T2I-Adapter as wide as the UNet's levels, with weights large enough to guide visibly."""
    from diffusers import T2IAdapter

    torch.manual_seed(seed)
    adapter = T2IAdapter(in_channels=in_channels, channels=list(unet.config.block_out_channels), num_res_blocks=2,
                         downscale_factor=16 if xl else 8, adapter_type="full_adapter_xl" if xl else "full_adapter")
    with torch.no_grad():
        for p in adapter.parameters():
            p.mul_(3.0)
    return adapter.eval()


def t2i_original_state_dict(adapter) -> dict[str, torch.Tensor]:
    """TencentARC's layout (`body.(level * 2 + j).block1`, `body.(level * 2).in_conv`)."""
    out = {}
    for key, value in adapter.state_dict().items():
        key = key.removeprefix("adapter.")
        parts = key.split(".")
        if parts[0] == "body":
            level = int(parts[1])
            if parts[2] == "resnets":
                key = ".".join(["body", str(level * 2 + int(parts[3]))] + parts[4:])
            else:
                key = ".".join(["body", str(level * 2)] + parts[2:])
        out[key] = value.detach().clone().contiguous()
    return out


def control_lora_state_dict(net, unet) -> dict[str, torch.Tensor]:
    """`net` as a Control-LoRA on `unet`: every changed trunk matrix as an exact (full-rank) up/down pair, vectors
    and control-only parts as full tensors, plus the `lora_controlnet` marker."""
    from modules.models.ldm_export import unet_to_ldm

    base = unet_to_ldm(unet)
    out = {"lora_controlnet": torch.tensor([])}
    for key, value in original_state_dict(net, unet, prefix="").items():
        if key in base and value.ndim >= 2:
            delta = (value - base[key]).flatten(1).double()
            u, s, vh = torch.linalg.svd(delta, full_matrices=False)
            stem = key.removesuffix(".weight")
            out[stem + ".up"] = (u * s).float().contiguous()
            out[stem + ".down"] = vh.float().reshape(-1, *value.shape[1:]).contiguous()
        else:
            out[key] = value
    return out


def build_clip_vision(seed: int, width: int = 32, projection: int = 24):
    """A tiny CLIP vision encoder (HF layout) of the kind IP-Adapters read; one head, as its shapes imply."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                              num_attention_heads=1, image_size=32, patch_size=8, projection_dim=projection,
                              hidden_act="gelu")
    return CLIPVisionModelWithProjection(config).eval()


def ip_adapter_state_dict(unet, clip_projection: int, seed: int, tokens: int = 4) -> dict[str, torch.Tensor]:
    """A plain IP-Adapter for `unet` in the released files' layout: `image_proj.proj/norm` and
    `ip_adapter.{1,3,5...}.to_k_ip/to_v_ip` (one pair per cross-attention layer, numbered as the originals)."""
    torch.manual_seed(seed)
    cross = unet.config.cross_attention_dim
    out = {"image_proj.proj.weight": torch.randn(cross * tokens, clip_projection) * 0.3,
           "image_proj.proj.bias": torch.randn(cross * tokens) * 0.1,
           "image_proj.norm.weight": 1 + torch.randn(cross) * 0.1, "image_proj.norm.bias": torch.randn(cross) * 0.1}
    key = 1
    for name, module in unet.named_modules():
        if name.endswith("attn2"):
            hidden = module.to_k.out_features
            out[f"ip_adapter.{key}.to_k_ip.weight"] = torch.randn(hidden, cross) * 0.3
            out[f"ip_adapter.{key}.to_v_ip.weight"] = torch.randn(hidden, cross) * 0.3
            key += 2
    return out


def ip_adapter_plus_state_dict(unet, clip_hidden: int, seed: int, dim: int = 64, tokens: int = 4):
    """An IP-Adapter "plus" (resampler over the encoder's penultimate hidden states) in the released files'
    layout: `image_proj.latents/proj_in/proj_out/norm_out/layers.{0..3}.{0,1}.*` and the per-layer k/v."""
    torch.manual_seed(seed)
    cross = unet.config.cross_attention_dim
    proj = {"latents": torch.randn(1, tokens, dim) * 0.5, "proj_in.weight": torch.randn(dim, clip_hidden) * 0.2,
            "proj_in.bias": torch.zeros(dim), "proj_out.weight": torch.randn(cross, dim) * 0.2,
            "proj_out.bias": torch.zeros(cross), "norm_out.weight": torch.ones(cross), "norm_out.bias": torch.zeros(cross)}
    for i in range(4):  # the released resamplers' depth (diffusers' converter expects four)
        p = f"layers.{i}."
        proj.update({p + "0.norm1.weight": torch.ones(dim), p + "0.norm1.bias": torch.zeros(dim),
                     p + "0.norm2.weight": torch.ones(dim), p + "0.norm2.bias": torch.zeros(dim),
                     p + "0.to_q.weight": torch.randn(dim, dim) * 0.1, p + "0.to_kv.weight": torch.randn(2 * dim, dim) * 0.1,
                     p + "0.to_out.weight": torch.randn(dim, dim) * 0.1, p + "1.0.weight": torch.ones(dim),
                     p + "1.0.bias": torch.zeros(dim), p + "1.1.weight": torch.randn(4 * dim, dim) * 0.1,
                     p + "1.3.weight": torch.randn(dim, 4 * dim) * 0.1})
    out = {"image_proj." + k: v for k, v in proj.items()}
    layers = {k: v for k, v in ip_adapter_state_dict(unet, 8, seed + 1).items() if k.startswith("ip_adapter.")}
    return {**out, **layers}

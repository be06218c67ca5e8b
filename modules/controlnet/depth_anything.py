"""Depth Anything (v1 and v2) for the depth_anything / depth_anything_v2 preprocessors: the extension's files
(`depth_anything_vitl14.pth`, `depth_anything_v2_vitl.safetensors`, in the original repositories' key names) run
as transformers' DepthAnythingForDepthEstimation, the same network (a DINOv2 ViT and a DPT head).

The ViT size and head widths come from the file's shapes (ViT-S/B/L releases); which transformer blocks feed the
head is the one thing that differs between v1 and v2 and is not in any tensor. Pre- and post-processing are the
extension's (annotator/depth_anything*.py): the picture read as BGR, resized so both sides are at least 518 and
multiples of 14 (bicubic), ImageNet-normalised; the depth resized back (bilinear), min-max scaled to 0-255, grey.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping

import cv2
import numpy as np
import torch

PATCH, SIZE = 14, 518
# (v1/v2, ViT depth) → the blocks (1-based) whose outputs the DPT head reads
OUT_INDICES = {("v1", 12): [9, 10, 11, 12], ("v1", 24): [21, 22, 23, 24],
               ("v2", 12): [3, 6, 9, 12], ("v2", 24): [5, 12, 18, 24]}

# Original name → transformers name (one pattern per line of the original repositories' modules).
_RENAMES = [
    (r"pretrained\.cls_token", "backbone.embeddings.cls_token"),
    (r"pretrained\.mask_token", "backbone.embeddings.mask_token"),
    (r"pretrained\.pos_embed", "backbone.embeddings.position_embeddings"),
    (r"pretrained\.patch_embed\.proj\.", "backbone.embeddings.patch_embeddings.projection."),
    (r"pretrained\.blocks\.(\d+)\.ls(\d)\.gamma", r"backbone.encoder.layer.\1.layer_scale\2.lambda1"),
    (r"pretrained\.blocks\.(\d+)\.(norm\d|mlp\.fc\d)\.", r"backbone.encoder.layer.\1.\2."),
    (r"pretrained\.blocks\.(\d+)\.attn\.proj\.", r"backbone.encoder.layer.\1.attention.o_proj."),
    (r"pretrained\.norm\.", "backbone.layernorm."),
    (r"depth_head\.projects\.(\d)\.", r"neck.reassemble_stage.layers.\1.projection."),
    (r"depth_head\.resize_layers\.(\d)\.", r"neck.reassemble_stage.layers.\1.resize."),
    (r"depth_head\.scratch\.layer(\d)_rn\.", lambda m: f"neck.convs.{int(m[1]) - 1}."),
    (r"depth_head\.scratch\.refinenet(\d)\.out_conv\.", lambda m: f"neck.fusion_stage.layers.{4 - int(m[1])}.projection."),
    (r"depth_head\.scratch\.refinenet(\d)\.resConfUnit(\d)\.conv(\d)\.",
     lambda m: f"neck.fusion_stage.layers.{4 - int(m[1])}.residual_layer{m[2]}.convolution{m[3]}."),
    (r"depth_head\.scratch\.output_conv1\.", "head.conv1."),
    (r"depth_head\.scratch\.output_conv2\.0\.", "head.conv2."),
    (r"depth_head\.scratch\.output_conv2\.2\.", "head.conv3."),
]


def to_transformers(sd: Mapping) -> dict:
    """The original state dict under transformers' names (the fused q/k/v projection split in three)."""
    out = {}
    for key, value in sd.items():
        qkv = re.fullmatch(r"pretrained\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)", key)
        if qkv:
            for name, part in zip(("q_proj", "k_proj", "v_proj"), torch.chunk(value, 3, dim=0)):
                out[f"backbone.encoder.layer.{qkv[1]}.attention.{name}.{qkv[2]}"] = part
            continue
        for pattern, replacement in _RENAMES:
            new, n = re.subn("^" + pattern, replacement, key)
            if n:
                out[new] = value
                break
        else:
            out[key] = value  # left for the strict load to name
    return out


def config(sd: Mapping, version: str):
    """The DepthAnythingConfig the original tensors imply (`version`: "v1" or "v2")."""
    from transformers import DepthAnythingConfig, Dinov2Config

    hidden = sd["pretrained.cls_token"].shape[-1]
    layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("pretrained.blocks."))
    if (version, layers) not in OUT_INDICES:
        raise ValueError(f"a Depth Anything {version} with a {layers}-block ViT (ViT-S/B/L have 12/12/24)")
    tokens = sd["pretrained.pos_embed"].shape[1] - 1
    backbone = Dinov2Config(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=hidden // 64,
        mlp_ratio=sd["pretrained.blocks.0.mlp.fc1.weight"].shape[0] // hidden,
        patch_size=sd["pretrained.patch_embed.proj.weight"].shape[-1], image_size=round(math.sqrt(tokens)) * PATCH,
        out_indices=OUT_INDICES[(version, layers)], apply_layernorm=True, reshape_hidden_states=False)
    return DepthAnythingConfig(
        backbone_config=backbone, reassemble_hidden_size=hidden, patch_size=backbone.patch_size,
        fusion_hidden_size=sd["depth_head.scratch.layer1_rn.weight"].shape[0],
        neck_hidden_sizes=[sd[f"depth_head.projects.{i}.weight"].shape[0] for i in range(4)],
        depth_estimation_type="relative")


def build(version: str):
    """A builder for annotators.build_from: the network of the shapes in the file."""
    def from_shapes(sd: Mapping) -> torch.nn.Module:
        from transformers import DepthAnythingForDepthEstimation

        return DepthAnythingForDepthEstimation(config(sd, version))

    from_shapes.reads_shapes = True
    return from_shapes


def convert(net: torch.nn.Module, sd: Mapping) -> dict:
    return to_transformers(sd)


def _multiple(x: float, minimum: int) -> int:
    """The extension's Resize.constrain_to_multiple_of for "lower_bound"."""
    y = int(np.round(x / PATCH) * PATCH)
    return y if y >= minimum else int(math.ceil(x / PATCH) * PATCH)


def net_input(image: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 → 3xH'xW' float32: BGR order (the extension converts its RGB picture as if it were BGR),
    both sides ≥ 518 and multiples of 14, ImageNet-normalised."""
    x = cv2.cvtColor(image, cv2.COLOR_BGR2RGB) / 255.0
    h, w = x.shape[:2]
    scale = max(SIZE / h, SIZE / w)
    size = (_multiple(scale * w, SIZE), _multiple(scale * h, SIZE))
    x = cv2.resize(x, size, interpolation=cv2.INTER_CUBIC)
    x = (x - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    return np.ascontiguousarray(x.transpose(2, 0, 1)).astype(np.float32)


def depth_map(net, image: np.ndarray) -> np.ndarray:
    """The grey depth map (near = bright) at the picture's size."""
    h, w = image.shape[:2]
    param = next(net.parameters())
    x = torch.from_numpy(net_input(image))[None].to(device=param.device, dtype=param.dtype)
    with torch.no_grad():
        depth = net(pixel_values=x).predicted_depth
    depth = torch.nn.functional.interpolate(depth[None].float(), (h, w), mode="bilinear", align_corners=False)[0, 0]
    depth = (depth - depth.min()) / torch.clamp(depth.max() - depth.min(), min=1e-8) * 255.0
    return depth.cpu().numpy().astype(np.uint8)

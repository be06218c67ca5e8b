"""The ControlNet segmentation preprocessors: seg_ufade20k (UniFormer-S + UPerNet), seg_ofade20k / seg_ofcoco
(OneFormer Swin-L, semantic task) and seg_anime_face (the anime face-parsing U-Net), each reading the user's
released weight file as the extension does and colouring the class map with the palette the extension draws with.

- UniFormer and the mmseg UPerHead are written here in the module layout of the released mmseg checkpoint
  (`backbone.*`, `decode_head.*`; its training-only `auxiliary_head.*` is not built).
- OneFormer is transformers' `OneFormerModel`; the detectron2 checkpoint's keys are renamed to it (the mapping of
  transformers' own conversion script: Swin's fused qkv split, the pixel decoder's and the decoder's names). The
  text encoder the file also holds is only used in training. The task token ("The task is semantic") is tokenized
  with the CLIP BPE vocabulary this program already has (`modules.models.tokenizer`), as OneFormer's tokenizer does.
- The anime face U-Net is torchvision's MobileNetV2 features (built without weights) under a small decoder.

Sizes are read from the file's tensor shapes, so a file of another network is refused by name before any weights
are touched. Where the extension draws with matplotlib (OneFormer's Visualizer outlines each region in off-white
and antialiases its edges), the map here is the flat palette colour of each pixel's class, which is what the
ControlNet segmentation models were trained on.
"""
from __future__ import annotations

import functools
import re

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from modules.controlnet.preprocessors import RunContext, resize_with_pad

# --- palettes (RGB) ---

# ADE20K's 150 classes: mmseg's ADE20KDataset.PALETTE, the same as OneFormer's ADE20K_150_CATEGORIES colours.
ADE20K_PALETTE = np.array([
    [120, 120, 120], [180, 120, 120], [6, 230, 230], [80, 50, 50], [4, 200, 3], [120, 120, 80], [140, 140, 140],
    [204, 5, 255], [230, 230, 230], [4, 250, 7], [224, 5, 255], [235, 255, 7], [150, 5, 61], [120, 120, 70],
    [8, 255, 51], [255, 6, 82], [143, 255, 140], [204, 255, 4], [255, 51, 7], [204, 70, 3], [0, 102, 200],
    [61, 230, 250], [255, 6, 51], [11, 102, 255], [255, 7, 71], [255, 9, 224], [9, 7, 230], [220, 220, 220],
    [255, 9, 92], [112, 9, 255], [8, 255, 214], [7, 255, 224], [255, 184, 6], [10, 255, 71], [255, 41, 10],
    [7, 255, 255], [224, 255, 8], [102, 8, 255], [255, 61, 6], [255, 194, 7], [255, 122, 8], [0, 255, 20],
    [255, 8, 41], [255, 5, 153], [6, 51, 255], [235, 12, 255], [160, 150, 20], [0, 163, 255], [140, 140, 140],
    [250, 10, 15], [20, 255, 0], [31, 255, 0], [255, 31, 0], [255, 224, 0], [153, 255, 0], [0, 0, 255],
    [255, 71, 0], [0, 235, 255], [0, 173, 255], [31, 0, 255], [11, 200, 200], [255, 82, 0], [0, 255, 245],
    [0, 61, 255], [0, 255, 112], [0, 255, 133], [255, 0, 0], [255, 163, 0], [255, 102, 0], [194, 255, 0],
    [0, 143, 255], [51, 255, 0], [0, 82, 255], [0, 255, 41], [0, 255, 173], [10, 0, 255], [173, 255, 0],
    [0, 255, 153], [255, 92, 0], [255, 0, 255], [255, 0, 245], [255, 0, 102], [255, 173, 0], [255, 0, 20],
    [255, 184, 184], [0, 31, 255], [0, 255, 61], [0, 71, 255], [255, 0, 204], [0, 255, 194], [0, 255, 82],
    [0, 10, 255], [0, 112, 255], [51, 0, 255], [0, 194, 255], [0, 122, 255], [0, 255, 163], [255, 153, 0],
    [0, 255, 10], [255, 112, 0], [143, 255, 0], [82, 0, 255], [163, 255, 0], [255, 235, 0], [8, 184, 170],
    [133, 0, 255], [0, 255, 92], [184, 0, 255], [255, 0, 31], [0, 184, 255], [0, 214, 255], [255, 0, 112],
    [92, 255, 0], [0, 224, 255], [112, 224, 255], [70, 184, 160], [163, 0, 255], [153, 0, 255], [71, 255, 0],
    [255, 0, 163], [255, 204, 0], [255, 0, 143], [0, 255, 235], [133, 255, 0], [255, 0, 235], [245, 0, 255],
    [255, 0, 122], [255, 245, 0], [10, 190, 212], [214, 255, 0], [0, 204, 255], [20, 0, 255], [255, 255, 0],
    [0, 153, 255], [0, 41, 255], [0, 255, 204], [41, 0, 255], [41, 255, 0], [173, 0, 255], [0, 245, 255],
    [71, 0, 255], [122, 0, 255], [0, 255, 184], [0, 92, 255], [184, 255, 0], [0, 133, 255], [255, 214, 0],
    [25, 194, 194], [102, 255, 0], [92, 0, 255]], dtype=np.uint8)

# COCO panoptic's 133 classes (80 things, 53 stuff): detectron2's COCO_CATEGORIES colours, OneFormer's stuff_colors.
COCO_PANOPTIC_PALETTE = np.array([
    [220, 20, 60], [119, 11, 32], [0, 0, 142], [0, 0, 230], [106, 0, 228], [0, 60, 100], [0, 80, 100],
    [0, 0, 70], [0, 0, 192], [250, 170, 30], [100, 170, 30], [220, 220, 0], [175, 116, 175], [250, 0, 30],
    [165, 42, 42], [255, 77, 255], [0, 226, 252], [182, 182, 255], [0, 82, 0], [120, 166, 157], [110, 76, 0],
    [174, 57, 255], [199, 100, 0], [72, 0, 118], [255, 179, 240], [0, 125, 92], [209, 0, 151], [188, 208, 182],
    [0, 220, 176], [255, 99, 164], [92, 0, 73], [133, 129, 255], [78, 180, 255], [0, 228, 0], [174, 255, 243],
    [45, 89, 255], [134, 134, 103], [145, 148, 174], [255, 208, 186], [197, 226, 255], [171, 134, 1],
    [109, 63, 54], [207, 138, 255], [151, 0, 95], [9, 80, 61], [84, 105, 51], [74, 65, 105], [166, 196, 102],
    [208, 195, 210], [255, 109, 65], [0, 143, 149], [179, 0, 194], [209, 99, 106], [5, 121, 0], [227, 255, 205],
    [147, 186, 208], [153, 69, 1], [3, 95, 161], [163, 255, 0], [119, 0, 170], [0, 182, 199], [0, 165, 120],
    [183, 130, 88], [95, 32, 0], [130, 114, 135], [110, 129, 133], [166, 74, 118], [219, 142, 185],
    [79, 210, 114], [178, 90, 62], [65, 70, 15], [127, 167, 115], [59, 105, 106], [142, 108, 45], [196, 172, 0],
    [95, 54, 80], [128, 76, 255], [201, 57, 1], [246, 0, 122], [191, 162, 208], [255, 255, 128], [147, 211, 203],
    [150, 100, 100], [168, 171, 172], [146, 112, 198], [210, 170, 100], [92, 136, 89], [218, 88, 184],
    [241, 129, 0], [217, 17, 255], [124, 74, 181], [70, 70, 70], [255, 228, 255], [154, 208, 0], [193, 0, 92],
    [76, 91, 113], [255, 180, 195], [106, 154, 176], [230, 150, 140], [60, 143, 255], [128, 64, 128],
    [92, 82, 55], [254, 212, 124], [73, 77, 174], [255, 160, 98], [255, 255, 255], [104, 84, 109],
    [169, 164, 131], [225, 199, 255], [137, 54, 74], [135, 158, 223], [7, 246, 231], [107, 255, 200],
    [58, 41, 149], [183, 121, 142], [255, 73, 97], [107, 142, 35], [190, 153, 153], [146, 139, 141],
    [70, 130, 180], [134, 199, 156], [209, 226, 140], [96, 36, 108], [96, 96, 96], [64, 170, 64],
    [152, 251, 152], [208, 229, 228], [206, 186, 171], [152, 161, 64], [116, 112, 0], [0, 114, 143],
    [102, 102, 156], [250, 141, 255]], dtype=np.uint8)

# The anime face parser's 7 classes: background, hair, eye, mouth, face, skin, clothes (the extension's PALETTE).
ANIME_FACE_PALETTE = np.array([[255, 255, 0], [0, 0, 255], [255, 0, 0], [255, 255, 255], [0, 255, 0],
                               [0, 255, 255], [255, 0, 255]], dtype=np.uint8)


def colour(classes: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """HxW class indices -> HxWx3 palette colours (an index past the palette is black, as nothing draws it)."""
    lookup = np.zeros((max(len(palette), int(classes.max(initial=0)) + 1), 3), dtype=np.uint8)
    lookup[:len(palette)] = palette
    return lookup[classes]


def _count(sd: dict, pattern: str) -> int:
    """How many consecutive indices `pattern` (with one `{}`) has in the file's keys."""
    n = 0
    while any(k.startswith(pattern.format(n)) for k in sd):
        n += 1
    return n


def _need(sd: dict, key: str, what: str) -> torch.Tensor:
    if key not in sd:
        raise KeyError(f"{key} ({what})")
    return sd[key]


# --- UniFormer-S + UPerNet (seg_ufade20k) ---

class _ConvModule(nn.Sequential):
    """mmcv's ConvModule with BN and ReLU: a bias-free conv, `.conv` and `.bn` in the file."""

    def __init__(self, cin: int, cout: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True)


class _PatchEmbed(nn.Module):
    def __init__(self, cin: int, cout: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(cin, cout, patch, stride=patch)
        self.norm = nn.LayerNorm(cout)

    def forward(self, x):
        x = self.proj(x)
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()


class _ConvBlock(nn.Module):
    """UniFormer's local block (stages 1-2): depthwise position conv, 5x5 depthwise "attention", conv MLP."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.BatchNorm2d(dim)
        self.conv1 = nn.Conv2d(dim, dim, 1)
        self.attn = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.conv2 = nn.Conv2d(dim, dim, 1)
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Conv2d(dim, hidden, 1)
        self.mlp.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x):
        x = x + self.pos_embed(x)
        x = x + self.conv2(self.attn(self.conv1(self.norm1(x))))
        return x + self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))


class _SelfAttentionBlock(nn.Module):
    """UniFormer's global block (stages 3-4): depthwise position conv, then a pre-norm transformer layer."""

    def __init__(self, dim: int, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(dim, dim * 3)
        self.attn.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(dim, hidden)
        self.mlp.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        x = x + self.pos_embed(x)
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        q, k, v = self.attn.qkv(self.norm1(t)).reshape(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h * w, c)
        t = t + self.attn.proj(a)
        t = t + self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(t))))
        return t.transpose(1, 2).reshape(b, c, h, w)


class UniFormer(nn.Module):
    """UniFormer with global attention in stages 3 and 4 (the upernet_global_small config): 4 feature maps at
    1/4 .. 1/32, each through its own LayerNorm (eps 1e-6)."""

    def __init__(self, dims: list[int], layers: list[int], mlp_ratio: float = 4.0, head_dim: int = 64):
        super().__init__()
        cin = 3
        for i, (dim, depth) in enumerate(zip(dims, layers), start=1):
            setattr(self, f"patch_embed{i}", _PatchEmbed(cin, dim, 4 if i == 1 else 2))
            hidden = int(dim * mlp_ratio)
            blocks = [_ConvBlock(dim, hidden) if i <= 2 else _SelfAttentionBlock(dim, hidden, dim // head_dim)
                      for _ in range(depth)]
            setattr(self, f"blocks{i}", nn.ModuleList(blocks))
            setattr(self, f"norm{i}", nn.LayerNorm(dim, eps=1e-6))
            cin = dim

    def forward(self, x):
        out = []
        for i in range(1, 5):
            x = getattr(self, f"patch_embed{i}")(x)
            for block in getattr(self, f"blocks{i}"):
                x = block(x)
            out.append(getattr(self, f"norm{i}")(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous())
        return out


def _up(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class UPerHead(nn.Module):
    """mmseg's UPerHead: a pyramid pooling module on the last map, an FPN over the others, fused, classified."""

    def __init__(self, in_channels: list[int], channels: int, num_classes: int, pool_scales=(1, 2, 3, 6)):
        super().__init__()
        self.psp_modules = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(s), _ConvModule(in_channels[-1], channels, 1))
                                         for s in pool_scales)
        self.bottleneck = _ConvModule(in_channels[-1] + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(_ConvModule(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(_ConvModule(channels, channels, 3) for _ in in_channels[:-1])
        self.fpn_bottleneck = _ConvModule(len(in_channels) * channels, channels, 3)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats):
        top = feats[-1]
        pooled = [top] + [_up(m(top), top.shape[2:]) for m in self.psp_modules]
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)] + [self.bottleneck(torch.cat(pooled, 1))]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + _up(laterals[i], laterals[i - 1].shape[2:])
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals)] + [laterals[-1]]
        outs = [outs[0]] + [_up(o, outs[0].shape[2:]) for o in outs[1:]]
        return self.conv_seg(self.fpn_bottleneck(torch.cat(outs, 1)))


class UperNetUniFormer(nn.Module):
    """mmseg's EncoderDecoder: backbone and decode head (logits at 1/4 of the input)."""

    def __init__(self, dims, layers, mlp_ratio, channels, num_classes, pool_scales):
        super().__init__()
        self.backbone = UniFormer(dims, layers, mlp_ratio)
        self.decode_head = UPerHead(dims, channels, num_classes, tuple(pool_scales))

    def forward(self, x):
        return self.decode_head(self.backbone(x))


def _uniformer_keys(net, sd: dict) -> dict:
    """The segmentor's weights (the mmseg checkpoint's `state_dict`, its `meta` aside); the auxiliary FCN head is
    for training only. A file without BN's batch counters (an older torch) gets zeros for them."""
    out = {k: v for k, v in sd.items() if k.startswith(("backbone.", "decode_head."))}
    for key in net.state_dict() if net is not None else ():
        if key.endswith("num_batches_tracked") and key not in out:
            out[key] = torch.zeros((), dtype=torch.long)
    return out


def uniformer_net(sd: dict) -> UperNetUniFormer:
    """UPerNet-UniFormer sized by the file: stage widths and depths, MLP ratio, head width and classes."""
    sd = _uniformer_keys(None, sd)
    dims = [int(_need(sd, f"backbone.patch_embed{i}.proj.weight", "a UniFormer stage").shape[0]) for i in range(1, 5)]
    layers = [_count(sd, f"backbone.blocks{i}.{{}}.") for i in range(1, 5)]
    hidden = _need(sd, "backbone.blocks1.0.mlp.fc1.weight", "UniFormer's first block").shape[0]
    head = _need(sd, "decode_head.conv_seg.weight", "the UPerNet classifier")
    pools = _count(sd, "decode_head.psp_modules.{}.")
    if pools != 4:
        raise KeyError(f"decode_head.psp_modules ({pools} pooling branches, UPerNet has 4)")
    return UperNetUniFormer(dims, layers, hidden / dims[0], int(head.shape[1]), int(head.shape[0]), (1, 2, 3, 6))


uniformer_net.reads_shapes = True

UNIFORMER_FILE = "uniformer/upernet_global_small.pth"
_MMSEG_MEAN, _MMSEG_STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


def uniformer_classes(net: UperNetUniFormer, img: np.ndarray) -> np.ndarray:
    """mmseg's test pipeline for ADE20K: rescaled (bilinear) as large as fits 2048x512 keeping the aspect, the
    channels reversed (the extension hands mmseg an RGB picture, which mmseg takes for BGR and "converts" to RGB),
    normalised, run whole, the logits resized to the network's input and then to the picture (bilinear), arg-max
    per pixel."""
    h, w = img.shape[:2]
    scale = min(2048 / max(h, w), 512 / min(h, w))
    x = cv2.resize(img, (int(w * scale + 0.5), int(h * scale + 0.5)), interpolation=cv2.INTER_LINEAR)
    x = (x[:, :, ::-1].astype(np.float32) - np.array(_MMSEG_MEAN, np.float32)) / np.array(_MMSEG_STD, np.float32)
    device = next(net.parameters()).device
    with torch.no_grad():
        logits = net(torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None].to(device))
        return resized_argmax(logits, [x.shape[:2], (h, w)]).cpu().numpy()


def resized_argmax(logits: torch.Tensor, sizes, chunk: int = 16) -> torch.Tensor:
    """The arg-max over classes of the 1xCxhxw logits resized (bilinear) to each of `sizes` in turn, a few classes
    at a time: at 2048 px all 150 resized maps at once would take gigabytes."""
    best = index = None
    for start in range(0, logits.shape[1], chunk):
        part = logits[:, start:start + chunk]
        for size in sizes:
            part = _up(part, size)
        value, which = part[0].max(0)
        if best is None:
            best, index = value, which
        else:
            better = value > best
            best = torch.where(better, value, best)
            index = torch.where(better, which + start, index)
    return index


def run_uniformer(img, res, a, b, ctx: RunContext):
    from modules.controlnet.annotators import load

    p = resize_with_pad(img, res)
    classes = uniformer_classes(load(ctx, UNIFORMER_FILE), p.image)
    return p.crop(colour(classes, ADE20K_PALETTE))


# --- OneFormer Swin-L (seg_ofade20k, seg_ofcoco) ---

ONEFORMER_ADE20K_FILE = "oneformer/250_16_swin_l_oneformer_ade20k_160k.pth"
ONEFORMER_COCO_FILE = "oneformer/150_16_swin_l_oneformer_coco_100ep.pth"
_SEMANTIC_TASK = "The task is semantic"
_BLOCK = "pixel_level_module.encoder.swin.encoder.layers.{}.blocks.{}."
_RULES = [  # (original key pattern, transformers' name); the first that matches renames the key
    (r"backbone\.patch_embed\.proj\.", "pixel_level_module.encoder.swin.embeddings.patch_embeddings.projection."),
    (r"backbone\.patch_embed\.norm\.", "pixel_level_module.encoder.swin.embeddings.norm."),
    (r"backbone\.layers\.(\d+)\.downsample\.", r"pixel_level_module.encoder.swin.encoder.layers.\1.downsample."),
    (r"backbone\.layers\.(\d+)\.blocks\.(\d+)\.norm1\.", _BLOCK.format(r"\1", r"\2") + "layernorm_before."),
    (r"backbone\.layers\.(\d+)\.blocks\.(\d+)\.norm2\.", _BLOCK.format(r"\1", r"\2") + "layernorm_after."),
    (r"backbone\.layers\.(\d+)\.blocks\.(\d+)\.attn\.proj\.", _BLOCK.format(r"\1", r"\2") + "attention.o_proj."),
    (r"backbone\.layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_bias_table",
     _BLOCK.format(r"\1", r"\2") + "attention.relative_position_bias.relative_position_bias_table"),
    (r"backbone\.layers\.(\d+)\.blocks\.(\d+)\.mlp\.", _BLOCK.format(r"\1", r"\2") + "mlp."),
    (r"sem_seg_head\.pixel_decoder\.(adapter_1|layer_1)\.weight", r"pixel_level_module.decoder.\1.0.weight"),
    (r"sem_seg_head\.pixel_decoder\.(adapter_1|layer_1)\.norm\.", r"pixel_level_module.decoder.\1.1."),
    (r"sem_seg_head\.pixel_decoder\.input_proj\.", "pixel_level_module.decoder.input_projections."),
    (r"sem_seg_head\.pixel_decoder\.transformer\.level_embed", "pixel_level_module.decoder.level_embed"),
    (r"sem_seg_head\.pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.linear1\.",
     r"pixel_level_module.decoder.encoder.layers.\1.fc1."),
    (r"sem_seg_head\.pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.linear2\.",
     r"pixel_level_module.decoder.encoder.layers.\1.fc2."),
    (r"sem_seg_head\.pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.norm1\.",
     r"pixel_level_module.decoder.encoder.layers.\1.self_attn_layer_norm."),
    (r"sem_seg_head\.pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.norm2\.",
     r"pixel_level_module.decoder.encoder.layers.\1.final_layer_norm."),
    (r"sem_seg_head\.pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.self_attn\.",
     r"pixel_level_module.decoder.encoder.layers.\1.self_attn."),
    (r"sem_seg_head\.pixel_decoder\.mask_features\.", "pixel_level_module.decoder.mask_projection."),
    (r"sem_seg_head\.predictor\.query_embed\.", "transformer_module.queries_embedder."),
    (r"sem_seg_head\.predictor\.level_embed\.", "transformer_module.level_embed."),
    (r"sem_seg_head\.predictor\.decoder_norm\.", "transformer_module.decoder.decoder_norm."),
    (r"sem_seg_head\.predictor\.class_input_proj\.", "transformer_module.decoder.query_input_projection."),
    (r"sem_seg_head\.predictor\.class_embed\.", "transformer_module.decoder.class_embed."),
    (r"sem_seg_head\.predictor\.mask_embed\.layers\.(\d+)\.", r"transformer_module.decoder.mask_embed.layers.\1.0."),
    (r"sem_seg_head\.predictor\.class_transformer\.decoder\.",
     "transformer_module.decoder.query_transformer.decoder."),
    (r"sem_seg_head\.predictor\.transformer_cross_attention_layers\.(\d+)\.",
     r"transformer_module.decoder.layers.\1.cross_attn."),
    (r"sem_seg_head\.predictor\.transformer_ffn_layers\.(\d+)\.", r"transformer_module.decoder.layers.\1.ffn."),
    (r"sem_seg_head\.predictor\.transformer_self_attention_layers\.(\d+)\.norm\.",
     r"transformer_module.decoder.layers.\1.self_attn.norm."),
    (r"sem_seg_head\.predictor\.transformer_self_attention_layers\.(\d+)\.self_attn\.out_proj\.",
     r"transformer_module.decoder.layers.\1.self_attn.self_attn.out_proj."),
    (r"task_mlp\.layers\.(\d+)\.", r"task_encoder.task_mlp.layers.\1.0."),
]
_RULES = [(re.compile(pattern), target) for pattern, target in _RULES]
# fused q/k/v projections, split in three (query, key, value) under these names
_FUSED = [
    (re.compile(r"backbone\.layers\.(\d+)\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)$"),
     _BLOCK.format(r"\1", r"\2") + r"attention.{}_proj.\3"),
    (re.compile(r"sem_seg_head\.predictor\.transformer_self_attention_layers\.(\d+)\.self_attn\.in_proj_(weight|bias)$"),
     r"transformer_module.decoder.layers.\1.self_attn.self_attn.{}_proj.\2"),
]


def _detectron2_model(sd: dict) -> dict:
    """The network's tensors out of a detectron2 checkpoint ({"model": ..., "iteration": ...}) or a bare one."""
    inner = {k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")}
    return inner if any(k.startswith("backbone.") for k in inner) else sd


def oneformer_keys(net, sd: dict) -> dict:
    """The original (detectron2) checkpoint renamed to transformers' OneFormerModel. Tensors the inference network
    has no place for (the training-time text encoder and projector, prompt context, loss buffers, Swin's
    relative position indices, which are computed) are left out; a missing one is left for the strict load to
    name."""
    out = {}
    for key, value in _detectron2_model(sd).items():
        norm = re.match(r"backbone\.norm(\d)\.", key)  # the output norms of stages 0-3: stage1-stage4
        if norm:
            out[f"pixel_level_module.encoder.hidden_states_norms.stage{int(norm.group(1)) + 1}.{key[norm.end():]}"] = value
            continue
        for pattern, target in _FUSED:
            m = pattern.match(key)
            if m:
                for name, part in zip("qkv", value.chunk(3, dim=0)):
                    out[m.expand(target).format(name)] = part
                break
        else:
            for pattern, target in _RULES:
                m = pattern.match(key)
                if m:
                    out[m.expand(target) + key[m.end():]] = value
                    break
    return out


def oneformer_config(sd: dict):
    """OneFormer's configuration from the file's shapes: the Swin backbone (width, depths, heads, window, MLP
    ratio) and the heads (queries, classes, widths, layer counts); the detectron2 config's fixed choices
    (post-norm decoder, task norm, strides 4-32, 4 sampling points) otherwise."""
    from transformers import OneFormerConfig, SwinConfig

    sd = _detectron2_model(sd)
    embed = _need(sd, "backbone.patch_embed.proj.weight", "a Swin backbone's patch embedding")
    depths = [_count(sd, f"backbone.layers.{i}.blocks.{{}}.") for i in range(_count(sd, "backbone.layers.{}."))]
    if len(depths) != 4 or 0 in depths:
        raise KeyError(f"backbone.layers (a 4-stage Swin backbone; the file has block counts {depths})")
    tables = [_need(sd, f"backbone.layers.{i}.blocks.0.attn.relative_position_bias_table", "Swin attention")
              for i in range(4)]
    window = int(round((tables[0].shape[0] ** 0.5 + 1) / 2))
    fc1 = _need(sd, "backbone.layers.0.blocks.0.mlp.fc1.weight", "Swin's MLP")
    swin = SwinConfig(embed_dim=int(embed.shape[0]), depths=depths, num_heads=[int(t.shape[1]) for t in tables],
                      window_size=window, mlp_ratio=fc1.shape[0] / fc1.shape[1], drop_path_rate=0.0,
                      out_features=["stage1", "stage2", "stage3", "stage4"])
    pixel = "sem_seg_head.pixel_decoder."
    predictor = "sem_seg_head.predictor."
    queries = _need(sd, predictor + "query_embed.weight", "OneFormer's object queries")
    levels = _need(sd, pixel + "transformer.level_embed", "OneFormer's pixel decoder").shape[0]
    sampling = _need(sd, pixel + "transformer.encoder.layers.0.self_attn.attention_weights.weight",
                     "the pixel decoder's deformable attention").shape[0]
    return OneFormerConfig(
        backbone_config=swin,
        num_labels=int(_need(sd, predictor + "class_embed.weight", "OneFormer's classifier").shape[0]) - 1,
        num_queries=int(queries.shape[0]), hidden_dim=int(queries.shape[1]),
        conv_dim=int(sd[pixel + "input_proj.0.0.weight"].shape[0]) if pixel + "input_proj.0.0.weight" in sd else 256,
        mask_dim=int(_need(sd, pixel + "mask_features.weight", "the pixel decoder's mask features").shape[0]),
        encoder_layers=_count(sd, pixel + "transformer.encoder.layers.{}."),
        encoder_feedforward_dim=int(sd[pixel + "transformer.encoder.layers.0.linear1.weight"].shape[0]),
        decoder_layers=_count(sd, predictor + "transformer_self_attention_layers.{}.") + 1,
        dim_feedforward=int(_need(sd, predictor + "transformer_ffn_layers.0.linear1.weight", "the decoder").shape[0]),
        query_dec_layers=_count(sd, predictor + "class_transformer.decoder.layers.{}."),
        num_attention_heads=int(sampling) // (levels * 4),
        task_seq_len=int(_need(sd, "task_mlp.layers.0.weight", "OneFormer's task MLP").shape[1]),
        is_training=False, layer_norm_eps=1e-5)


def oneformer_net(sd: dict):
    """transformers' OneFormerModel for the file (built on the meta device by the caller; Swin's relative position
    indices are made here for real, and the backbone's unused final LayerNorm is dropped)."""
    import warnings

    from transformers.models.oneformer.modeling_oneformer import OneFormerModel

    config = oneformer_config(sd)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = OneFormerModel(config)
    net.pixel_level_module.encoder.swin.layernorm = nn.Identity()
    with torch.device("cpu"):
        for module in net.modules():
            if hasattr(module, "relative_position_index") and hasattr(module, "_create_relative_position_index"):
                module.register_buffer("relative_position_index",
                                       module._create_relative_position_index().view(-1), persistent=False)
    return net


oneformer_net.reads_shapes = True

_DETECTRON2_MEAN, _DETECTRON2_STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
ONEFORMER_TEST_SIZE = {ONEFORMER_ADE20K_FILE: (640, 2560), ONEFORMER_COCO_FILE: (800, 1333)}  # MIN/MAX_SIZE_TEST


@functools.lru_cache(maxsize=4)
def task_tokens(text: str = _SEMANTIC_TASK, length: int = 77) -> torch.Tensor:
    """OneFormer's task input: CLIP BPE ids of the lower-cased text between start and end tokens, zero-padded."""
    from modules.models.tokenizer import build_clip_tokenizer

    ids = build_clip_tokenizer()(text, truncation=True, max_length=length)["input_ids"]
    out = torch.zeros(1, length, dtype=torch.long)
    out[0, :len(ids)] = torch.tensor(ids)
    return out


def test_size(h: int, w: int, short: int, longest: int) -> tuple[int, int]:
    """detectron2's ResizeShortestEdge: the short side to `short`, unless the long side would pass `longest`."""
    scale = short / min(h, w)
    nh, nw = (short, scale * w) if h < w else (scale * h, short)
    if max(nh, nw) > longest:
        nh, nw = nh * longest / max(nh, nw), nw * longest / max(nh, nw)
    return int(nh + 0.5), int(nw + 0.5)


def oneformer_classes(net, img: np.ndarray, short: int, longest: int) -> np.ndarray:
    """OneFormer's DefaultPredictor and semantic inference: resized (PIL bilinear) to the test size, normalised,
    zero-padded to multiples of 32; the mask logits upsampled to the padded size, cropped, resized to the
    picture, then per class sum_q softmax(class_q)[c] * sigmoid(mask_q), arg-max per pixel."""
    from PIL import Image

    h, w = img.shape[:2]
    nh, nw = test_size(h, w, short, longest)
    x = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR)).astype(np.float32)
    x = (x - np.array(_DETECTRON2_MEAN, np.float32)) / np.array(_DETECTRON2_STD, np.float32)
    ph, pw = -(-nh // 32) * 32, -(-nw // 32) * 32
    device = next(net.parameters()).device
    pixels = torch.zeros(1, 3, ph, pw, device=device)
    pixels[0, :, :nh, :nw] = torch.from_numpy(x).permute(2, 0, 1).to(device)
    with torch.no_grad():
        out = net(pixel_values=pixels, task_inputs=task_tokens(length=net.config.task_seq_len).to(device))
        masks = _up(out.transformer_decoder_mask_predictions, (ph, pw))[:, :, :nh, :nw]
        masks = _up(masks, (h, w))[0].sigmoid()
        cls = out.transformer_decoder_class_predictions[0].softmax(-1)[:, :-1]
        semseg = torch.einsum("qc,qhw->chw", cls, masks)
    return semseg.argmax(0).cpu().numpy()


def run_oneformer(img, res, a, b, ctx: RunContext, relative: str, palette: np.ndarray):
    from modules.controlnet.annotators import load

    p = resize_with_pad(img, res)
    classes = oneformer_classes(load(ctx, relative), p.image, *ONEFORMER_TEST_SIZE[relative])
    return p.crop(colour(classes, palette))


# --- anime face segmentation (seg_anime_face) ---

def _decoder_block(cin: int, cout: int, last: bool = False) -> nn.Sequential:
    """Nearest 2x up, 3x3 conv; then InstanceNorm + LeakyReLU(0.1) (+ dropout), or the final softmax."""
    layers = [nn.UpsamplingNearest2d(scale_factor=2), nn.Conv2d(cin, cout, 3, padding=1)]
    layers += [nn.Softmax2d()] if last else [nn.InstanceNorm2d(cout), nn.LeakyReLU(0.1), nn.Dropout(0.2)]
    return nn.Sequential(*layers)


class AnimeFaceUNet(nn.Module):
    """The extension's anime face parser: MobileNetV2's feature blocks as the encoder (1/2 .. 1/32), a decoder of
    upsampling convs with skip connections, 7 classes."""

    SPLITS = ((0, 2), (2, 4), (4, 7), (7, 14), (14, 17))

    def __init__(self, classes: int = 7):
        super().__init__()
        from torchvision.models import mobilenet_v2

        features = mobilenet_v2(weights=None).features
        for i, (start, stop) in enumerate(self.SPLITS):
            setattr(self, f"en_block{i}", nn.Sequential(*[features[j] for j in range(start, stop)]))
        self.de_block4 = _decoder_block(160, 96)
        self.de_block3 = _decoder_block(96 * 2, 32)
        self.de_block2 = _decoder_block(32 * 2, 24)
        self.de_block1 = _decoder_block(24 * 2, 16)
        self.de_block0 = _decoder_block(16 * 2, classes, last=True)

    def forward(self, x):
        skips = []
        for i in range(5):
            x = getattr(self, f"en_block{i}")(x)
            skips.append(x)
        y = skips[-1]
        for i in range(4, 0, -1):
            y = getattr(self, f"de_block{i}")(y)
            y = F.interpolate(y, size=skips[i - 1].shape[2:], mode="bilinear", align_corners=True)
            y = torch.cat((y, skips[i - 1]), 1)
        return self.de_block0(y)


def anime_face_net(sd: dict) -> AnimeFaceUNet:
    last = _need(sd, "de_block0.1.weight", "the anime face parser's classifier")
    _need(sd, "en_block0.0.0.weight", "the anime face parser's MobileNetV2 encoder")
    return AnimeFaceUNet(int(last.shape[0]))


anime_face_net.reads_shapes = True
ANIME_FACE_FILE = "anime_face_segment/UNet.pth"
ANIME_FACE_SIZE = 512


def anime_face_classes(net: AnimeFaceUNet, img: np.ndarray) -> np.ndarray:
    """The extension's transform: the short side resized to 512 (PIL bicubic), RGB in [0, 1], arg-max per pixel;
    the map comes back at the picture's size (nearest). The extension leaves it at the 512 scale and crops that,
    which is the same map at the default resolution and a corner of it at others."""
    from PIL import Image

    h, w = img.shape[:2]
    nh, nw = (ANIME_FACE_SIZE, int(ANIME_FACE_SIZE * w / h)) if h <= w else (int(ANIME_FACE_SIZE * h / w), ANIME_FACE_SIZE)
    x = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BICUBIC)).astype(np.float32) / 255.0
    device = next(net.parameters()).device
    with torch.no_grad():
        probs = net(torch.from_numpy(x).permute(2, 0, 1)[None].to(device))
    classes = probs[0].argmax(0).cpu().numpy().astype(np.uint8)
    return cv2.resize(classes, (w, h), interpolation=cv2.INTER_NEAREST)


def run_anime_face(img, res, a, b, ctx: RunContext):
    from modules.controlnet.annotators import load

    p = resize_with_pad(img, res)
    classes = anime_face_classes(load(ctx, ANIME_FACE_FILE), p.image)
    return p.crop(colour(classes, ANIME_FACE_PALETTE))


# "<subdir>/<file>" -> (build from the file's tensors, adapt its keys), for annotators.NETWORKS
NETWORKS = {
    UNIFORMER_FILE: (uniformer_net, _uniformer_keys),
    ONEFORMER_ADE20K_FILE: (oneformer_net, oneformer_keys),
    ONEFORMER_COCO_FILE: (oneformer_net, oneformer_keys),
    ANIME_FACE_FILE: (anime_face_net, None),
}

# preprocessor name -> runner, for annotators.RUNNERS
RUNNERS = {
    "segmentation": run_uniformer,
    "oneformer_ade20k": functools.partial(run_oneformer, relative=ONEFORMER_ADE20K_FILE, palette=ADE20K_PALETTE),
    "oneformer_coco": functools.partial(run_oneformer, relative=ONEFORMER_COCO_FILE, palette=COCO_PANOPTIC_PALETTE),
    "anime_face_segment": run_anime_face,
}

"""T2I-Adapters (TencentARC) from the files users have: the original layout (`conv_in`, `body.N.block1`, ...; the
`t2iadapter_*_sd15v2.pth` files) and diffusers' (`adapter.body.I.resnets.J...`), as diffusers' T2IAdapter.

The input width tells the family, as in the extension: the adapter unshuffles the picture into 8x8 (SD1.x/2.x)
or 16x16 (SDXL) patches, so its first conv reads 64 or 256 channels per picture channel."""
from __future__ import annotations

import re
from collections.abc import Mapping

from modules.controlnet.detect import ControlNetFileError, ControlNetSpec, _indices, _shape


def is_t2i_adapter(sd: Mapping) -> bool:
    return "adapter.conv_in.weight" in sd or ("conv_in.weight" in sd and "body.0.block1.weight" in sd)


def to_diffusers(sd: Mapping) -> dict:
    """Diffusers' key layout; original files number their blocks `body.(level * blocks + j)`."""
    if "adapter.conv_in.weight" in sd:
        return dict(sd)
    if "body.0.block2.weight" in sd and _shape(sd, "body.0.block2.weight")[2] != 1:
        raise ControlNetFileError("a T2I-Adapter v1 with 3x3 skip convs (only the v2 adapters, as diffusers "
                                  "builds them, are supported)")
    if any(k.endswith("down_opt.op.weight") for k in sd):
        raise ControlNetFileError("a T2I-Adapter with conv downsampling (only the v2 adapters are supported)")
    blocks = _indices(sd, "body.")
    per_level = _blocks_per_level(sd, blocks)
    out = {}
    for key, value in sd.items():
        m = re.match(r"body\.(\d+)\.(.*)", key)
        if m is None:
            out["adapter." + key] = value
            continue
        index, rest = int(m.group(1)), m.group(2)
        level, j = divmod(index, per_level)
        if rest.startswith("in_conv."):
            out[f"adapter.body.{level}.{rest}"] = value
        else:
            out[f"adapter.body.{level}.resnets.{j}.{rest}"] = value
    return out


def _blocks_per_level(sd: Mapping, blocks: list[int]) -> int:
    """Blocks between two width changes (each level's first block has an in_conv when the width grows)."""
    widths = [_shape(sd, f"body.{i}.block1.weight")[0] for i in blocks]
    for i in range(1, len(widths)):
        if widths[i] != widths[0]:
            return i
    return 2  # the released adapters: 2 blocks per level


def spec(sd: Mapping) -> ControlNetSpec:
    """The T2IAdapter config of a diffusers-layout state dict."""
    cin = _shape(sd, "adapter.conv_in.weight")[1]
    levels = _indices(sd, "adapter.body.")
    channels = [_shape(sd, f"adapter.body.{i}.resnets.0.block1.weight")[0] for i in levels]
    xl = cin % 256 == 0 and cin // 256 in (1, 3)
    factor = 16 if xl else 8
    config = {"in_channels": cin // (factor * factor), "channels": channels,
              "num_res_blocks": len(_indices(sd, "adapter.body.0.resnets.")), "downscale_factor": factor,
              "adapter_type": "full_adapter_xl" if xl else "full_adapter"}
    return ControlNetSpec(kind="t2i_adapter", config=config, family="sdxl" if xl else "sd1")

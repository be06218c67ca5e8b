"""Control-LoRA (Stability AI's `control-lora-*-rank128.safetensors`): a ControlNet stored as low-rank differences
from the checkpoint's own UNet, marked by a `lora_controlnet` tensor.

A Control-LoRA is only a ControlNet together with the UNet it guides: each trunk weight is the UNet's weight plus
`up @ down` where the file has that pair, the file's own tensor where it has a full one (norms, biases it trained),
and the UNet's weight otherwise; the control-only parts (hint block, zero convs, middle output) are full tensors.
The merged weights are in the original layout, which detect.to_diffusers converts as for any ControlNet."""
from __future__ import annotations

from collections.abc import Mapping

import torch

MARKER = "lora_controlnet"
TRUNK = ("input_blocks.", "middle_block.", "time_embed.", "label_emb.")


def is_control_lora(sd: Mapping) -> bool:
    return MARKER in sd


def merge(sd: Mapping, unet) -> dict[str, torch.Tensor]:
    """The full ControlNet (original layout, no prefix) that `sd` describes on top of `unet`."""
    from modules.models.ldm_export import unet_to_ldm

    base = {k: v for k, v in unet_to_ldm(unet).items() if k.startswith(TRUNK)}
    out: dict[str, torch.Tensor] = {}
    for key, weight in base.items():
        stem = key.removesuffix(".weight")
        if key.endswith(".weight") and stem + ".up" in sd:
            up, down = sd[stem + ".up"].float(), sd[stem + ".down"].float()
            delta = (up.flatten(1) @ down.flatten(1)).reshape(weight.shape)
            out[key] = weight.float() + delta
        else:
            out[key] = sd.get(key, weight)
    for key, value in sd.items():
        if key != MARKER and not key.endswith((".up", ".down")) and key not in out:
            out[key] = value
    return out

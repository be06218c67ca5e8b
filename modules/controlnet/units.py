"""A ControlNet unit as the sampling loop applies it: model, control image, weight and guidance window.

Per step, as diffusers' ControlNet pipelines (and the sd-webui-controlnet extension in "Balanced" mode): the
ControlNet sees the same (CFG-batched) latents and prompt embeddings as the UNet, its residuals are scaled by the
unit's weight inside its guidance window and summed over units, and added to the UNet's skip connections.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image


@dataclass
class ControlUnit:
    """One ControlNet for one generation. `image` is the control map (a PIL image, resized to the picture)."""

    model: Any  # a diffusers ControlNetModel
    image: Image.Image
    weight: float = 1.0
    guidance_start: float = 0.0
    guidance_end: float = 1.0

    def scale_at(self, step: int, total: int) -> float:
        """The weight at 0-based step `step` of `total` (0 outside the window: diffusers' controlnet_keep)."""
        outside = step / total < self.guidance_start or (step + 1) / total > self.guidance_end
        return 0.0 if outside else float(self.weight)

    def tensor(self, width: int, height: int, batch: int, device, dtype) -> torch.Tensor:
        """The map as the ControlNet reads it: (batch, 3, H, W) in [0, 1] (diffusers' control image processor)."""
        from diffusers.image_processor import VaeImageProcessor

        processor = VaeImageProcessor(vae_scale_factor=8, do_convert_rgb=True, do_normalize=False)
        image = processor.preprocess(self.image, height=height, width=width).to(dtype=torch.float32)
        return image.repeat_interleave(batch, dim=0).to(device=device, dtype=dtype)


@dataclass
class ActiveControl:
    """A unit ready for one batch: its model and its map as a tensor."""

    unit: ControlUnit
    image: torch.Tensor


def residuals(controls: list[ActiveControl], x: torch.Tensor, t, embeds: torch.Tensor, added: dict | None,
              use_cfg: bool, step: int, total: int) -> dict:
    """The UNet's extra inputs for this step: the units' residuals, weighted and summed ({} when none guide)."""
    down, mid = None, None
    for control in controls:
        scale = control.unit.scale_at(step, total)
        if scale == 0:
            continue
        image = torch.cat([control.image] * 2) if use_cfg else control.image
        kwargs = {"added_cond_kwargs": added} if added is not None else {}
        d, m = control.unit.model(x, t, encoder_hidden_states=embeds, controlnet_cond=image,
                                  conditioning_scale=scale, guess_mode=False, return_dict=False, **kwargs)
        down = list(d) if down is None else [a + b for a, b in zip(down, d)]
        mid = m if mid is None else mid + m
    if down is None:
        return {}
    return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}

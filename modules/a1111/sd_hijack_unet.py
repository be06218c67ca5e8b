"""A1111's `modules.sd_hijack_unet`: `th` is torch with A1111's tolerant `cat` (skip connections of odd sizes are
resized to match), which extensions patch or call; the LDM UNet hooks themselves are internals."""
from __future__ import annotations

import torch

from modules.a1111.unsupported import unsupported


class TorchHijackForUnet:
    """torch, except `cat` interpolates the second tensor when spatial sizes differ (A1111's behaviour)."""

    def __getattr__(self, item):
        if item == "cat":
            return self.cat
        return getattr(torch, item)

    def cat(self, tensors, *args, **kwargs):
        if len(tensors) == 2:
            a, b = tensors
            if a.dim() == 4 and a.shape[-2:] != b.shape[-2:]:
                a = torch.nn.functional.interpolate(a, b.shape[-2:], mode="nearest")
            tensors = (a, b)
        return torch.cat(tensors, *args, **kwargs)


th = TorchHijackForUnet()

apply_model = unsupported("sd_hijack_unet.apply_model", "the denoiser is a diffusers UNet")
timestep_embedding = unsupported("sd_hijack_unet.timestep_embedding", "LDM internals")
UNetModel_forward = unsupported("sd_hijack_unet.UNetModel_forward", "LDM internals")  # noqa: N816 - A1111's name

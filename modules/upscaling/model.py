"""Load an upscaler model file with spandrel (architecture and scale read from the weights) and run it on pixels.

`.pth` goes through spandrel's restricted unpickler (plain tensors and dicts only, no code runs); `.safetensors`
holds no code at all. Face-restoration archs are refused: they are not upscalers (GFPGAN and CodeFormer run in
Extras' face restoration steps, modules/face_restoration.py).
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors import SafetensorError

from modules import devices

if TYPE_CHECKING:  # spandrel imports torchvision (2 s of start-up): only when an upscaler model is loaded
    from spandrel import ImageModelDescriptor

#: A1111's --use-cpu names for upscaler architectures (every other one, as A1111's DAT/HAT, counts as "esrgan").
ARCHITECTURE_MODULES = {"SwinIR": "swinir", "SCUNet": "scunet"}
UPSCALER_PURPOSES = ("SR", "Restoration")  # Restoration: 1x models (SCUNet…), upscaled further with Lanczos


class UpscalerLoadError(ValueError):
    """The file is not an upscaler spandrel can load; the message names the file and why."""


@dataclass
class LoadedUpscaler:
    path: Path
    descriptor: ImageModelDescriptor

    @property
    def scale(self) -> int:
        return self.descriptor.scale

    @property
    def architecture(self) -> str:
        return self.descriptor.architecture.name

    def __call__(self, tile: np.ndarray) -> np.ndarray:
        """(h, w, 3) uint8 → (h·scale, w·scale, 3) uint8."""
        d = self.descriptor
        x = torch.from_numpy(tile.transpose(2, 0, 1).copy()).unsqueeze(0)  # NCHW, contiguous, writable
        x = x.to(device=d.device, dtype=d.dtype).div_(255.0)
        y = d(x)
        return (y[0].permute(1, 2, 0).float() * 255.0).round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()


def _dtype_for(descriptor: ImageModelDescriptor, device_config: devices.DeviceConfig) -> torch.dtype:
    """Half precision only on a GPU and only where spandrel says the architecture tolerates it."""
    if device_config.device.type == "cpu":
        return torch.float32
    if device_config.dtype == torch.float16 and descriptor.supports_half:
        return torch.float16
    if device_config.dtype == torch.bfloat16 and descriptor.supports_bfloat16:
        return torch.bfloat16
    return torch.float32


def load_upscaler(path: Path, device_config: devices.DeviceConfig) -> LoadedUpscaler:
    """Load `path` onto the engine's device; raises UpscalerLoadError naming the file for anything unusable."""
    from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError

    try:
        descriptor = ModelLoader(device="cpu").load_from_file(path)
    except UnsupportedModelError:
        raise UpscalerLoadError(f"{path.name}: not an upscaler model spandrel recognises") from None
    except (pickle.UnpicklingError, SafetensorError, RuntimeError, OSError, ValueError, KeyError, EOFError) as e:
        raise UpscalerLoadError(f"{path.name}: cannot be read as an upscaler model ({e})") from None
    if not isinstance(descriptor, ImageModelDescriptor) or descriptor.purpose not in UPSCALER_PURPOSES:
        raise UpscalerLoadError(f"{path.name}: a {descriptor.architecture.name} model "
                                f"({descriptor.purpose}), not an upscaler")
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise UpscalerLoadError(f"{path.name}: works on {descriptor.input_channels}-channel images; "
                                f"only RGB upscalers are supported")
    descriptor.eval()
    device_config = devices.for_module(device_config, ARCHITECTURE_MODULES.get(descriptor.architecture.name,
                                                                               "esrgan"))
    descriptor.to(device_config.device, _dtype_for(descriptor, device_config))
    return LoadedUpscaler(path, descriptor)

"""Upscalers: built-in resamplers and spandrel-loaded model files, run in tiles (see registry, model, tiling).

The names load their modules on first use, so that `modules.upscaling.realesrgan` (the settings' list of A1111's
Real-ESRGAN models) imports without torch: the start-up page answers before torch is imported."""
from __future__ import annotations

import importlib

_WHERE = {"LoadedUpscaler": "model", "UpscalerLoadError": "model", "MODEL_FOLDERS": "registry",
          "RESAMPLERS": "registry", "UnknownUpscalerError": "registry", "UpscalerDownloadError": "registry",
          "UpscalerInfo": "registry", "UpscalerRegistry": "registry"}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"modules.upscaling.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Upscalers: built-in resamplers and spandrel-loaded model files, run in tiles (see registry, model, tiling)."""
from modules.upscaling.model import LoadedUpscaler, UpscalerLoadError
from modules.upscaling.registry import (MODEL_FOLDERS, RESAMPLERS, UnknownUpscalerError, UpscalerDownloadError,
                                        UpscalerInfo, UpscalerRegistry)

__all__ = ["LoadedUpscaler", "MODEL_FOLDERS", "RESAMPLERS", "UnknownUpscalerError", "UpscalerDownloadError",
           "UpscalerInfo", "UpscalerLoadError", "UpscalerRegistry"]

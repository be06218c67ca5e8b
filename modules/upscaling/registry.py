"""The upscalers by name: built-in resamplers (None, Lanczos, Nearest), model files in A1111's upscaler folders, and
A1111's Real-ESRGAN models, downloaded on first use (realesrgan.py).

Extras, hires fix and (later) the SD upscale script all call `UpscalerRegistry.upscale` / `upscale_to`. Model
upscalers follow A1111's `Upscaler.upscale`: run the model (at its native scale, up to three times) until the image
is at least the target size, then resize to the exact target with Lanczos.
"""
from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from modules import devices
from modules.upscaling import realesrgan
from modules.upscaling.model import LoadedUpscaler, load_upscaler
from modules.upscaling.tiling import run_tiled

log = logging.getLogger(__name__)

RESAMPLERS = {"None": None, "Lanczos": Image.Resampling.LANCZOS, "Nearest": Image.Resampling.NEAREST}
MODEL_FOLDERS = ("ESRGAN", "RealESRGAN", "SwinIR", "DAT", "HAT", "ScuNET")  # under <models>, as A1111
MODEL_EXTENSIONS = (".pth", ".safetensors")
MAX_MODEL_PASSES = 3
CLOSE_ENOUGH = 1.05  # no further model pass for the last ≤5%: Lanczos does it, instead of a 4× detour and back
CACHED_MODELS = 2
DEFAULT_TILE, DEFAULT_OVERLAP = 192, 8  # A1111's ESRGAN_tile / ESRGAN_tile_overlap


class UnknownUpscalerError(ValueError):
    """The named upscaler is not available; the message lists the ones that are."""


class UpscalerDownloadError(RuntimeError):
    """A listed Real-ESRGAN model could not be downloaded (offline, the host refused); the message says why, and
    where to put the file instead."""


@dataclass(frozen=True)
class UpscalerInfo:
    name: str
    model_name: str | None  # the folder kind ("ESRGAN", "DAT", …); None for the built-in resamplers
    path: Path | None  # for a Real-ESRGAN model not downloaded yet: where it will be
    scale: int  # from the file name ("4x-…", "…_x2") until the model is loaded; 4 when it does not say
    url: str | None = None  # where a Real-ESRGAN model is downloaded from on first use

    def to_api(self) -> dict[str, Any]:
        """A1111's `/sdapi/v1/upscalers` item."""
        return {"name": self.name, "model_name": self.model_name, "model_path": str(self.path) if self.path else None,
                "model_url": self.url, "scale": self.scale}


def _scale_from_name(stem: str) -> int:
    m = re.search(r"(?:^|[^a-z0-9])(\d)x|x(\d)(?:$|[^a-z0-9])", stem.lower())
    return int(m.group(1) or m.group(2)) if m else 4


class UpscalerRegistry:
    """Lists upscalers (rescanning the folders on each call, so new files appear without a restart), loads model
    files on the engine's device and keeps the last few loaded."""

    def __init__(self, folders: Sequence[Path] = (), device_config: devices.DeviceConfig | None = None,
                 settings: Any = None):
        self.folders = list(folders)
        self.device_config = device_config or devices.cpu()
        self.settings = settings
        self._loaded: OrderedDict[tuple[Path, int], LoadedUpscaler] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def from_paths(cls, paths, device_config: devices.DeviceConfig | None = None,
                   settings: Any = None) -> "UpscalerRegistry":
        return cls([paths.model_subdir(f) for f in MODEL_FOLDERS], device_config, settings)

    # -- listing ---------------------------------------------------------------------------------------------------

    def list(self) -> list[UpscalerInfo]:
        """The resamplers, every model file in the folders (a released Real-ESRGAN file under A1111's name), then
        the enabled Real-ESRGAN models not downloaded yet."""
        found = [UpscalerInfo(name, None, None, 4) for name in RESAMPLERS]  # A1111 reports 4 for these too
        taken = set(RESAMPLERS)
        for folder in self.folders:
            files = sorted(p for p in folder.glob("*") if p.suffix.lower() in MODEL_EXTENSIONS and p.is_file()) \
                if folder.is_dir() else []
            for path in files:
                released = realesrgan.by_file(path.name) if folder.name == realesrgan.FOLDER else None
                name = released.name if released is not None else path.stem
                name = name if name not in taken else f"{name} ({folder.name})"
                taken.add(name)
                found.append(UpscalerInfo(name, folder.name, path, self._known_scale(path)))
        target = next((f for f in self.folders if f.name == realesrgan.FOLDER), None)
        if target is not None:
            for model in realesrgan.enabled(self.settings):
                if model.name not in taken:
                    found.append(UpscalerInfo(model.name, realesrgan.FOLDER, target / model.file, model.scale,
                                              model.url))
        return found

    def names(self) -> list[str]:
        return [u.name for u in self.list()]

    def model_names(self) -> list[str]:
        """The model upscalers only (what hires fix adds to its latent modes and resamplers)."""
        return [u.name for u in self.list() if u.path is not None]

    def get(self, name: str) -> UpscalerInfo:
        infos = self.list()
        for info in infos:
            if info.name == name:
                return info
        for info in infos:  # "4x-UltraSharp.pth" or a different case also name the model
            if info.path is not None and name.lower() in (info.name.lower(), info.path.name.lower(),
                                                          info.path.stem.lower()):
                return info
        raise UnknownUpscalerError(f"upscaler {name!r} not found; available: {', '.join(i.name for i in infos)}")

    def __contains__(self, name: str) -> bool:
        try:
            self.get(name)
        except UnknownUpscalerError:
            return False
        return True

    # -- loading ---------------------------------------------------------------------------------------------------

    def load(self, name: str) -> LoadedUpscaler:
        """The model behind `name`, loaded once and kept (the last CACHED_MODELS), reloaded if the file changed."""
        info = self.get(name)
        if info.path is None:
            raise UnknownUpscalerError(f"{name!r} is a built-in resampler, not a model")
        with self._lock:
            if info.url is not None and not info.path.is_file():
                self._download(info)
            key = (info.path, info.path.stat().st_mtime_ns)
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
            log.info("Loading upscaler %s", info.path)
            model = load_upscaler(info.path, self.device_config)
            self._loaded[key] = model
            while len(self._loaded) > CACHED_MODELS:
                self._loaded.popitem(last=False)
                devices.torch_gc()
            return model

    @staticmethod
    def _download(info: UpscalerInfo) -> None:
        """A1111's first use of a Real-ESRGAN model: its release file into models/RealESRGAN, with progress."""
        from modules import downloads

        log.info("Downloading %s for %s from %s", info.path.name, info.name, info.url)
        try:
            info.path.parent.mkdir(parents=True, exist_ok=True)
            downloads.download(info.url, info.path.parent, kind="upscaler", filename=info.path.name)
        except (downloads.DownloadError, OSError) as e:
            raise UpscalerDownloadError(f"{info.name} needs {info.path.name}, and downloading it from {info.url} "
                                        f"failed ({e}). Put the file in {info.path.parent} instead") from None

    def _known_scale(self, path: Path) -> int:
        for (p, _), model in self._loaded.items():
            if p == path:
                return model.scale
        return _scale_from_name(path.stem)

    def tile_settings(self) -> tuple[int, int]:
        get = self.settings.get if self.settings is not None else (lambda _name, default: default)
        return int(get("ESRGAN_tile", DEFAULT_TILE)), int(get("ESRGAN_tile_overlap", DEFAULT_OVERLAP))

    # -- upscaling -------------------------------------------------------------------------------------------------

    def upscale(self, image: Image.Image, name: str, scale: float, **tiling) -> Image.Image:
        """`image` scaled by `scale` with the named upscaler ("None" returns it unchanged)."""
        width, height = max(1, int(image.width * scale)), max(1, int(image.height * scale))
        return self.upscale_to(image, name, width, height, **tiling)

    def upscale_to(self, image: Image.Image, name: str, width: int, height: int, *, tile: int | None = None,
                   overlap: int | None = None) -> Image.Image:
        """`image` resized to exactly width×height; `tile`/`overlap` default to the ESRGAN_tile settings."""
        size = (width, height)
        info = self.get(name)
        if info.path is None:
            resample = RESAMPLERS[info.name]
            return image if resample is None else image.resize(size, resample)
        model = self.load(info.name)
        default_tile, default_overlap = self.tile_settings()
        tile = default_tile if tile is None else tile
        overlap = default_overlap if overlap is None else overlap
        work = image
        for _ in range(MAX_MODEL_PASSES):
            remaining = max(size[0] / work.width, size[1] / work.height)
            if remaining <= 1 or (work is not image and remaining <= CLOSE_ENOUGH):
                break
            before = work.size
            work = self._model_pass(model, work, tile, overlap)
            if work.size == before:  # a 1× model: one pass is all it does
                break
        return work if work.size == size else work.resize(size, Image.Resampling.LANCZOS)

    @staticmethod
    def _model_pass(model: LoadedUpscaler, image: Image.Image, tile: int, overlap: int) -> Image.Image:
        """One run of the model over the whole image (tiled); transparency is carried over with Lanczos."""
        from spandrel import ModelTiling

        if model.descriptor.tiling == ModelTiling.INTERNAL:
            tile = 0
        rgb = np.asarray(image.convert("RGB"))
        result = Image.fromarray(run_tiled(model, rgb, model.scale, tile, overlap), "RGB")
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            result.putalpha(image.convert("RGBA").getchannel("A").resize(result.size, Image.Resampling.LANCZOS))
        return result

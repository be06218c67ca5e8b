"""The ControlNet files a user has (`models/ControlNet/`, `--controlnet-dir`): listed under the extension's names
(`control_v11p_sd15_canny [d14c016b]`), found by any form a client sends, and loaded once into diffusers models.
"""
from __future__ import annotations

import contextlib

import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from modules import hashes
from modules.controlnet import (control_lora, detect, flux_controlnet, ip_adapter, sd3_controlnet, t2i_adapter,
                                t2i_style)

log = logging.getLogger(__name__)

MODEL_EXTENSIONS = (".pt", ".pth", ".ckpt", ".safetensors", ".bin")  # the extension's CN_MODEL_EXTS


class ControlNetLoadError(ValueError):
    """A unit's model cannot be used: the message names the file and says why (shown per unit, 4xx in the API)."""


@dataclass(frozen=True)
class ControlNetFile:
    title: str  # "name [hash]", the extension's model name
    name: str
    path: Path


@dataclass
class LoadedControlNet:
    title: str
    model: Any  # diffusers ControlNetModel / ControlNetUnionModel
    kind: str  # "controlnet" | "union" | "t2i_adapter" | "ip_adapter" | "flux" | "sd3"
    family: str | None  # "sd1" | "sd2" | "sdxl"; None: an IP-Adapter of a width no release has (checked by width)


class ControlNetLibrary:
    """The installed ControlNet models and a small cache of loaded ones."""

    def __init__(self, dirs: list[Path], cache_size: int = 2, clip_vision_dirs: list[Path] | None = None):
        self.dirs = [Path(d) for d in dirs]
        self.clip_vision_dirs = [Path(d) for d in clip_vision_dirs or []]
        self.cache_size = cache_size
        self._encoders: OrderedDict[tuple, Any] = OrderedDict()
        self._files: dict[str, ControlNetFile] | None = None
        self._loaded: OrderedDict[tuple, LoadedControlNet] = OrderedDict()
        self._lock = threading.Lock()

    # --- the list ------------------------------------------------------------------------------------------------

    def refresh(self) -> list[str]:
        files: dict[str, ControlNetFile] = {}
        for folder in self.dirs:
            for path in sorted(_candidates(folder), key=lambda p: p.name.lower()):
                name = path.stem if path.is_file() else path.name
                if name == "None":
                    continue
                title = f"{name} [{_short_hash(path)}]"
                files.setdefault(title, ControlNetFile(title, name, path))
        self._files = files
        return self.titles()

    def titles(self, refresh: bool = False) -> list[str]:
        """The extension's `model_list`: "name [hash]" for every file (not "None")."""
        if refresh or self._files is None:
            self.refresh()
        return list(self._files)

    def find(self, model: str) -> ControlNetFile | None:
        """By title, by name without the hash, or by either case-insensitively (the extension's
        find_closest_lora_model_name); a title whose hash changed still finds the file by its name."""
        if self._files is None:
            self.refresh()
        wanted = model.strip()
        if wanted in self._files:
            return self._files[wanted]
        bare = wanted.split(" [")[0].lower()
        for f in self._files.values():
            if f.title.lower() == wanted.lower() or f.name.lower() == bare:
                return f
        return None

    # --- loading -------------------------------------------------------------------------------------------------

    def load(self, model: str, device: torch.device, dtype: torch.dtype, unet_config: Any,
             checkpoint_family: str, checkpoint_title: str = "the checkpoint", unet=None,
             unet_weights=contextlib.nullcontext) -> LoadedControlNet:
        """The model for `model` on `device`, checked against the checkpoint it will guide (`unet`: that
        checkpoint's UNet, which a Control-LoRA is built on; `unet_weights()`: a context in which its weights are
        readable, for a UNet whose weights an offload plan parks)."""
        found = self.find(model)
        if found is None:
            raise ControlNetLoadError(f"ControlNet model {model!r} not found in "
                                      f"{', '.join(str(d) for d in self.dirs)}")
        # A Control-LoRA depends on the checkpoint's weights: its cache entry is per checkpoint.
        key = (found.path, found.title, str(device), dtype, checkpoint_title)
        with self._lock:
            loaded = self._loaded.get(key)
            if loaded is None:
                with unet_weights():
                    loaded = load_file(found.path, found.title, device, dtype,
                                       getattr(unet_config, "addition_time_embed_dim", None), unet,
                                       getattr(unet_config, "axes_dims_rope", None))
                self._loaded[key] = loaded
                while len(self._loaded) > max(1, self.cache_size):
                    self._loaded.popitem(last=False)
            self._loaded.move_to_end(key)
        check_family(loaded, checkpoint_family, unet_config, checkpoint_title)
        if loaded.kind == "sd3" and unet is not None:
            with unet_weights():
                problem = sd3_controlnet.fit_to(loaded.model, unet)
            if problem:
                raise ControlNetLoadError(f"{loaded.title} cannot guide {checkpoint_title}: {problem}")
        return loaded


    def encoder(self, weights, device: torch.device, dtype: torch.dtype):
        """The CLIP vision encoder an IP-Adapter reads (found by width in models/clip_vision), loaded once."""
        try:
            path = ip_adapter.find_encoder(self.clip_vision_dirs, weights)
        except detect.ControlNetFileError as e:
            raise ControlNetLoadError(str(e)) from None
        key = (path, str(device), dtype)
        with self._lock:
            if key not in self._encoders:
                from modules.models.loader import ModelLoadError

                try:
                    self._encoders[key] = ip_adapter.load_encoder(path, device, dtype)
                except ModelLoadError as e:
                    raise ControlNetLoadError(str(e)) from None
                while len(self._encoders) > 1:
                    self._encoders.popitem(last=False)
            return self._encoders[key]


def check_family(loaded: LoadedControlNet, checkpoint_family: str, unet_config: Any, checkpoint_title: str) -> None:
    """An SDXL ControlNet on an SD1.5 checkpoint (or the reverse) fails with shapes; say it in words instead."""
    family = checkpoint_family.split("_")[0]  # sd1_inpaint, sdxl_refiner → their base family
    width = getattr(unet_config, "cross_attention_dim", getattr(unet_config, "joint_attention_dim", None))
    config = getattr(loaded.model, "config", None)  # (a style adapter has none: its family says its width)
    own = getattr(config, "cross_attention_dim",  # T2I-Adapters read no text
                  getattr(config, "joint_attention_dim", None))
    if loaded.kind == "t2i_adapter" and family in ("sd1", "sd2"):
        family = "sd1"  # one adapter family for SD1.x and SD2.x (same 8x8 patches, no text input)
    if loaded.family is not None and family in detect.FAMILY_NAMES and family != loaded.family or (
            width is not None and own is not None and width != own):
        ours = detect.FAMILY_NAMES.get(family, family)
        what = {"t2i_adapter": "T2I-Adapter", "ip_adapter": "IP-Adapter",
                "t2i_style": "T2I-Adapter style"}.get(loaded.kind, "ControlNet")
        theirs = "SD1.x/SD2.x" if loaded.kind == "t2i_adapter" and loaded.family == "sd1" else \
            detect.FAMILY_NAMES.get(loaded.family, f"{own}-wide text")
        raise ControlNetLoadError(f"{loaded.title} is a {theirs} {what}; "
                                  f"{checkpoint_title} is {ours}: pick a {what} made for {ours}")


def load_file(path: Path, title: str, device: torch.device, dtype: torch.dtype,
              added_time_dim: int | None = None, unet=None, rope_axes=None) -> LoadedControlNet:
    """Build the model a file or diffusers folder holds (config from its shapes, or the folder's config.json)."""
    from modules.models.loader import ModelLoadError, _empty, _fill, read_state_dict

    try:
        if path.is_dir():
            sd, config_file = _read_folder(path)
        else:
            sd, config_file = read_state_dict(path, nested=True), None
        if t2i_style.is_style_adapter(sd):
            model = t2i_style.build(sd, dtype).to(device)
            width = model.proj.shape[1]
            log.info("T2I-Adapter style %s loaded (%d tokens)", title, model.tokens)
            return LoadedControlNet(title=title, model=model, kind="t2i_style",
                                    family={768: "sd1", 1024: "sd2", 2048: "sdxl"}.get(width))
        if ip_adapter.is_ip_adapter(sd):
            weights, family = ip_adapter.parse(sd)
            log.info("IP-Adapter %s loaded (%s%s)", title, detect.FAMILY_NAMES.get(family, "family by width"),
                     ", plus" if weights.plus else "")
            return LoadedControlNet(title=title, model=weights, kind="ip_adapter", family=family)
        if control_lora.is_control_lora(sd):
            if unet is None:
                raise detect.ControlNetFileError("a Control-LoRA needs the checkpoint's UNet to build on")
            sd = control_lora.merge(sd, unet)
        if sd3_controlnet.is_sd3_controlnet(sd):
            converted = sd3_controlnet.to_diffusers(sd)
            spec = sd3_controlnet.spec(converted, getattr(unet, "config", None))
        elif flux_controlnet.is_flux_controlnet(sd):
            converted = flux_controlnet.to_diffusers(sd)
            spec = flux_controlnet.spec(converted, rope_axes)
        elif t2i_adapter.is_t2i_adapter(sd):
            converted = t2i_adapter.to_diffusers(sd)
            spec = t2i_adapter.spec(converted)
        else:
            converted = detect.to_diffusers(sd)
            spec = detect.spec_from_diffusers(converted, added_time_dim)
    except (ModelLoadError, detect.ControlNetFileError) as e:
        message = str(e) if str(e).startswith(path.name) else f"{path.name}: {e}"
        raise ControlNetLoadError(message) from None
    from diffusers import ControlNetModel, ControlNetUnionModel, FluxControlNetModel, SD3ControlNetModel, T2IAdapter

    cls = {"union": ControlNetUnionModel, "t2i_adapter": T2IAdapter, "flux": FluxControlNetModel,
           "sd3": SD3ControlNetModel}.get(spec.kind, ControlNetModel)
    config = dict(spec.config)
    if config_file is not None:  # a folder's own config says what shapes cannot (heads, upcast, ...)
        config.update({k: v for k, v in json.loads(config_file.read_text()).items() if not k.startswith("_")})
    try:
        model = _fill(_empty(cls, config), converted, "the ControlNet", path.name, dtype)
    except ModelLoadError as e:
        raise ControlNetLoadError(str(e)) from None
    except (RuntimeError, ValueError) as e:  # a tensor whose shape the config does not fit
        raise ControlNetLoadError(f"{path.name}: not a ControlNet this program can build ({str(e)[:200]})") from None
    log.info("ControlNet %s loaded (%s, %s)", title, detect.FAMILY_NAMES[spec.family], spec.kind)
    return LoadedControlNet(title=title, model=model.to(device), kind=spec.kind, family=spec.family)


def _read_folder(path: Path):
    from modules.models.loader import ModelLoadError, read_state_dict

    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                 "diffusion_pytorch_model.bin"):
        if (path / name).is_file():
            config = path / "config.json"
            return read_state_dict(path / name), config if config.is_file() else None
    raise ModelLoadError(f"{path.name}: a folder without diffusion_pytorch_model.safetensors")


def _candidates(folder: Path):
    """Model files under `folder` (recursively, as the extension) and diffusers folders (with config.json)."""
    if not folder.is_dir():
        return
    for p in folder.rglob("*"):
        if p.is_file() and p.suffix.lower() in MODEL_EXTENSIONS and not (p.parent / "config.json").is_file():
            yield p
        elif p.is_dir() and (p / "config.json").is_file():
            yield p


def _short_hash(path: Path) -> str:
    """A1111's old 8-digit model hash, which the extension shows after each name."""
    if path.is_dir():
        weights = next((f for f in sorted(path.iterdir()) if f.suffix in (".safetensors", ".bin")), None)
        return hashes.model_hash_legacy(weights) if weights else "00000000"
    return hashes.model_hash_legacy(path)

"""Typed generation requests and results, with A1111's `/sdapi/v1/txt2img` and `/img2img` field names and defaults.

The UI, the HTTP API and the command-line client all build these; `from_dict` is the one place where outside
input is checked, so a bad field becomes one clear `RequestError` instead of a failure deep in sampling.
"""
from __future__ import annotations

import base64
import dataclasses
import io
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


class RequestError(ValueError):
    """A request field is missing, of the wrong type or out of range; the message names the field."""


# Always-on scripts of extensions that are built in here: requests naming them work without the extension.
BUILTIN_ALWAYSON_SCRIPTS = ("controlnet",)


@dataclass
class GenerationRequest:
    """Fields shared by txt2img and img2img (A1111's StableDiffusionProcessing, API defaults)."""

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] | None = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = None
    sampler_index: str = "Euler"
    scheduler: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    distilled_cfg_scale: float = 3.5  # Forge's field: Flux dev's distilled guidance (other families ignore it)
    width: int = 512
    height: int = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] = field(default_factory=dict)
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool = False
    comments: dict[str, Any] | None = None
    script_name: str | None = None
    script_args: list[Any] = field(default_factory=list)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = field(default_factory=dict)
    force_task_id: str | None = None
    infotext: str | None = None
    # Built in, read from alwayson_scripts["controlnet"] (the sd-webui-controlnet extension's API) or set by the UI:
    # modules.controlnet.unit_request.ControlNetUnitRequest, one per unit
    controlnet_units: list[Any] = field(default_factory=list)

    mode = "txt2img"

    def external_alwayson_scripts(self) -> dict[str, Any]:
        """The always-on scripts an extension must provide: those named in the request, less the built-in ones."""
        return {k: v for k, v in (self.alwayson_scripts or {}).items() if k.lower() not in BUILTIN_ALWAYSON_SCRIPTS}

    @property
    def effective_sampler(self) -> str:
        return self.sampler_name or self.sampler_index or "Euler"

    def validate(self) -> None:
        if self.steps < 1 or self.steps > 1000:
            raise RequestError(f"steps must be between 1 and 1000, got {self.steps}")
        for name in ("width", "height"):
            v = getattr(self, name)
            if v < 64 or v > 8192:
                raise RequestError(f"{name} must be between 64 and 8192, got {v}")
        if self.batch_size < 1 or self.batch_size > 64:
            raise RequestError(f"batch_size must be between 1 and 64, got {self.batch_size}")
        if self.n_iter < 1 or self.n_iter > 1000:
            raise RequestError(f"n_iter must be between 1 and 1000, got {self.n_iter}")
        if not 0.0 <= self.subseed_strength <= 1.0:
            raise RequestError(f"subseed_strength must be between 0 and 1, got {self.subseed_strength}")
        if self.cfg_scale < 0 or self.cfg_scale > 100:
            raise RequestError(f"cfg_scale must be between 0 and 100, got {self.cfg_scale}")
        if not 0 <= self.distilled_cfg_scale <= 100:
            raise RequestError(f"distilled_cfg_scale must be between 0 and 100, got {self.distilled_cfg_scale}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], image_base: Path | None = None):
        """Build from a JSON-like dict; unknown fields are ignored (as A1111's API does), bad ones raise."""
        if not isinstance(data, dict):
            raise RequestError("the request must be a JSON object")
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name in data and f.name != "controlnet_units":
                kwargs[f.name] = _coerce(f.name, data[f.name], hints[f.name], image_base)
        req = cls(**kwargs)
        payload = next((v for k, v in req.alwayson_scripts.items() if k.lower() == "controlnet"), None)
        if payload is not None:
            from modules.controlnet.unit_request import parse_units

            req.controlnet_units = parse_units(payload, image_base)
        req.validate()
        return req

    def to_dict(self) -> dict[str, Any]:
        """The request as A1111 echoes it back in `parameters` (images left out)."""
        out = {}
        for f in dataclasses.fields(self):
            if f.name == "controlnet_units":  # echoed as sent, in alwayson_scripts
                continue
            v = getattr(self, f.name)
            if isinstance(v, Image.Image) or (isinstance(v, list) and v and isinstance(v[0], Image.Image)):
                v = None
            out[f.name] = v
        return out


@dataclass
class Txt2ImgRequest(GenerationRequest):
    enable_hr: bool = False
    denoising_strength: float | None = None
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""

    mode = "txt2img"

    def validate(self) -> None:
        super().validate()
        if self.enable_hr:
            if self.hr_scale < 1.0 and not (self.hr_resize_x or self.hr_resize_y):
                raise RequestError(f"hr_scale must be at least 1, got {self.hr_scale}")
            if self.denoising_strength is not None and not 0.0 <= self.denoising_strength <= 1.0:
                raise RequestError(f"denoising_strength must be between 0 and 1, got {self.denoising_strength}")


@dataclass
class Img2ImgRequest(GenerationRequest):
    init_images: list[Image.Image] = field(default_factory=list)
    resize_mode: int = 0
    denoising_strength: float = 0.75
    image_cfg_scale: float | None = None
    mask: Image.Image | None = None
    mask_blur: int | None = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float | None = None
    latent_mask: Image.Image | None = None
    include_init_images: bool = False

    mode = "img2img"

    def __post_init__(self):
        if self.mask_blur is not None:  # A1111: mask_blur sets both directions
            self.mask_blur_x = self.mask_blur_y = int(self.mask_blur)

    def validate(self) -> None:
        super().validate()
        if not self.init_images:
            raise RequestError("init_images: at least one init image is required")
        if not 0.0 <= self.denoising_strength <= 1.0:
            raise RequestError(f"denoising_strength must be between 0 and 1, got {self.denoising_strength}")
        if self.resize_mode not in (0, 1, 2, 3):
            raise RequestError(f"resize_mode must be 0-3, got {self.resize_mode}")
        if self.inpainting_fill not in (0, 1, 2, 3):
            raise RequestError(f"inpainting_fill must be 0-3 (fill, original, latent noise, latent nothing), "
                               f"got {self.inpainting_fill}")
        if self.mask_blur_x < 0 or self.mask_blur_y < 0:
            raise RequestError("mask_blur must be >= 0")


def _coerce(name: str, value: Any, hint: Any, image_base: Path | None) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(name, value, inner[0], image_base)
    if hint is Image.Image:
        return decode_image(value, name, image_base)
    if origin is list:
        if not isinstance(value, list):
            raise RequestError(f"{name} must be a list")
        return [_coerce(name, v, args[0], image_base) for v in value] if args else list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise RequestError(f"{name} must be an object")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise RequestError(f"{name} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise RequestError(f"{name} must be an integer, got {value!r}")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise RequestError(f"{name} must be an integer, got {value!r}") from None
        if f != int(f):
            raise RequestError(f"{name} must be an integer, got {value!r}")
        return int(f)
    if hint is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise RequestError(f"{name} must be a number, got {value!r}") from None
    if hint is str:
        if not isinstance(value, (str, int, float)):
            raise RequestError(f"{name} must be a string")
        return str(value)
    return value


def _image_from_array(value: np.ndarray, name: str) -> Image.Image:
    if value.dtype != np.uint8 or value.ndim not in (2, 3) or (value.ndim == 3 and value.shape[2] not in (1, 3, 4)):
        raise RequestError(f"{name}: an image array must be uint8 HxW, HxWx3 or HxWx4, got {value.dtype} "
                           f"{'x'.join(map(str, value.shape))}")
    return Image.fromarray(np.ascontiguousarray(value[:, :, 0] if value.ndim == 3 and value.shape[2] == 1 else value))


def decode_image(value: Any, name: str = "image", base: Path | None = None) -> Image.Image:
    """A PIL image from a PIL image, a uint8 array (what extensions hand over), raw base64, a `data:` URI, or (for
    the CLI) a file path."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, np.ndarray):
        return _image_from_array(value, name)
    if not isinstance(value, str) or not value:
        raise RequestError(f"{name}: expected an image (base64, data URI or file path)")
    if value.startswith("data:"):
        value = value.split(",", 1)[-1]
    if base is not None and len(value) < 4096:
        p = Path(value)
        p = p if p.is_absolute() else base / p
        if p.is_file():
            try:
                with Image.open(p) as im:
                    im.load()
                    return im.copy()
            except OSError as e:
                raise RequestError(f"{name}: cannot read image file {p}: {e}") from None
    try:
        raw = base64.b64decode(value, validate=False)
        with Image.open(io.BytesIO(raw)) as im:
            im.load()
            return im.copy()
    except Exception:
        raise RequestError(f"{name}: not a valid image (expected base64 PNG/JPEG/WebP or a data URI)") from None

"""The sd-webui-controlnet extension's `external_code` module, for extensions that drive ControlNet from Python.

Compatibility shim. Other extensions (ADetailer, AnimateDiff, Deforum, regional prompters …) import it as
``from scripts import external_code`` or ``importlib.import_module("extensions[-builtin].sd-webui-controlnet.scripts
.external_code")`` and read or replace the ControlNet units of a `p` object. The units live in `p.script_args` in
the slice of an always-on script titled "ControlNet" (`extensions-builtin/sd-webui-controlnet/scripts/controlnet.py`),
as in A1111; `modules.processing_compat` fills that slice from the request's units before the scripts run and reads it
back into the request when `process_images(p)` generates, so a unit an extension adds or changes is what runs, checked
as an API unit would be.
"""
from __future__ import annotations

import copy
import logging
from enum import Enum
from typing import Any

import numpy as np

from modules.controlnet.unit_request import (ControlMode, ControlNetUnitRequest, HiResFixOption, ResizeMode,
                                             RESIZE_MODE_ALIASES)

log = logging.getLogger(__name__)

__all__ = [
    "ResizeMode", "ControlMode", "HiResFixOption", "BatchOption", "InputMode", "ControlNetUnit", "get_api_version",
    "resize_mode_from_value", "control_mode_from_value", "visualize_inpaint_mask", "pixel_perfect_resolution",
    "to_base64_nparray", "get_all_units_in_processing", "get_all_units", "get_all_units_from",
    "get_single_unit_from", "get_max_models_num", "to_processing_unit", "update_cn_script_in_processing",
    "update_cn_script", "update_cn_script_in_place", "get_models", "get_modules", "get_modules_detail",
    "find_cn_script", "is_cn_script", "resize_mode_aliases",
]


class BatchOption(str, Enum):
    DEFAULT = "All ControlNet units for all images in a batch"
    SEPARATE = "Each ControlNet unit for each image in a batch"


class InputMode(str, Enum):
    SIMPLE = "simple"
    BATCH = "batch"
    MERGE = "merge"


resize_mode_aliases = {alias: mode.value for alias, mode in RESIZE_MODE_ALIASES.items()}

# The extension's ControlNetUnit fields and defaults (internal_controlnet/args.py). The defaults are the
# extension's own: a unit made in code is off until `enabled=True`.
_DEFAULTS: dict[str, Any] = {
    "is_ui": False, "input_mode": InputMode.SIMPLE, "batch_images": None, "output_dir": "", "loopback": False,
    "enabled": False, "module": "none", "model": "None", "weight": 1.0, "image": None,
    "resize_mode": ResizeMode.INNER_FIT, "low_vram": False, "processor_res": -1, "threshold_a": -1.0,
    "threshold_b": -1.0, "guidance_start": 0.0, "guidance_end": 1.0, "pixel_perfect": False,
    "control_mode": ControlMode.BALANCED, "inpaint_crop_input_image": True, "hr_option": HiResFixOption.BOTH,
    "save_detected_map": True, "advanced_weighting": None, "effective_region_mask": None, "pulid_mode": "Fidelity",
    "union_control_type": "Unknown", "ipadapter_input": None, "mask": None, "batch_mask_dir": None,
    "animatediff_batch": False, "batch_modifiers": [], "batch_image_files": [], "batch_keyframe_idx": None,
}
_LEGACY = {"input_image": "image", "guidance": "guidance_end", "lowvram": "low_vram", "mask_image": "mask"}
# Fields held as pictures: compared by identity when telling whether an extension changed a unit.
_PICTURES = ("image", "mask", "effective_region_mask", "batch_images", "ipadapter_input")
# Fields of the request a unit becomes (the API's unit fields).
_REQUEST_FIELDS = ("enabled", "module", "model", "weight", "image", "mask", "resize_mode", "low_vram",
                   "processor_res", "threshold_a", "threshold_b", "guidance_start", "guidance_end", "pixel_perfect",
                   "control_mode", "hr_option", "save_detected_map", "advanced_weighting", "union_control_type",
                   "inpaint_crop_input_image", "effective_region_mask", "ipadapter_input", "input_mode",
                   "batch_images", "output_dir")


def get_api_version() -> int:
    return 3


def resize_mode_from_value(value) -> ResizeMode:
    """A resize mode from its value, an alias, or the extension's int form (3 = Just Resize)."""
    if isinstance(value, ResizeMode):
        return value
    if isinstance(value, str):
        return ResizeMode(resize_mode_aliases.get(value, value))
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"resize mode must be 0-3, got {value}")
        modes = list(ResizeMode)
        return modes[value] if value < len(modes) else ResizeMode.RESIZE
    raise TypeError(f"resize mode must be a string or an int, got {type(value).__name__}")


def control_mode_from_value(value) -> ControlMode:
    if isinstance(value, ControlMode):
        return value
    if isinstance(value, int):
        return list(ControlMode)[value]
    return ControlMode(value)


class ControlNetUnit:
    """One ControlNet unit as the extension's code knows it: plain attributes with the extension's names."""

    def __init__(self, **kwargs):
        for alias, target in _LEGACY.items():
            if alias in kwargs:
                kwargs.setdefault(target, kwargs.pop(alias))
        unknown = set(kwargs) - set(_DEFAULTS)
        if unknown:
            raise TypeError(f"ControlNetUnit got unknown fields: {', '.join(sorted(unknown))}")
        for name, default in _DEFAULTS.items():
            setattr(self, name, kwargs.get(name, copy.copy(default)))
        self.resize_mode = resize_mode_from_value(self.resize_mode)
        self.control_mode = control_mode_from_value(self.control_mode)
        self.hr_option = HiResFixOption(self.hr_option) if isinstance(self.hr_option, str) else self.hr_option

    @classmethod
    def from_dict(cls, values: dict) -> ControlNetUnit:
        """From an API-style dict: legacy aliases taken, unknown keys ignored (the extension's extra="ignore")."""
        values = {_LEGACY.get(k, k): v for k, v in values.items()}
        return cls(**{k: v for k, v in values.items() if k in _DEFAULTS})

    @classmethod
    def from_request(cls, req: ControlNetUnitRequest) -> ControlNetUnit:
        """The unit the scripts see for one of the request's units; turned back into that same request object
        while no field is changed (`to_request`)."""
        unit = cls(**{k: getattr(req, k) for k in _DEFAULTS if k not in ("image", "mask", "effective_region_mask")
                      and hasattr(req, k)})
        if req.images:
            pictures = [{"image": np.asarray(im.image), "mask": None if im.mask is None else np.asarray(im.mask)}
                        for im in req.images]
            unit.image = pictures[0] if len(pictures) == 1 else pictures
        if req.effective_region_mask is not None:
            unit.effective_region_mask = np.asarray(req.effective_region_mask)
        object.__setattr__(unit, "_source", (req, dict(vars(unit))))
        return unit

    def _fields(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def unchanged_source(self) -> ControlNetUnitRequest | None:
        """The request this unit was made from, if no field has been changed since."""
        source = self.__dict__.get("_source")
        if source is None:
            return None
        req, snapshot = source
        now = self._fields()
        if now.keys() != snapshot.keys():
            return None
        for k, v in now.items():
            if v is snapshot[k]:
                continue
            if k in _PICTURES or isinstance(v, np.ndarray) or v != snapshot[k]:
                return None
        return req

    def to_request(self, index: int = 0) -> ControlNetUnitRequest:
        """The request unit, checked as the API checks a unit (RequestError naming `controlnet[i].field`)."""
        same = self.unchanged_source()
        if same is not None:
            return same
        data = {}
        for k in _REQUEST_FIELDS:
            v = getattr(self, k, None)
            data[k] = v.value if isinstance(v, Enum) else v
        return ControlNetUnitRequest.from_dict(data, field_prefix=f"controlnet[{index}]")

    def __eq__(self, other) -> bool:
        if not isinstance(other, ControlNetUnit):
            return NotImplemented
        a, b = self._fields(), other._fields()
        return a.keys() == b.keys() and all(
            (x is y) or (not isinstance(x, np.ndarray) and not isinstance(y, np.ndarray) and x == y)
            for x, y in ((a[k], b[k]) for k in a))

    __hash__ = None

    def __repr__(self) -> str:
        return (f"ControlNetUnit(enabled={self.enabled}, module={self.module!r}, model={self.model!r}, "
                f"weight={self.weight})")


def visualize_inpaint_mask(img: np.ndarray) -> np.ndarray:
    """An RGBA input with its mask shown half transparent (the extension's preview)."""
    if img.ndim == 3 and img.shape[2] == 4:
        result = img.copy()
        result[:, :, 3] = 255 - result[:, :, 3] // 2
        return np.ascontiguousarray(result)
    return img


def pixel_perfect_resolution(image: np.ndarray, target_H: int, target_W: int, resize_mode) -> int:  # noqa: N803
    from modules.controlnet.prepare import pixel_perfect_resolution as ours

    height, width = image.shape[:2]
    return ours((width, height), target_W, target_H, resize_mode_from_value(resize_mode).value)


def to_base64_nparray(encoding: str) -> np.ndarray:
    from modules.request_types import decode_image

    return np.array(decode_image(encoding)).astype("uint8")


# --- the units of a p object ---

def find_cn_script(script_runner):
    """The runner's always-on script titled "ControlNet", or None."""
    if script_runner is None:
        return None
    for script in script_runner.alwayson_scripts:
        if is_cn_script(script):
            return script
    return None


def is_cn_script(script) -> bool:
    return script.title().lower() == "controlnet"


def _is_unit(arg) -> bool:
    return isinstance(arg, (ControlNetUnit, dict)) or (
        hasattr(arg, "__dict__") and set(_DEFAULTS) <= set(vars(arg)))


def to_processing_unit(unit) -> ControlNetUnit:
    """A ControlNetUnit from a unit, a dict, or a look-alike object (a unit from another copy of this module)."""
    if isinstance(unit, ControlNetUnit):
        return unit
    if isinstance(unit, dict):
        return ControlNetUnit.from_dict(unit)
    if hasattr(unit, "__dict__"):
        return ControlNetUnit.from_dict({k: v for k, v in vars(unit).items() if not k.startswith("_")})
    raise TypeError(f"not a ControlNet unit: {type(unit).__name__}")


def get_all_units_from(script_args) -> list[ControlNetUnit]:
    """The units among the ControlNet script's own arguments."""
    return [to_processing_unit(a) for a in script_args if _is_unit(a)]


def get_all_units(script_runner, script_args) -> list[ControlNetUnit]:
    cn = find_cn_script(script_runner)
    if cn is None or script_args is None:
        return []
    return get_all_units_from(list(script_args)[cn.args_from:cn.args_to])


def get_all_units_in_processing(p) -> list[ControlNetUnit]:
    return get_all_units(p.scripts, p.script_args)


def get_single_unit_from(script_args, index: int = 0) -> ControlNetUnit | None:
    i = 0
    while i < len(script_args) and index >= 0:
        if index == 0 and script_args[i] is not None:
            return to_processing_unit(script_args[i])
        i += 1
        index -= 1
    return None


def get_max_models_num() -> int:
    from modules import shared

    return int(shared.opts.data.get("control_net_unit_count", 3))


def _padded(cn_units: list) -> list:
    units = list(cn_units)
    return units + [ControlNetUnit(enabled=False) for _ in range(max(get_max_models_num() - len(units), 0))]


def _place(script_runner, args: list, cn_units: list) -> bool:
    """Put the units in the ControlNet script's slice of `args`, moving later always-on scripts' slices."""
    cn = find_cn_script(script_runner)
    if cn is None or len(args) < cn.args_from:
        return False
    units = _padded(cn_units)
    diff = 0
    for script in script_runner.alwayson_scripts:
        if script is cn:
            diff = len(units) - (cn.args_to - cn.args_from)
            args[cn.args_from:cn.args_to] = units
            cn.args_to = cn.args_from + len(units)
        else:
            script.args_from += diff
            script.args_to += diff
    return True


def update_cn_script(script_runner, script_args, cn_units):
    """`script_args` (a list or tuple, returned as the same type) with `cn_units` as ControlNet's arguments."""
    kind = type(script_args)
    if kind not in (list, tuple):
        raise TypeError(f"script_args must be a list or tuple, got {kind.__name__}")
    args = list(script_args)
    return kind(args) if _place(script_runner, args, cn_units) else script_args


def update_cn_script_in_processing(p, cn_units, **_kwargs) -> None:
    p.script_args = update_cn_script(p.scripts, p.script_args_value, cn_units)


def update_cn_script_in_place(script_runner, script_args: list, cn_units, **_kwargs) -> None:
    if not isinstance(script_args, list):
        raise TypeError("update_cn_script_in_place needs a list (use update_cn_script for tuples)")
    _place(script_runner, script_args, cn_units)


# --- what is installed ---

def get_models(update: bool = False) -> list[str]:
    """ControlNet model titles ("name [hash]"), as `ControlNetUnit.model` takes them."""
    from modules.a1111._engine import engine

    return engine().controlnets.titles(update)


def get_modules(alias_names: bool = False) -> list[str]:
    from modules.controlnet import preprocessors

    return [p.label if alias_names else p.name for p in preprocessors.all_sorted()]


def get_modules_detail(alias_names: bool = False) -> dict[str, Any]:
    from modules.controlnet import preprocessors

    return {(p.label if alias_names else p.name): {
        "model_free": p.model_free,
        "sliders": [s.api_json() for s in (p.resolution, p.slider_1, p.slider_2) if s is not None],
    } for p in preprocessors.all_sorted()}


def units_for_request(args: list, script) -> list[ControlNetUnitRequest] | None:
    """The request units for the ControlNet script's slice of `args`; None when the slice holds no unit (the
    request's own units stay)."""
    units = get_all_units_from(args[script.args_from:script.args_to])
    if not units:
        return None
    # disabled units nobody sent (the padding to the unit count) are not the request's
    return [u.to_request(i) for i, u in enumerate(units) if u.enabled or u.unchanged_source() is not None]


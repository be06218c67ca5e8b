"""ControlNet units as API clients send them: the sd-webui-controlnet extension's unit payloads, parsed and checked.

A1111 clients drive ControlNet through ``alwayson_scripts["controlnet"] = {"args": [unit, ...]}``, each unit a dict
with the extension's field names (``internal_controlnet/args.py`` ``ControlNetUnit``). :func:`parse_units` turns
that into :class:`ControlNetUnitRequest` objects; any bad field raises one :class:`RequestError` whose message names
it as ``controlnet[i].field`` (the key the client sent), so the HTTP API can answer 422 with it.

What is accepted (everything the extension accepts, current and pre-pydantic versions):

- legacy aliases ``input_image`` -> image, ``guidance`` -> guidance_end, ``lowvram`` -> low_vram (an alias together
  with its field is an error), and Forge's ``mask_image`` -> mask (an error only when both are non-null);
- image forms: a base64 / data-URI string (a file path only when ``image_base`` is given) with an optional top-level
  ``mask``; ``{"image": ..., "mask": ...}``; ``[image, mask]``; a list of ``{"image", "mask"}`` dicts. ``""``,
  ``[]`` and ``null`` mean no image (then the img2img input is used, as in the extension);
- enums by value (``"Crop and Resize"``, case-insensitive), the extension's resize-mode aliases
  (``"Inner Fit (Scale to Fit)"`` ...), the pre-pydantic int forms (resize_mode 0-2 by index and 3 = Just Resize;
  control_mode and hr_option 0-2) and the ``"HiResFixOption.LOW_RES_ONLY"`` form of its enums' ``str()``;
  also (beyond the extension) the member name alone, any case: ``"BALANCED"``, ``"inner_fit"``;
- numbers as JSON numbers or numeric strings, booleans as JSON booleans, 0/1 or true/false/yes/no/on/off strings;
- ``input_mode`` ``"simple"`` / ``"batch"`` / ``"merge"`` (the extension's ``InputMode``); a batch unit's
  ``batch_images`` (a folder on the server, or a list of images) and ``output_dir`` are kept for
  :mod:`modules.img2img_batch`, which runs it; other modes ignore them, as the extension does;
- unknown fields are ignored (the extension's ``extra="ignore"``); ``null`` for a field means its default
  (except ``enabled: null``, which disables the unit, as the pre-pydantic extension did).

Images are decoded for enabled units only (the extension reads a unit's images only when it runs it), and are
normalised the way the extension's ``get_input_images_rgba`` and ``choose_input_image`` prepare
them for the preprocessor, so the caller needs no extension knowledge:

- an image with alpha is composited onto white (the extension's ``HWC3``); the result is RGB;
- a mask becomes mode ``"L"`` from its first channel (an RGBA mask composited onto white first), and must match
  its image's size;
- for units whose module reads no mask (anything but inpaint and CLIP-vision / IP-Adapter modules), a mask that
  really marks something (not all <= 5 and not all >= 250) is the control input itself: "canvas scribble mode",
  the mask replicated to RGB becomes the image. Masks of such units are then dropped (the extension ignores them).
  Inpaint and CLIP units keep the mask (``None`` means an all-zero alpha in the extension).

``module`` and ``model`` are kept as given (whitespace stripped); the caller checks them against what is installed.

Infotext: :meth:`ControlNetUnitRequest.infotext` is the extension's ``serialize()``
(``Module: canny, Model: ..., Weight: 1.0, ...``); :func:`infotext_fields` returns those strings *raw* under the
keys ``"ControlNet 0"``, ``"ControlNet 1"``, ... : the caller passes them to
:func:`modules.infotext.create_infotext`, which JSON-quotes them (they contain commas) as A1111 does.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from modules.request_types import RequestError, decode_image

__all__ = [
    "ResizeMode",
    "ControlMode",
    "HiResFixOption",
    "InputMode",
    "UNION_CONTROL_TYPES",
    "MODEL_FREE_MODULES",
    "UnitImage",
    "ControlNetUnitRequest",
    "parse_units",
    "infotext_fields",
    "units_from_infotext",
]

log = logging.getLogger(__name__)


class ResizeMode(str, Enum):
    RESIZE = "Just Resize"
    INNER_FIT = "Crop and Resize"
    OUTER_FIT = "Resize and Fill"

    def int_value(self) -> int:
        """The A1111 img2img ``resize_mode`` number (0 just resize, 1 crop and resize, 2 resize and fill)."""
        return list(ResizeMode).index(self)


class ControlMode(str, Enum):
    BALANCED = "Balanced"
    PROMPT = "My prompt is more important"
    CONTROL = "ControlNet is more important"


class HiResFixOption(str, Enum):
    BOTH = "Both"
    LOW_RES_ONLY = "Low res only"
    HIGH_RES_ONLY = "High res only"


class InputMode(str, Enum):
    """The extension's unit input tabs: one picture, a folder (one generation per picture of it; in img2img Batch,
    picture k of the batch takes the folder's k-th), or several pictures for one generation ("Multi-Inputs")."""
    SIMPLE = "simple"
    BATCH = "batch"
    MERGE = "merge"


# The extension's aliases for resize modes (external_code.resize_mode_aliases; deforum sends these).
RESIZE_MODE_ALIASES = {
    "Inner Fit (Scale to Fit)": ResizeMode.INNER_FIT,
    "Outer Fit (Shrink to Fit)": ResizeMode.OUTER_FIT,
    "Scale to Fit (Inner Fit)": ResizeMode.INNER_FIT,
    "Envelope (Outer Fit)": ResizeMode.OUTER_FIT,
}

# ControlNetUnionControlType values (scripts/enums.py); union_control_type is kept as one of these strings.
UNION_CONTROL_TYPES = ("OpenPose", "Depth", "Soft Edge", "Hard Edge", "Normal Map", "Segmentation", "Tile",
                       "Inpaint", "Unknown")

# Preprocessors that need no ControlNet model (the extension's `model_free: True`): attention injection and ReVision.
MODEL_FREE_MODULES = frozenset({
    "reference_only", "reference_adain", "reference_adain+attn", "revision_clipvision", "revision_ignore_prompt",
})

# Legacy field names (ControlNetUnit.legacy_field_alias): alias -> field. Sending both is an error.
LEGACY_ALIASES = {"guidance": "guidance_end", "lowvram": "low_vram", "input_image": "image"}

# Fields the extension writes into / reads from infotext, in its order (ControlNetUnit.infotext_fields()).
INFOTEXT_FIELDS = ("module", "model", "weight", "resize_mode", "processor_res", "threshold_a", "threshold_b",
                   "guidance_start", "guidance_end", "pixel_perfect", "control_mode")

# Fields read back from a pasted infotext (the extension's parse() takes any field; these are its scalar ones).
_INFOTEXT_READABLE = INFOTEXT_FIELDS + ("low_vram", "hr_option", "save_detected_map", "union_control_type",
                                        "inpaint_crop_input_image")

_TRUE = {"true", "1", "yes", "on", "t", "y"}
_FALSE = {"false", "0", "no", "off", "f", "n"}


@dataclass
class UnitImage:
    """One input of a unit: an RGB image and an optional mask (mode ``"L"``, same size), as the preprocessor reads them.

    ``mask`` is only set for modules that read one (inpaint, CLIP vision / IP-Adapter); see the module doc.
    """

    image: Image.Image
    mask: Image.Image | None = None


@dataclass
class ControlNetUnitRequest:
    """One ControlNet unit of a request, with the extension's field names and API defaults (except ``enabled``)."""

    enabled: bool = True  # a dict without "enabled" is enabled when it names a model (old clients omit it)
    module: str = "none"
    model: str = "None"
    weight: float = 1.0
    images: list[UnitImage] = field(default_factory=list)  # empty: use the img2img input (extension behaviour)
    resize_mode: ResizeMode = ResizeMode.INNER_FIT
    low_vram: bool = False
    processor_res: int = -1
    threshold_a: float = -1
    threshold_b: float = -1
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    pixel_perfect: bool = False
    control_mode: ControlMode = ControlMode.BALANCED
    hr_option: HiResFixOption = HiResFixOption.BOTH
    save_detected_map: bool = True
    advanced_weighting: list[float] | None = None
    union_control_type: str = "Unknown"
    inpaint_crop_input_image: bool = True
    effective_region_mask: Image.Image | None = None  # mode "L" (the extension reads the first channel)
    pulid_mode: str = "Fidelity"  # PuLID's attention: "Fidelity" | "Extremely style" (pulid.py)
    input_mode: InputMode = InputMode.SIMPLE
    # input_mode "batch": the unit's folder (a path on the server; "" or None: the img2img Batch input folder) or a
    # list of pictures (decoded images, or paths of files the extension would read); ignored in the other modes
    batch_images: Any = None
    output_dir: str = ""  # input_mode "batch" outside img2img Batch: where each generation is saved, named as its map

    def __post_init__(self):
        # One type per field whatever the constructor got (the dataclass defaults -1 are ints): infotext writes
        # str(value), so threshold -1 is always "-1.0", as for a unit the extension's API validated.
        for f in ("weight", "threshold_a", "threshold_b", "guidance_start", "guidance_end"):
            v = getattr(self, f)
            if isinstance(v, int) and not isinstance(v, bool):
                setattr(self, f, float(v))
        if isinstance(self.processor_res, float) and self.processor_res.is_integer():
            self.processor_res = int(self.processor_res)

    # ----------------------------------------------------------------------------------------------------------------
    # What the unit does

    @property
    def active(self) -> bool:
        """Enabled, and has a model or a module that needs none (reference_*, revision_*)."""
        return self.enabled and (_has_model(self.model) or self.module in MODEL_FREE_MODULES)

    @property
    def is_inpaint(self) -> bool:
        """The extension's test for inpaint modules: they read the image with its mask."""
        return "inpaint" in self.module

    @property
    def uses_clip(self) -> bool:
        """The extension's test for CLIP-vision modules (IP-Adapter, ReVision): they read the image with its mask."""
        return _uses_clip(self.module)

    # ----------------------------------------------------------------------------------------------------------------
    # From a request

    @classmethod
    def from_dict(cls, data: dict, field_prefix: str = "controlnet[0]",
                  image_base: Path | None = None) -> ControlNetUnitRequest:
        """Build from one unit dict of the extension's API; raises :class:`RequestError` naming the bad field.

        Images are decoded only for enabled units (a disabled unit gets ``images == []``, whatever it sent).
        """
        p = field_prefix
        if not isinstance(data, dict):
            raise RequestError(f"{p}: a ControlNet unit must be an object (dict), got {_kind(data)}")
        data = dict(data)
        sent_as: dict[str, str] = {}  # field -> the key the client used, for error messages
        for alias, target in LEGACY_ALIASES.items():
            if alias in data:
                if target in data:
                    raise RequestError(f"{p}.{alias}: conflicts with '{target}' (legacy alias of the same field); "
                                       f"send only '{target}'")
                data[target] = data.pop(alias)
                sent_as[target] = alias
        if data.get("mask_image") is not None:
            if data.get("mask") is not None:
                raise RequestError(f"{p}.mask_image: conflicts with 'mask'; send only one")
            data["mask"] = data["mask_image"]
            sent_as["mask"] = "mask_image"
        if data.get("ipadapter_input") is not None:
            raise RequestError(f"{p}.ipadapter_input: precomputed IP-Adapter embeddings are not supported; "
                               f"send the image instead")

        def name(f: str) -> str:
            return f"{p}.{sent_as.get(f, f)}"

        def get(f: str):
            return data.get(f)

        kw: dict[str, Any] = {}
        if "enabled" in data:
            kw["enabled"] = False if data["enabled"] is None else _bool(name("enabled"), data["enabled"])
        for f in ("module", "model"):
            if get(f) is not None:
                kw[f] = _str(name(f), get(f))
        if "enabled" not in data:  # old clients omit it on the units they use; a bare placeholder stays off
            kw["enabled"] = _has_model(kw.get("model", "None")) or kw.get("module", "none") in MODEL_FREE_MODULES
        for f in ("weight", "threshold_a", "threshold_b", "guidance_start", "guidance_end"):
            if get(f) is not None:
                kw[f] = _float(name(f), get(f))
        if get("processor_res") is not None:
            kw["processor_res"] = _int(name("processor_res"), get("processor_res"))
        for f in ("low_vram", "pixel_perfect", "save_detected_map", "inpaint_crop_input_image"):
            if get(f) is not None:
                kw[f] = _bool(name(f), get(f))
        if get("resize_mode") is not None:
            kw["resize_mode"] = _enum(name("resize_mode"), get("resize_mode"), ResizeMode, RESIZE_MODE_ALIASES,
                                      ints={0: ResizeMode.RESIZE, 1: ResizeMode.INNER_FIT,
                                            2: ResizeMode.OUTER_FIT, 3: ResizeMode.RESIZE})
        if get("control_mode") is not None:
            kw["control_mode"] = _enum(name("control_mode"), get("control_mode"), ControlMode, {},
                                       ints=dict(enumerate(ControlMode)))
        if get("hr_option") is not None:
            kw["hr_option"] = _enum(name("hr_option"), get("hr_option"), HiResFixOption, {},
                                    ints=dict(enumerate(HiResFixOption)))
        if get("input_mode") is not None:
            kw["input_mode"] = _enum(name("input_mode"), get("input_mode"), InputMode, {},
                                     ints=dict(enumerate(InputMode)))
        if kw.get("input_mode") == InputMode.BATCH:
            kw["batch_images"] = _batch_images(name("batch_images"), get("batch_images"), image_base)
            if get("output_dir") is not None:
                kw["output_dir"] = _str(name("output_dir"), get("output_dir"))
        if get("union_control_type") is not None:
            kw["union_control_type"] = _union_type(name("union_control_type"), get("union_control_type"))
        if get("advanced_weighting") is not None:
            value = get("advanced_weighting")
            if not isinstance(value, (list, tuple)):
                raise RequestError(f"{name('advanced_weighting')}: must be a list of numbers, got {_kind(value)}")
            kw["advanced_weighting"] = [_float(f"{name('advanced_weighting')}[{i}]", v) for i, v in enumerate(value)]
        if get("effective_region_mask") is not None:
            kw["effective_region_mask"] = _region_mask(
                decode_image(get("effective_region_mask"), name("effective_region_mask"), image_base))

        unit = cls(**kw)
        if unit.enabled:  # the extension reads a unit's images only when it runs it: a disabled unit's are not checked
            unit.images = _parse_images(data, name, image_base, unit.module)
        unit.validate(field_prefix, sent_as)
        return unit

    def validate(self, field_prefix: str = "controlnet[0]", sent_as: dict[str, str] | None = None) -> None:
        """Range checks (the extension's pydantic constraints); raises :class:`RequestError` naming the field."""
        sent_as = sent_as or {}

        def name(f: str) -> str:
            return f"{field_prefix}.{sent_as.get(f, f)}"

        if not 0.0 <= self.weight <= 2.0:
            raise RequestError(f"{name('weight')}: must be between 0 and 2, got {self.weight}")
        for f in ("guidance_start", "guidance_end"):
            v = getattr(self, f)
            if not 0.0 <= v <= 1.0:
                raise RequestError(f"{name(f)}: must be between 0 and 1, got {v}")
        if self.guidance_start > self.guidance_end:
            raise RequestError(f"{name('guidance_start')}: must be <= guidance_end "
                               f"({self.guidance_start} > {self.guidance_end})")

    def to_dict(self) -> dict[str, Any]:
        """The unit with the extension's field names and plain JSON values; images and the region mask left out."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name in ("images", "effective_region_mask"):
                continue
            v = getattr(self, f.name)
            if f.name == "batch_images" and not (v is None or isinstance(v, str)):
                v = [str(x) for x in v if isinstance(x, (str, Path))] or None  # decoded pictures are left out
            out[f.name] = v.value if isinstance(v, Enum) else (list(v) if isinstance(v, list) else v)
        return out

    # ----------------------------------------------------------------------------------------------------------------
    # Infotext

    def infotext(self) -> str:
        """The extension's ``ControlNetUnit.serialize()``: ``"Module: canny, Model: ..., Control Mode: Balanced"``.

        Values are written as the extension writes them (``str()``; enums by value), so floats keep their ``.0``.
        As in the extension, a unit whose module or model contains ``,`` or ``:`` cannot be written: ``""``.
        """
        values = {_display(f): _serialize_value(getattr(self, f)) for f in INFOTEXT_FIELDS}
        if any("," in v or ":" in v for v in values.values()):
            log.error("ControlNet unit cannot be written to infotext (',' or ':' in a value): %s", values)
            return ""
        return ", ".join(f"{k}: {v}" for k, v in values.items())

    @classmethod
    def from_infotext(cls, text: str, field_prefix: str = "ControlNet") -> ControlNetUnitRequest:
        """Parse :meth:`infotext` back (the extension's ``ControlNetUnit.parse``): an enabled unit without images.

        Any ``Display Name: value`` of the unit's scalar fields is read (e.g. ``Low Vram``, ``Hr Option`` written by
        older versions); other keys are ignored. Raises :class:`RequestError` on text that is not of that form.
        """
        if not isinstance(text, str) or not text.strip():
            raise RequestError(f"{field_prefix}: empty ControlNet infotext")
        data: dict[str, Any] = {}
        for item in text.split(","):
            key, sep, value = item.strip().partition(":")
            if not sep or not key.strip():
                raise RequestError(f"{field_prefix}: not a 'Key: value' item: {item.strip()!r}")
            f = _field_name(key.strip())
            if f in _INFOTEXT_READABLE:
                data[f] = value.strip()
        data["enabled"] = True
        return cls.from_dict(data, field_prefix=field_prefix)


# --------------------------------------------------------------------------------------------------------------------
# Several units


def parse_units(payload: Any, image_base: Path | None = None) -> list[ControlNetUnitRequest]:
    """The units of ``alwayson_scripts["controlnet"]``: ``{"args": [unit, ...]}`` or a bare list of unit dicts.

    Unit ``i`` is reported as ``controlnet[i]`` (its position in the list). ``null`` entries are skipped (the
    extension skips anything that is not a unit); other non-dict entries raise. ``{}`` or ``{"args": null}`` is no
    units (A1111 leaves the script's defaults). Disabled units are returned too (check ``.enabled`` / ``.active``).
    """
    if isinstance(payload, dict):
        if "args" not in payload:
            stray = sorted(k for k in payload if k in _UNIT_KEYS)
            if stray:
                raise RequestError(f"controlnet: expected {{\"args\": [unit, ...]}}, got unit fields "
                                   f"({', '.join(stray)}) directly; wrap the unit in \"args\": [...]")
            return []
        args = payload["args"]
        if args is None:
            return []
        if not isinstance(args, (list, tuple)):
            raise RequestError(f"controlnet.args: must be a list of ControlNet units, got {_kind(args)}")
    elif isinstance(payload, (list, tuple)):
        args = payload
    else:
        raise RequestError(f"controlnet: expected {{\"args\": [unit, ...]}} or a list of units, got {_kind(payload)}")
    units = []
    for i, entry in enumerate(args):
        if entry is None:
            continue
        units.append(ControlNetUnitRequest.from_dict(entry, field_prefix=f"controlnet[{i}]", image_base=image_base))
    return units


def infotext_fields(units: list[ControlNetUnitRequest]) -> dict[str, str]:
    """``{"ControlNet 0": "Module: ...", ...}`` for the enabled units, numbered among them as the extension does.

    The values are raw (unquoted): :func:`modules.infotext.create_infotext` JSON-quotes them, as A1111's
    ``create_infotext`` does, since they contain commas. A unit that cannot be written (``infotext() == ""``) is
    left out, keeping the others' numbers.
    """
    out = {}
    for i, unit in enumerate(u for u in units if u.enabled):
        text = unit.infotext()
        if text:
            out[f"ControlNet {i}"] = text
    return out


_CN_KEY = re.compile(r"^ControlNet (\d+)$")


def units_from_infotext(params: dict[str, str], strict: bool = False) -> list[ControlNetUnitRequest]:
    """Units (enabled, without images) from parsed infotext params: the ``"ControlNet N"`` keys, in N order.

    Values may be raw or still JSON-quoted. An entry that does not parse is skipped with a warning, as the extension
    does when pasting infotext (its older formats are not read); ``strict=True`` raises :class:`RequestError`.
    """
    from modules.infotext import unquote

    found = []
    for key, value in params.items():
        m = _CN_KEY.match(str(key).strip())
        if m and isinstance(value, str):
            found.append((int(m.group(1)), key.strip(), value))
    units = []
    for _, key, value in sorted(found):
        try:
            units.append(ControlNetUnitRequest.from_infotext(unquote(value.strip()), field_prefix=key))
        except RequestError as e:
            if strict:
                raise
            log.warning("Skipping unreadable ControlNet infotext %s: %s", key, e)
    return units


# --------------------------------------------------------------------------------------------------------------------
# Field coercion


_UNIT_KEYS = frozenset(f.name for f in dataclasses.fields(ControlNetUnitRequest)) | {"image", "mask", "input_image"}


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value[:40]!r}" + ("..." if len(value) > 40 else "")
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise RequestError(f"{name}: must be true or false, got {_kind(value)}")


def _float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise RequestError(f"{name}: must be a number, got {_kind(value)}")
    try:
        f = float(value)
    except ValueError:
        raise RequestError(f"{name}: must be a number, got {_kind(value)}") from None
    if not math.isfinite(f):
        raise RequestError(f"{name}: must be a finite number, got {value!r}")
    return f


def _int(name: str, value: Any) -> int:
    f = _float(name, value)
    return int(f)  # pydantic v1 (the extension) truncates: 512.7 -> 512


def _str(name: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RequestError(f"{name}: must be a string, got {_kind(value)}")
    return str(value).strip()


def _enum(name: str, value: Any, enum: type[Enum], aliases: dict[str, Enum], ints: dict[int, Enum]) -> Enum:
    if isinstance(value, enum):
        return value
    choices = ", ".join(repr(e.value) for e in enum)
    sent = value
    if isinstance(value, str) and re.fullmatch(r"\s*\d+(\.0*)?\s*", value):  # "2": an int index from a form or infotext
        value = float(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if float(value).is_integer() and int(value) in ints:
            return ints[int(value)]
        raise RequestError(f"{name}: {sent!r} is not one of {choices} or {min(ints)}-{max(ints)}")
    if isinstance(value, str):
        text = value.strip()
        if text.startswith(f"{enum.__name__}."):  # str() of the extension's enums (pre-pydantic hr_option)
            text = text.split(".", 1)[1]
        lowered = ({k.lower(): v for k, v in aliases.items()} | {k.lower(): e for k, e in enum.__members__.items()}
                   | {e.value.lower(): e for e in enum})
        if text.lower() in lowered:
            return lowered[text.lower()]
        raise RequestError(f"{name}: {value!r} is not one of {choices}")
    raise RequestError(f"{name}: must be one of {choices}, got {_kind(value)}")


def _union_type(name: str, value: Any) -> str:
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, str):
        for t in UNION_CONTROL_TYPES:
            if value.strip().lower() == t.lower():
                return t
    raise RequestError(f"{name}: {value!r} is not one of {', '.join(map(repr, UNION_CONTROL_TYPES))}")


def _batch_images(name: str, value: Any, image_base: Path | None) -> Any:
    """A batch unit's `batch_images`: a folder path (str, kept as given, read when the unit runs), or a list of
    pictures: base64 / data URIs / arrays decoded now, existing file paths kept (the extension reads those)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, (str, Path)):
        return str(value).strip()
    if not isinstance(value, (list, tuple)):
        raise RequestError(f"{name}: must be a folder path or a list of images, got {_kind(value)}")
    out: list[Any] = []
    for i, item in enumerate(value):
        if isinstance(item, Path) or (isinstance(item, str) and len(item) < 4096 and Path(item).is_file()):
            out.append(Path(item))
        else:
            out.append(_to_rgb(decode_image(item, f"{name}[{i}]", image_base)))
    return out or None


def _has_model(model: str) -> bool:
    return bool(model) and model.lower() != "none"


def _uses_clip(module: str) -> bool:
    return ("ip-adapter" in module and "face_id" not in module) or module in (
        "clip_vision", "revision_clipvision", "revision_ignore_prompt")


def _display(f: str) -> str:
    return " ".join(word.capitalize() for word in f.split("_"))


def _field_name(display: str) -> str:
    return "_".join(word.lower() for word in display.split())


def _serialize_value(value: Any) -> str:
    return value.value if isinstance(value, Enum) else str(value)


# --------------------------------------------------------------------------------------------------------------------
# Images


def _parse_images(data: dict, name, image_base: Path | None, module: str) -> list[UnitImage]:
    """The unit's inputs from its ``image`` (+ top-level ``mask``) field, in every form the extension reads."""
    value = data.get("image")
    mask = data.get("mask")
    img_name = name("image")
    if value is None or (isinstance(value, (str, list, tuple)) and len(value) == 0):
        if mask is not None:  # the extension asserts this
            raise RequestError(f"{name('mask')}: a mask was given without an image")
        return []
    pairs: list[tuple[Any, Any, str]] = []  # (image, mask, name for errors)
    if isinstance(value, (list, tuple)):
        if isinstance(value[0], dict):  # [{"image": ..., "mask": ...}, ...]
            for i, entry in enumerate(value):
                if not isinstance(entry, dict):
                    raise RequestError(f"{img_name}[{i}]: expected {{\"image\": ..., \"mask\": ...}} like the other "
                                       f"entries, got {_kind(entry)}")
                pairs.append(_pair_from_dict(entry, f"{img_name}[{i}]"))
        elif len(value) == 2:  # [image, mask]
            if value[0] is None:
                raise RequestError(f"{img_name}[0]: the image of an [image, mask] pair is missing")
            return [_unit_image(value[0], value[1], f"{img_name}[0]", f"{img_name}[1]", image_base, module)]
        else:
            raise RequestError(f"{img_name}: a list must be [image, mask] or a list of {{\"image\", \"mask\"}} "
                               f"objects, got a list of {len(value)} non-objects")
    elif isinstance(value, dict):  # {"image": ..., "mask": ...}
        pairs.append(_pair_from_dict(value, img_name))
    elif isinstance(value, (str, Image.Image, np.ndarray)):
        return [_unit_image(value, mask, img_name, name("mask"), image_base, module)]
    else:
        raise RequestError(f"{img_name}: expected an image (base64, data URI), {{\"image\", \"mask\"}}, "
                           f"[image, mask] or a list of {{\"image\", \"mask\"}}, got {_kind(value)}")
    return [_unit_image(im, mk, f"{n}.image", f"{n}.mask", image_base, module) for im, mk, n in pairs]


def _pair_from_dict(entry: dict, name: str) -> tuple[Any, Any, str]:
    if entry.get("image") is None:
        raise RequestError(f"{name}.image: missing (an {{\"image\", \"mask\"}} object needs its image)")
    return entry["image"], entry.get("mask"), name


def _unit_image(image: Any, mask: Any, image_name: str, mask_name: str, image_base: Path | None,
                module: str) -> UnitImage:
    rgb = _to_rgb(decode_image(image, image_name, image_base))
    m = None
    if mask is not None:
        m = _to_mask(decode_image(mask, mask_name, image_base))
        if m.size != rgb.size:
            raise RequestError(f"{mask_name}: size {m.width}x{m.height} does not match the image's "
                               f"{rgb.width}x{rgb.height}")
    if "inpaint" in module or _uses_clip(module):
        return UnitImage(rgb, m)
    if m is not None and _is_real_mask(m):  # canvas scribble mode: the mask is the input
        return UnitImage(m.convert("RGB"), None)
    return UnitImage(rgb, None)


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode in ("P", "L", "RGB")
                                                              and "transparency" in im.info)


def _on_white(im: Image.Image) -> np.ndarray:
    """The extension's HWC3 for 4 channels: colour * alpha + 255 * (1 - alpha), in float32, truncated to uint8."""
    x = np.asarray(im.convert("RGBA"))
    color = x[:, :, 0:3].astype(np.float32)
    alpha = x[:, :, 3:4].astype(np.float32) / 255.0
    return (color * alpha + 255.0 * (1.0 - alpha)).clip(0, 255).astype(np.uint8)


def _to_rgb(im: Image.Image) -> Image.Image:
    if _has_alpha(im):
        return Image.fromarray(_on_white(im), "RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def _to_mask(im: Image.Image) -> Image.Image:
    """The extension's mask: the first channel of HWC3(mask) (an RGBA mask composited onto white first)."""
    if im.mode == "L" and not _has_alpha(im):
        return im
    if _has_alpha(im):
        return Image.fromarray(np.ascontiguousarray(_on_white(im)[:, :, 0]), "L")
    return im.convert("RGB").getchannel("R")


def _is_real_mask(mask: Image.Image) -> bool:
    """Not a blank canvas: the extension ignores masks that are all <= 5 or all >= 250 (gradio noise)."""
    lo, hi = mask.getextrema()
    return not (hi <= 5 or lo >= 250)


def _region_mask(im: Image.Image) -> Image.Image:
    """The effective region mask as the extension reads it: the first channel, as is."""
    if im.mode == "L":
        return im
    return im.convert("RGBA").getchannel("R") if _has_alpha(im) else im.convert("RGB").getchannel("R")

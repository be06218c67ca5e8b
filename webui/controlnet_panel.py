"""The ControlNet accordion of txt2img and img2img, laid out as the sd-webui-controlnet extension's users know it
(its `scripts/controlnet.py` ui() and `controlnet_ui/controlnet_ui_group.py`, with the same elem_ids).

Each unit's controls are registered in the tab's `Controls.fields` as `controlnet_{i}_{field}` (the extension's unit
field names), so Generate, ↙ paste and "send to" reach them like every other control. `put_units` turns those
values into the extension's API units, `alwayson_scripts["controlnet"] = {"args": [unit, ...]}`, which the request
parses (modules/controlnet/unit_request.py); `paste_fields` maps a pasted infotext's "ControlNet N" back to unit N.

Each unit has the extension's input tabs Single Image, Batch (a folder: in img2img Batch picture k of the batch takes
the folder's k-th picture, empty: the "Controlnet input directory", then the batch's input folder; elsewhere one
generation per picture of it; modules/img2img_batch.py) and Multi-Inputs. Differences from the extension: no
webcam, canvas, Photopea or openpose editor, no loopback; the
input's mask is a second upload (behind "Upload input mask") instead of a sketch on the picture; the model list is
not filtered by the checkpoint's SD version.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from modules.controlnet import preprocessors
from modules.controlnet.unit_request import (
    MODEL_FREE_MODULES, ControlMode, ControlNetUnitRequest, HiResFixOption, ResizeMode, units_from_infotext,
)
from modules.request_types import RequestError

PREFIX = "controlnet_"  # Controls.fields names: controlnet_{unit}_{field}
DEFAULT_UNIT_COUNT = 3
TRIGGER_SYMBOL = "\U0001f4a5"  # 💥
REFRESH_SYMBOL = "\U0001f504"  # 🔄
_KEY = re.compile(r"^controlnet_(\d+)_(\w+)$")
# The extension's ToolButtons (💥, 🔄): small, at the bottom of their row, beside the dropdown they act on.
CSS = """<style>
.cnet-tool-row { align-items: flex-end !important; }
.cnet-tool-row > button.cnet-tool { align-self: flex-end; flex: 0 0 auto !important; min-width: 40px !important;
  max-width: 40px; height: 40px; padding: 0 !important; margin-bottom: 11px; font-size: 18px; }
</style>"""

# What each unit sends with a request, in the extension's field names (plus the UI-only ones after them).
UNIT_FIELDS = ("enabled", "module", "model", "weight", "image", "mask", "resize_mode", "low_vram", "processor_res",
               "threshold_a", "threshold_b", "guidance_start", "guidance_end", "pixel_perfect", "control_mode",
               "hr_option")
UI_FIELDS = ("control_type", "use_mask", "independent", "multi_images", "input_mode", "batch_image_dir")


def key(index: int, name: str) -> str:
    return f"{PREFIX}{index}_{name}"


def unit_count(engine) -> int:
    try:
        n = int(engine.settings.get("control_net_unit_count", DEFAULT_UNIT_COUNT))
    except (TypeError, ValueError, AttributeError):
        n = DEFAULT_UNIT_COUNT
    return max(1, min(10, n))


def control_type_names() -> list[str]:
    """The Control Type radio: "All", then the preprocessors' tags (the extension's get_all_preprocessor_tags)."""
    return list(preprocessors.control_types())


def module_labels() -> list[str]:
    return [p.label for p in preprocessors.all_sorted()]


def select_control_type(tag: str, titles: list[str]) -> tuple[list[str], list[str], str, str]:
    """The extension's select_control_type: (preprocessor labels, models, default preprocessor, default model).

    A model fits a type when its name contains the type's lower-case name or one of its filter words; among the
    fitting models one with "11" in its name is preferred."""
    from modules.api.controlnet_api import model_filters

    types = preprocessors.control_types()
    info = types.get(tag) or types["All"]
    if tag not in types or tag == "All":
        return info["module_list"], ["None", *titles], info["default_option"], "None"
    words = model_filters(tag)
    models = ["None", *[t for t in titles if any(w in t.lower() for w in words)]]
    default = models[1] if len(models) > 1 else "None"
    default = next((m for m in models[1:] if "11" in m.split("[")[0]), default)
    return info["module_list"], models, info["default_option"], default


def slider_updates(module: str | None, pixel_perfect: bool = False, values: tuple = (None, None, None)) -> list:
    """Updates for the resolution / threshold A / threshold B sliders of a preprocessor: relabelled, ranged and
    shown (or hidden when it has no such slider; the resolution also with Pixel Perfect). `values`: values to set
    (None: the slider's default; out of range: the default too, as the extension does)."""
    pre = preprocessors.get(module or "none")
    sliders = (pre.resolution, pre.slider_1, pre.slider_2) if pre is not None else (None, None, None)
    out = []
    for i, (slider, value) in enumerate(zip(sliders, values)):
        if slider is None:
            out.append(gr.update(visible=False))
            continue
        v = slider.value if value is None else slider.pick(value)
        out.append(gr.update(label=slider.name, minimum=slider.minimum, maximum=slider.maximum, step=slider.step,
                             value=v, visible=not (i == 0 and pixel_perfect)))
    return out


def _model_free(module: str | None) -> bool:
    pre = preprocessors.get(module or "none")
    return pre is not None and (pre.model_free or pre.name in MODEL_FREE_MODULES)


# --------------------------------------------------------------------------------------------------------------------
# Values → request


def put_units(data: dict[str, Any], is_img2img: bool = False) -> dict[str, Any]:
    """Take the units' values out of `data` (the tab's field values) and put the enabled units into
    `data["alwayson_scripts"]["controlnet"]`; returns `data`. An enabled unit without a model is the engine's to
    judge (an error, as the extension's "You have not selected any ControlNet Model", except on a Flux.1
    Depth/Canny checkpoint, which reads the unit's map itself)."""
    per_unit: dict[int, dict[str, Any]] = {}
    for name in [k for k in data if k.startswith(PREFIX)]:
        m = _KEY.match(name)
        value = data.pop(name)
        if m:
            per_unit.setdefault(int(m.group(1)), {})[m.group(2)] = value
    units = [unit_dict(per_unit[i], i, is_img2img) for i in sorted(per_unit)]
    if any(u["enabled"] for u in units):
        scripts = dict(data.get("alwayson_scripts") or {})
        scripts["controlnet"] = {"args": units}
        data["alwayson_scripts"] = scripts
    return data


def unit_dict(v: dict[str, Any], index: int = 0, is_img2img: bool = False) -> dict[str, Any]:
    """One unit's UI values → the extension's API unit."""
    enabled = bool(v.get("enabled"))
    module = v.get("module") or "none"
    model = v.get("model") or "None"
    pre = preprocessors.get(module)
    image = v.get("image")
    if is_img2img and not v.get("independent"):
        image = None  # the img2img picture is the input (backend)
    def number(name: str, conv, default, shown: bool = True):
        value = v.get(name)
        return conv(value) if shown and value is not None else default

    has = (pre.resolution, pre.slider_1, pre.slider_2) if pre is not None else (None, None, None)
    unit: dict[str, Any] = {
        "enabled": enabled,
        "module": module,
        "model": model,
        "weight": number("weight", float, 1.0),
        "image": None,
        "resize_mode": v.get("resize_mode") or ResizeMode.INNER_FIT.value,
        "low_vram": bool(v.get("low_vram")),
        # a slider the preprocessor does not have sends the API's -1 ("its default")
        "processor_res": number("processor_res", int, -1, has[0] is not None),
        "threshold_a": number("threshold_a", float, -1, has[1] is not None),
        "threshold_b": number("threshold_b", float, -1, has[2] is not None),
        "guidance_start": number("guidance_start", float, 0.0),
        "guidance_end": number("guidance_end", float, 1.0),
        "pixel_perfect": bool(v.get("pixel_perfect")),
        "control_mode": v.get("control_mode") or ControlMode.BALANCED.value,
    }
    if v.get("hr_option"):
        unit["hr_option"] = v["hr_option"]
    if v.get("input_mode") == "batch" and (not is_img2img or v.get("independent")):
        # the unit's Batch tab: its folder (empty: in img2img Batch, the batch's ControlNet or input folder)
        unit["input_mode"] = "batch"
        unit["batch_images"] = (v.get("batch_image_dir") or "").strip()
        return unit
    if image is not None:
        mask = v.get("mask") if v.get("use_mask") else None
        unit["image"] = {"image": image, "mask": mask} if mask is not None else image
    elif v.get("multi_images") and (not is_img2img or v.get("independent")):
        pictures = [item[0] if isinstance(item, (list, tuple)) else item for item in v["multi_images"]]
        pictures = [p for p in pictures if p is not None]
        if pictures:  # the API's list of {"image": ...} entries
            unit["image"] = [{"image": picture} for picture in pictures]
    return unit


# --------------------------------------------------------------------------------------------------------------------
# Infotext → controls


def paste_fields(params: dict, count: int, titles: list[str] | None = None, find=None) -> dict[str, Any]:
    """A pasted infotext's "ControlNet N" entries → updates of unit N's controls, keyed like `Controls.fields`
    (values are gr.update dicts). Units the infotext does not name are left alone; so is the picture.

    `titles`: the installed models (the model list gets them back, unfiltered); `find(name)` → the installed title
    for a model written without its hash or with an old one (None when not installed)."""
    out: dict[str, Any] = {}
    numbered = sorted((int(k.split()[1]), k) for k in params if re.fullmatch(r"ControlNet \d+", str(k).strip()))
    parsed = {}
    for index, name in numbered:  # one at a time: an unreadable entry (skipped) must not shift the others
        got = units_from_infotext({name: params[name]})
        if got:
            parsed[index] = got[0]
    labels = module_labels()
    for index, unit in parsed.items():
        if index >= count:
            continue
        pre = preprocessors.get(unit.module)
        label = pre.label if pre is not None else unit.module
        model = unit.model
        found = find(model) if find is not None and model not in ("", "None") else None
        model = found or model
        models = ["None", *(titles or [])]
        if model not in models:
            models.append(model)
        modules = labels if label in labels else [*labels, label]
        res, a, b = slider_updates(label, unit.pixel_perfect, (unit.processor_res, unit.threshold_a,
                                                                 unit.threshold_b))
        model_free = _model_free(label)
        out.update({
            key(index, "enabled"): gr.update(value=True),
            key(index, "control_type"): gr.update(value="All"),
            key(index, "module"): gr.update(value=label, choices=modules),
            key(index, "model"): gr.update(value=model, choices=models, visible=not model_free),
            key(index, "weight"): gr.update(value=unit.weight),
            key(index, "resize_mode"): gr.update(value=unit.resize_mode.value),
            key(index, "low_vram"): gr.update(value=unit.low_vram),
            key(index, "processor_res"): res,
            key(index, "threshold_a"): a,
            key(index, "threshold_b"): b,
            key(index, "guidance_start"): gr.update(value=unit.guidance_start),
            key(index, "guidance_end"): gr.update(value=unit.guidance_end),
            key(index, "pixel_perfect"): gr.update(value=unit.pixel_perfect),
            key(index, "control_mode"): gr.update(value=unit.control_mode.value),
        })
        if any(k.lower() == "hr option" for k in _infotext_keys(params.get(f"ControlNet {index}"))):
            out[key(index, "hr_option")] = gr.update(value=unit.hr_option.value)
    return out


def _infotext_keys(text) -> list[str]:
    if not isinstance(text, str):
        return []
    return [item.split(":", 1)[0].strip() for item in text.strip().strip('"').split(",") if ":" in item]


# --------------------------------------------------------------------------------------------------------------------
# 💥: the preprocessor on the unit's picture


def run_preprocessor(engine, image, mask, use_mask, module, resolution, threshold_a, threshold_b, pixel_perfect,
                     resize_mode, width, height) -> Image.Image:
    """The detected map of the unit's picture (the extension's run_annotator). Raises ValueError with a message
    for the user (no picture, an unknown preprocessor, missing annotator weights...)."""
    from modules.controlnet.prepare import pixel_perfect_resolution

    if image is None:
        raise ValueError("ControlNet: no input image; upload one to the unit first")
    pre = preprocessors.get(module or "none")
    if pre is None:
        raise ValueError(f"ControlNet: unknown preprocessor {module!r}")
    try:
        unit = ControlNetUnitRequest.from_dict({"enabled": True, "module": pre.name, "image": {
            "image": image, "mask": mask if use_mask else None}})
    except RequestError as e:
        raise ValueError(f"ControlNet: {e}") from None
    source = unit.images[0]
    if pixel_perfect and width and height:
        resolution = pixel_perfect_resolution(source.image.size, int(width), int(height),
                                              resize_mode or ResizeMode.INNER_FIT.value)
    array = np.asarray(source.image.convert("RGB"))
    if pre.accepts_mask or pre.requires_mask:
        if source.mask is None and pre.requires_mask:
            raise ValueError(f"ControlNet: preprocessor {pre.label} needs a mask (tick \"Upload input mask\")")
        alpha = np.zeros(array.shape[:2], np.uint8) if source.mask is None else np.asarray(
            source.mask.convert("L").resize(source.image.size))
        array = np.concatenate([array, alpha[:, :, None]], axis=2)
    annotator_dir = getattr(getattr(engine, "paths", None), "annotator_dir", None)
    try:
        detected = pre.run(array, -1 if resolution is None else int(resolution),
                           -1 if threshold_a is None else threshold_a, -1 if threshold_b is None else threshold_b,
                           annotator_dir=annotator_dir)
    except preprocessors.MissingAnnotatorError as e:
        raise ValueError(str(e)) from None
    except preprocessors.AnnotatorUnavailableError as e:
        raise ValueError(f"ControlNet preprocessor {pre.label}: {e}") from None
    detected = np.ascontiguousarray(detected[:, :, :3] if detected.ndim == 3 else detected)
    return Image.fromarray(detected)


# --------------------------------------------------------------------------------------------------------------------
# The UI


@dataclass
class UnitUi:
    index: int
    c: dict[str, Any] = field(default_factory=dict)  # field name → component (UNIT_FIELDS + UI_FIELDS + buttons)


@dataclass
class ControlNetPanel:
    engine: Any
    tab: str
    is_img2img: bool
    units: list[UnitUi] = field(default_factory=list)
    accordion: Any = None
    hide_dirs: bool = False  # --hide-ui-dir-config: the Batch tab's folder box is hidden (and refused)

    @property
    def count(self) -> int:
        return len(self.units)

    def titles(self, refresh: bool = False) -> list[str]:
        library = getattr(self.engine, "controlnets", None)
        if library is None:
            return []
        try:
            return library.titles(refresh)
        except Exception:  # noqa: BLE001 - an unreadable models folder must not break the page
            return []

    def find(self, model: str) -> str | None:
        library = getattr(self.engine, "controlnets", None)
        try:
            found = library.find(model) if library is not None else None
        except Exception:  # noqa: BLE001
            return None
        return getattr(found, "title", None)

    def paste_fields(self, params: dict) -> dict[str, Any]:
        if not any(re.fullmatch(r"ControlNet \d+", str(k).strip()) for k in params):
            return {}
        return paste_fields(params, self.count, self.titles(), self.find)

    def put_units(self, data: dict[str, Any]) -> dict[str, Any]:
        data = put_units(data, self.is_img2img)
        units = ((data.get("alwayson_scripts") or {}).get("controlnet") or {}).get("args") or []
        if self.hide_dirs and any(u.get("input_mode") == "batch" and u.get("enabled") for u in units):
            raise RequestError("ControlNet Batch: launched with --hide-ui-dir-config, folders cannot be used")
        return data

    # -- wiring that needs the tab's other controls (built after the panel) ---------------------------------------

    def wire(self, controls) -> None:
        """Events that use the tab's info area, size sliders and (txt2img) hires checkbox."""
        from webui.runner import error_html, guard_image_input

        fields = dict(controls.fields)
        width, height, info = fields.get("width"), fields.get("height"), controls.info
        enable_hr = fields.get("enable_hr")
        engine = self.engine
        for unit in self.units:
            u = unit.c

            def trigger(image, mask, use_mask, module, res, a, b, pp, rm, w, h):
                try:
                    detected = run_preprocessor(engine, image, mask, use_mask, module, res, a, b, pp, rm, w, h)
                except ValueError as e:
                    return gr.update(), gr.update(), error_html(str(e))
                except Exception as e:  # noqa: BLE001 - a broken annotator: say so, keep the page working
                    return gr.update(), gr.update(), error_html(f"ControlNet preprocessor failed: "
                                                                f"{type(e).__name__}: {e}")
                return gr.update(value=detected), gr.update(value=True), gr.update()

            u["trigger"].click(trigger, [u["image"], u["mask"], u["use_mask"], u["module"], u["processor_res"],
                                         u["threshold_a"], u["threshold_b"], u["pixel_perfect"], u["resize_mode"],
                                         width, height],
                               [u["generated_image"], u["preview"], info], show_progress="minimal",
                               concurrency_limit=1, concurrency_id="controlnet_preprocessor")
            guard_image_input(u["image"], info)
            guard_image_input(u["mask"], info)
            if enable_hr is not None and "hr_option" in u:
                enable_hr.change(lambda on: gr.update(visible=bool(on)), enable_hr, u["hr_option"], queue=False,
                                 show_progress="hidden")


def build(c, engine, is_img2img: bool) -> ControlNetPanel:
    """The ControlNet group and accordion, one tab per unit; every unit's values are added to `c.fields`."""
    tab = "img2img" if is_img2img else "txt2img"
    panel = ControlNetPanel(engine=engine, tab=tab, is_img2img=is_img2img,
                            hide_dirs=bool(c.extra.get("hide_dirs", False)))
    count = unit_count(engine)
    titles = panel.titles()
    elem_tab = f"{tab}_controlnet"
    with gr.Group(elem_id=elem_tab):
        with gr.Accordion("ControlNet", open=False, elem_id="controlnet") as panel.accordion:
            gr.HTML(CSS, visible="hidden", elem_classes=["cnet-style"])
            with gr.Tabs(elem_id=f"{elem_tab}_tabs"):
                for i in range(count):
                    with gr.Tab(f"ControlNet Unit {i}", id=f"{elem_tab}_unit_{i}", elem_classes=["cnet-unit-tab"]):
                        unit = _build_unit(c, panel, i, f"{elem_tab}_ControlNet-{i}", titles)
                        panel.units.append(unit)
    for unit in panel.units:  # the extension's ui-config keys: customscript/controlnet.py/<tab>/<label>/…
        for component in unit.c.values():
            if isinstance(component, gr.components.Component):
                component.custom_script_source = "controlnet.py"
    c.extra["controlnet"] = panel
    return panel


def _build_unit(c, panel: ControlNetPanel, index: int, prefix: str, titles: list[str]) -> UnitUi:
    is_img2img = panel.is_img2img
    unit = UnitUi(index)
    u = unit.c

    def add(name, component):
        u[name] = component
        if name in UNIT_FIELDS or name in UI_FIELDS:
            c.add(key(index, name), component)
        return component

    with gr.Group(visible=not is_img2img) as image_panel, gr.Tabs(elem_id=f"{prefix}_input_tabs"):
        with gr.Tab("Single Image", elem_id=f"{prefix}_single_image_tab") as single_tab:
            with gr.Row(equal_height=True, elem_classes=["cnet-image-row"]):
                add("image", gr.Image(label="Image", type="pil", format="png", image_mode=None,
                                      sources=["upload", "clipboard"], elem_id=f"{prefix}_input_image",
                                      elem_classes=["cnet-image"], height=242))
                with gr.Column(visible=False, elem_classes=["cnet-generated-image-group"]) as generated_group:
                    u["generated_image"] = gr.Image(label="Preprocessor Preview", type="pil", format="png",
                                                    interactive=False, elem_id=f"{prefix}_generated_image",
                                                    elem_classes=["cnet-image"], height=242)
            with gr.Column(visible=False) as mask_group:
                add("mask", gr.Image(label="Input mask (white: the area to inpaint; for other preprocessors a drawn "
                                           "mask is used as the input, as a scribble)", type="pil", format="png",
                                     image_mode=None, sources=["upload", "clipboard"],
                                     elem_id=f"{prefix}_input_mask", height=200))
        with gr.Tab("Batch", elem_id=f"{prefix}_batch_tab") as batch_tab:
            add("batch_image_dir", gr.Textbox(label="Input Directory", visible=not panel.hide_dirs,
                                              placeholder="Leave empty to use img2img batch controlnet input "
                                                          "directory", elem_id=f"{prefix}_batch_image_dir"))
        with gr.Tab("Multi-Inputs", elem_id=f"{prefix}_multi_inputs_tab") as merge_tab:
            # the extension's multi-inputs: several pictures for one unit (an IP-Adapter averages their tokens);
            # used when the single image is empty
            add("multi_images", gr.Gallery(label="Pictures", type="pil", interactive=True, file_types=["image"],
                                           columns=4, height=242, elem_id=f"{prefix}_multi_inputs_gallery"))
    u["image_panel"] = image_panel
    # which input tab is open: the extension's `input_mode` (simple / batch / merge)
    add("input_mode", gr.Textbox("simple", visible=False, elem_id=f"{prefix}_input_mode"))
    for tab, mode in ((single_tab, "simple"), (batch_tab, "batch"), (merge_tab, "merge")):
        tab.select(lambda m=mode: m, None, u["input_mode"], queue=False, show_progress="hidden")
    with gr.Row(elem_classes=["controlnet_main_options"]):
        add("enabled", gr.Checkbox(label="Enable", value=False, elem_id=f"{prefix}_controlnet_enable_checkbox",
                                   elem_classes=["cnet-unit-enabled"], min_width=80))
        add("low_vram", gr.Checkbox(label="Low VRAM", value=False,
                                    elem_id=f"{prefix}_controlnet_low_vram_checkbox", min_width=80))
        add("pixel_perfect", gr.Checkbox(label="Pixel Perfect", value=False,
                                         elem_id=f"{prefix}_controlnet_pixel_perfect_checkbox", min_width=80))
        u["preview"] = gr.Checkbox(label="Allow Preview", value=False, visible=not is_img2img,
                                   elem_id=f"{prefix}_controlnet_preprocessor_preview_checkbox",
                                   elem_classes=["cnet-allow-preview"], min_width=80)
        add("use_mask", gr.Checkbox(label="Upload input mask", value=False, visible=not is_img2img,
                                    elem_id=f"{prefix}_controlnet_input_mask_checkbox", min_width=80))
    if is_img2img:
        with gr.Row(elem_classes=["controlnet_img2img_options"]):
            add("independent", gr.Checkbox(label="Upload independent control image", value=False,
                                           elem_id=f"{prefix}_controlnet_same_img2img_checkbox",
                                           elem_classes=["cnet-unit-same_img2img"]))
    with gr.Row(elem_classes=["controlnet_control_type", "controlnet_row"]):
        add("control_type", gr.Radio(control_type_names(), value="All", label="Control Type",
                                     elem_id=f"{prefix}_controlnet_type_filter_radio",
                                     elem_classes=["controlnet_control_type_filter_group"]))
    with gr.Row(elem_classes=["controlnet_preprocessor_model", "controlnet_row", "cnet-tool-row"]):
        add("module", gr.Dropdown(module_labels(), value="none", label="Preprocessor", scale=4,
                                  elem_id=f"{prefix}_controlnet_preprocessor_dropdown"))
        u["trigger"] = gr.Button(TRIGGER_SYMBOL, visible=not is_img2img, size="sm", min_width=40, scale=0,
                                 elem_id=f"{prefix}_controlnet_trigger_preprocessor",
                                 elem_classes=["cnet-run-preprocessor", "cnet-tool"])
        add("model", gr.Dropdown(["None", *titles], value="None", label="Model", scale=4,
                                 elem_id=f"{prefix}_controlnet_model_dropdown"))
        u["refresh"] = gr.Button(REFRESH_SYMBOL, size="sm", min_width=40, scale=0,
                                 elem_id=f"{prefix}_controlnet_refresh_models", elem_classes=["cnet-tool"])
    with gr.Row(elem_classes=["controlnet_weight_steps", "controlnet_row"]):
        add("weight", gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Control Weight",
                                elem_id=f"{prefix}_controlnet_control_weight_slider",
                                elem_classes=["controlnet_control_weight_slider"]))
        add("guidance_start", gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Starting Control Step",
                                        elem_id=f"{prefix}_controlnet_start_control_step_slider",
                                        elem_classes=["controlnet_start_control_step_slider"]))
        add("guidance_end", gr.Slider(0.0, 1.0, value=1.0, step=0.01, label="Ending Control Step",
                                      elem_id=f"{prefix}_controlnet_ending_control_step_slider",
                                      elem_classes=["controlnet_ending_control_step_slider"]))
    with gr.Row():  # shown per preprocessor (module "none" has none of them)
        add("processor_res", gr.Slider(64, 2048, value=512, step=8, label="Preprocessor resolution", visible=False,
                                       elem_id=f"{prefix}_controlnet_preprocessor_resolution_slider"))
        add("threshold_a", gr.Slider(64, 1024, value=64, label="Threshold A", visible=False,
                                     elem_id=f"{prefix}_controlnet_threshold_A_slider"))
        add("threshold_b", gr.Slider(64, 1024, value=64, label="Threshold B", visible=False,
                                     elem_id=f"{prefix}_controlnet_threshold_B_slider"))
    add("control_mode", gr.Radio([e.value for e in ControlMode], value=ControlMode.BALANCED.value,
                                 label="Control Mode", elem_id=f"{prefix}_controlnet_control_mode_radio",
                                 elem_classes=["controlnet_control_mode_radio"]))
    add("resize_mode", gr.Radio([e.value for e in ResizeMode], value=ResizeMode.INNER_FIT.value,
                                label="Resize Mode", visible=not is_img2img,
                                elem_id=f"{prefix}_controlnet_resize_mode_radio",
                                elem_classes=["controlnet_resize_mode_radio"]))
    if not is_img2img:
        add("hr_option", gr.Radio([e.value for e in HiResFixOption], value=HiResFixOption.BOTH.value,
                                  label="Hires-Fix Option", visible=False,
                                  elem_id=f"{prefix}_controlnet_hr_option_radio",
                                  elem_classes=["controlnet_hr_option_radio"]))
    _unit_events(panel, u, generated_group, mask_group)
    return unit


def _unit_events(panel: ControlNetPanel, u: dict, generated_group, mask_group) -> None:
    quiet = dict(queue=False, show_progress="hidden")
    sliders = [u["processor_res"], u["threshold_a"], u["threshold_b"]]

    # A picture picked by the user enables the unit (the extension's controlnet_unit.js).
    u["image"].upload(lambda image: gr.update(value=True) if image is not None else gr.update(), u["image"],
                      u["enabled"], **quiet)
    u["preview"].change(lambda on: (gr.update(visible=bool(on)), gr.update() if on else gr.update(value=None)),
                        u["preview"], [generated_group, u["generated_image"]], **quiet)
    u["use_mask"].change(lambda on: (gr.update(visible=bool(on)), gr.update() if on else gr.update(value=None)),
                         u["use_mask"], [mask_group, u["mask"]], **quiet)

    # The user's own picks only (`input`): a pasted infotext sets the module and its slider values together.
    def module_picked(module, pp):
        free = _model_free(module)
        return [*slider_updates(module, pp), gr.update(visible=not free), gr.update(visible=not free)]

    u["module"].input(module_picked, [u["module"], u["pixel_perfect"]], sliders + [u["model"], u["refresh"]],
                      **quiet)
    u["pixel_perfect"].input(lambda module, pp: gr.update(visible=not pp and _has_resolution(module)),
                             [u["module"], u["pixel_perfect"]], u["processor_res"], **quiet)

    def type_picked(tag, pp):
        modules, models, default_module, default_model = select_control_type(tag, panel.titles())
        free = _model_free(default_module)
        return [gr.update(choices=modules, value=default_module),
                gr.update(choices=models, value=default_model, visible=not free),
                *slider_updates(default_module, pp), gr.update(visible=not free)]

    u["control_type"].input(type_picked, [u["control_type"], u["pixel_perfect"]],
                            [u["module"], u["model"], *sliders, u["refresh"]], **quiet)

    def refresh(model):
        titles = panel.titles(refresh=True)
        return gr.update(choices=["None", *titles], value=model if model in titles else "None")

    u["refresh"].click(refresh, u["model"], u["model"], queue=False)

    if "independent" in u:
        def independent(on):
            on = bool(on)
            return [gr.update(value=None), gr.update(visible=on), gr.update(visible=on),
                    gr.update(value=False, visible=on), gr.update(value=False, visible=on), gr.update(visible=on)]

        u["independent"].change(independent, u["independent"],
                                [u["image"], u["image_panel"], u["trigger"], u["preview"], u["use_mask"],
                                 u["resize_mode"]], **quiet)


def _has_resolution(module) -> bool:
    pre = preprocessors.get(module or "none")
    return pre is not None and pre.resolution is not None

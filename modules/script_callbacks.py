"""Extension callbacks: A1111's `on_*` registrations and the argument objects it passes.

Extensions call `on_image_saved(fn)`, `on_cfg_denoiser(fn)`, … while their scripts load; the host fires the
matching `*_callback` functions at the right moments. A callback that raises is logged and recorded with the
script it came from (`errors`), and the others still run: one broken extension never stops a generation.
"""
from __future__ import annotations

import inspect
import logging
import os
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from modules import extension_faults

log = logging.getLogger(__name__)


@dataclass
class ScriptCallback:
    script: str  # the file that registered it (or "unknown")
    callback: Callable
    name: str | None = None


# ---------------------------------------------------------------------------------------------------------------
# Argument objects (A1111's names and fields)


class ImageSaveParams:
    def __init__(self, image, p, filename, pnginfo):
        self.image = image
        self.p = p
        self.filename = filename
        self.pnginfo = pnginfo  # dict: key → text written into the file ("parameters" holds the infotext)


class ImageGridLoopParams:
    def __init__(self, imgs, cols, rows):
        self.imgs = imgs
        self.cols = cols
        self.rows = rows


@dataclass
class CFGDenoiserParams:
    """Before the model runs on one step. Changing `x`, `text_cond` or `text_uncond` changes what it sees."""

    x: Any
    image_cond: Any
    sigma: Any
    sampling_step: int
    total_sampling_steps: int
    text_cond: Any
    text_uncond: Any
    denoiser: Any = None


@dataclass
class CFGDenoisedParams:
    """After the model ran (x is its raw output, cond and uncond rows), before guidance combines them."""

    x: Any
    sampling_step: int
    total_sampling_steps: int
    inner_model: Any = None


@dataclass
class AfterCFGCallbackParams:
    """After guidance; replacing `x` replaces the guided prediction the sampler steps with."""

    x: Any
    sampling_step: int
    total_sampling_steps: int


@dataclass
class UiTrainTabParams:
    txt2img_preview_params: Any = None


@dataclass
class ExtraNoiseParams:
    noise: Any
    x: Any
    xi: Any


@dataclass
class BeforeTokenCounterParams:
    prompt: str
    steps: int
    styles: list
    is_positive: bool = True


# ---------------------------------------------------------------------------------------------------------------
# Registry

NAMES = (
    "app_started", "model_loaded", "ui_tabs", "ui_train_tabs", "ui_settings", "before_image_saved", "image_saved",
    "image_grid", "cfg_denoiser", "cfg_denoised", "cfg_after_cfg", "before_component", "after_component",
    "infotext_pasted", "script_unloaded", "before_ui", "before_reload", "list_optimizers", "list_unets",
    "before_token_counter", "extra_noise",
)
callback_map: dict[str, list[ScriptCallback]] = {f"callbacks_{n}": [] for n in NAMES}
errors: list[str] = extension_faults.faults.messages  # "extension: what failed" (the Extensions tab shows them)
current_script: str | None = None  # set by the script loader while a file is imported


def _caller() -> str:
    if current_script:
        return current_script
    for frame in inspect.stack()[2:]:
        if frame.filename != __file__:
            return frame.filename
    return "unknown"


def add_callback(callbacks: list[ScriptCallback], fun: Callable, *, name: str | None = None,
                 category: str | None = None, filename: str | None = None) -> None:
    callbacks.append(ScriptCallback(filename or _caller(), fun, name))


def report_error(where: str, script: str, exc: BaseException) -> None:
    """Record an extension's failure (once per distinct failure; the log gets its traceback)."""
    extension_faults.faults.record(where, exc, source=script)


def _fire(kind: str, *args) -> list[Any]:
    results = []
    for c in list(callback_map[f"callbacks_{kind}"]):
        try:
            results.append(c.callback(*args))
        except Exception as e:  # noqa: BLE001 - an extension's bug must not stop the host
            report_error(f"{kind} callback", c.script, e)
    return results


def has(kind: str) -> bool:
    return bool(callback_map[f"callbacks_{kind}"])


def clear_callbacks() -> None:
    for callbacks in callback_map.values():
        callbacks.clear()


def remove_current_script_callbacks() -> None:
    script = _caller()
    for callbacks in callback_map.values():
        callbacks[:] = [c for c in callbacks if c.script != script]


def remove_callbacks_for_function(fun: Callable) -> None:
    for callbacks in callback_map.values():
        callbacks[:] = [c for c in callbacks if c.callback != fun]


# Firing ------------------------------------------------------------------------------------------------------


def app_started_callback(demo, app) -> None:
    _fire("app_started", demo, app)


def model_loaded_callback(sd_model) -> None:
    from modules.a1111.sd_model import view

    _fire("model_loaded", view(sd_model))  # A1111's names on the model (sd_checkpoint_info, is_sdxl, …)


def ui_tabs_callback() -> list:
    return [item for item, _ in ui_tabs_with_sources()]


def ui_tabs_with_sources() -> list[tuple[Any, str]]:
    """The tabs extensions return from on_ui_tabs, each with the file that registered it (for fault reports)."""
    tabs = []
    for c in list(callback_map["callbacks_ui_tabs"]):
        try:
            result = c.callback()
        except Exception as e:  # noqa: BLE001 - a broken tab must not stop the page
            report_error("ui_tabs callback", c.script, e)
            continue
        tabs.extend((item, c.script) for item in (result or []))
    return tabs


def ui_train_tabs_callback(params: UiTrainTabParams) -> None:
    _fire("ui_train_tabs", params)


def ui_settings_callback() -> None:
    _fire("ui_settings")


def before_image_saved_callback(params: ImageSaveParams) -> None:
    _fire("before_image_saved", params)


def image_saved_callback(params: ImageSaveParams) -> None:
    _fire("image_saved", params)


def image_grid_callback(params: ImageGridLoopParams) -> None:
    _fire("image_grid", params)


def cfg_denoiser_callback(params: CFGDenoiserParams) -> None:
    _fire("cfg_denoiser", params)


def cfg_denoised_callback(params: CFGDenoisedParams) -> None:
    _fire("cfg_denoised", params)


def cfg_after_cfg_callback(params: AfterCFGCallbackParams) -> None:
    _fire("cfg_after_cfg", params)


def extra_noise_callback(params: ExtraNoiseParams) -> None:
    _fire("extra_noise", params)


def before_component_callback(component, **kwargs) -> None:
    _fire_kw("before_component", component, kwargs)


def after_component_callback(component, **kwargs) -> None:
    _fire_kw("after_component", component, kwargs)


def _fire_kw(kind: str, component, kwargs) -> None:
    for c in list(callback_map[f"callbacks_{kind}"]):
        try:
            c.callback(component, **kwargs)
        except Exception as e:  # noqa: BLE001
            report_error(f"{kind} callback", c.script, e)


def infotext_pasted_callback(infotext: str, params: dict) -> None:
    _fire("infotext_pasted", infotext, params)


def script_unloaded_callback() -> None:
    _fire("script_unloaded")


def before_ui_callback() -> None:
    _fire("before_ui")


def before_reload_callback() -> None:
    _fire("before_reload")


def list_optimizers_callback() -> list:
    out: list = []
    _fire("list_optimizers", out)
    return out


def list_unets_callback() -> list:
    out: list = []
    _fire("list_unets", out)
    return out


def before_token_counter_callback(params: BeforeTokenCounterParams) -> None:
    _fire("before_token_counter", params)


# Registration (what extensions call) ---------------------------------------------------------------------------


def _register(kind: str):
    def on(callback: Callable, *, name: str | None = None) -> None:
        add_callback(callback_map[f"callbacks_{kind}"], callback, name=name)
    on.__name__ = f"on_{kind}"
    on.__doc__ = f"Register a function called on {kind.replace('_', ' ')}."
    return on


on_app_started = _register("app_started")
on_model_loaded = _register("model_loaded")
on_ui_tabs = _register("ui_tabs")
on_ui_train_tabs = _register("ui_train_tabs")
on_ui_settings = _register("ui_settings")
on_before_image_saved = _register("before_image_saved")
on_image_saved = _register("image_saved")
on_image_grid = _register("image_grid")
on_cfg_denoiser = _register("cfg_denoiser")
on_cfg_denoised = _register("cfg_denoised")
on_cfg_after_cfg = _register("cfg_after_cfg")
on_before_component = _register("before_component")
on_after_component = _register("after_component")
on_infotext_pasted = _register("infotext_pasted")
on_script_unloaded = _register("script_unloaded")
on_before_ui = _register("before_ui")
on_before_reload = _register("before_reload")
on_list_optimizers = _register("list_optimizers")
on_list_unets = _register("list_unets")
on_before_token_counter = _register("before_token_counter")
on_extra_noise = _register("extra_noise")

"""Compatibility shim: A1111's `modules.shared` for extensions (`opts`, `cmd_opts`, `state`, `sd_model`, `device`,
`OptionInfo`). Our own code never uses it; everything here points at the engine bound at start-up
(`bind(engine, args)` from modules/extension_runtime.py)."""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from modules import settings as settings_mod

log = logging.getLogger("sd")

engine = None  # modules.engine.Engine, once bound
cmd_opts = argparse.Namespace()
state = None  # modules.jobs.JobState
demo = None  # the Gradio Blocks, once the UI is built
hide_dirs: dict = {}


class OptionInfo(settings_mod.OptionInfo):
    """A1111's `OptionInfo(default, label, component, component_args, onchange, section=(id, label), …)`."""

    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None,
                 refresh=None, comment_before="", comment_after="", infotext=None, restrict_api=False,
                 category_id=None, **_ignored):
        args = component_args() if callable(component_args) else dict(component_args or {})
        section_id = section[0] if isinstance(section, (tuple, list)) and section else (section or "other")
        super().__init__(default=default, label=label, section=section_id or "other", choices=args.get("choices"),
                         minimum=args.get("minimum"), maximum=args.get("maximum"), infotext=infotext)
        self.component = component
        self.component_args = component_args
        self.onchange = onchange
        self.section_label = section[1] if isinstance(section, (tuple, list)) and len(section) > 1 else None
        self.comment_before = comment_before
        self.comment_after = comment_after
        self.refresh = refresh
        self.do_not_save = False
        self.extension = None  # the extension that registered it (set by opts.add_option)

    def link(self, label, url):
        self.comment_before += f"[<a href='{url}' target='_blank'>{label}</a>]"
        return self

    def js(self, label, js_func):
        return self

    def info(self, info):
        self.comment_after += f"<span class='info'>({info})</span>"
        return self

    def html(self, html):
        self.comment_after += html
        return self

    def needs_restart(self):
        self.restart_required = True
        return self

    def needs_reload_ui(self):
        return self


class OptionHTML(OptionInfo):
    def __init__(self, text):
        super().__init__(str(text).strip(), label="")
        self.do_not_save = True


def options_section(section_identifier, options_dict: dict) -> dict:
    for v in options_dict.values():
        if isinstance(v, OptionInfo) and isinstance(section_identifier, (tuple, list)):
            v.section = section_identifier[0]
            if len(section_identifier) > 1:
                v.section_label = section_identifier[1]
    return options_dict


class Options:
    """`shared.opts`: attribute access to the engine's settings plus A1111's `add_option`, `set`, `onchange`."""

    def __init__(self, settings=None):
        object.__setattr__(self, "_settings", settings)

    def _s(self):
        if self._settings is None:
            raise RuntimeError("shared.opts is not ready yet (no engine is bound)")
        return self._settings

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        info = settings_mod.OPTIONS.get(name)
        if self._settings is None:
            if info is not None:
                return info.default
            raise AttributeError(name)
        if info is None and name not in self._s().as_dict():
            raise AttributeError(f"shared.opts has no option {name!r}")
        return self._s().get(name, info.default if info is not None else None)

    def __setattr__(self, name: str, value) -> None:
        self.set(name, value)

    def add_option(self, key: str, info: settings_mod.OptionInfo) -> None:
        if not isinstance(info, settings_mod.OptionInfo):
            raise TypeError(f"option {key!r}: expected OptionInfo")
        if getattr(info, "extension", None) is None:
            from modules.a1111.unsupported import caller_extension

            info.extension = caller_extension(2) or ""
        settings_mod.register_option(key, info, replace=True)
        onchange = getattr(info, "onchange", None)
        if onchange is not None and self._settings is not None:
            self._s().on_change(key, lambda *_: onchange())

    def set(self, key: str, value, is_api: bool = False, run_callbacks: bool = True) -> bool:
        changed = self._s().set(key, value, allow_unknown=True)
        return bool(changed) if changed is not None else True

    def get_default(self, key: str):
        info = settings_mod.OPTIONS.get(key)
        return info.default if info is not None else None

    def onchange(self, key: str, func: Callable, call: bool = True) -> None:
        self._s().on_change(key, lambda *_: func())
        if call:
            func()

    def save(self, filename=None) -> None:
        self._s().save(filename)

    @property
    def data(self) -> dict[str, Any]:
        return self._s().as_dict()

    @property
    def data_labels(self) -> dict[str, settings_mod.OptionInfo]:
        return settings_mod.OPTIONS

    def __contains__(self, key: str) -> bool:
        return key in settings_mod.OPTIONS


opts = Options()


class _TotalTqdm:
    """A1111's console progress over a whole job; our progress is the job state, so this only keeps counts."""

    def __init__(self):
        self.total = 0

    def updateTotal(self, new_total):  # noqa: N802 - A1111's name
        self.total = new_total

    def update(self):
        pass

    def clear(self):
        pass


total_tqdm = _TotalTqdm()


def _a1111_cmd_opts(args: argparse.Namespace | None, paths) -> argparse.Namespace:
    """A1111's `cmd_opts`: our parsed flags plus A1111's defaults for what extensions read — directory flags are
    strings resolved under the data/models dirs (never None), flags we do not have take A1111's default."""
    ns = argparse.Namespace(**vars(args)) if args is not None else argparse.Namespace()
    models = Path(paths.models_dir)
    dirs = {
        "data_dir": paths.data_dir, "models_dir": paths.models_dir,
        "ckpt_dir": paths.ckpt_dirs[-1], "vae_dir": paths.vae_dirs[-1], "lora_dir": paths.lora_dir,
        "lyco_dir_backcompat": paths.lycoris_dir, "lyco_dir": paths.lycoris_dir,
        "embeddings_dir": paths.embeddings_dir, "hypernetwork_dir": paths.hypernetwork_dir,
        "controlnet_dir": models / "ControlNet", "controlnet_annotator_models_path": models / "ControlNetPreprocessor",
        "codeformer_models_path": getattr(paths, "codeformer_dir", models / "Codeformer"),
        "gfpgan_models_path": getattr(paths, "gfpgan_dir", models / "GFPGAN"),
        "esrgan_models_path": models / "ESRGAN", "bsrgan_models_path": models / "BSRGAN",
        "realesrgan_models_path": models / "RealESRGAN", "scunet_models_path": models / "ScuNET",
        "swinir_models_path": models / "SwinIR", "ldsr_models_path": models / "LDSR", "dat_models_path": models / "DAT",
        "ui_config_file": paths.ui_config_file, "ui_settings_file": paths.config_file,
        "textual_inversion_templates_dir": Path(paths.data_dir) / "textual_inversion_templates",
        "localizations_dir": Path(paths.data_dir) / "localizations",
    }
    for name, value in dirs.items():
        if getattr(ns, name, None) is None:
            setattr(ns, name, str(value))
    for name, value in _A1111_FLAG_DEFAULTS.items():
        if not hasattr(ns, name):
            setattr(ns, name, value)
    return ns


# A1111 flags this web UI does not have, with A1111's defaults (what extensions find when they read them).
_A1111_FLAG_DEFAULTS = {
    "always_batch_cond_uncond": False, "ui_debug_mode": False, "no_gradio_queue": False, "gradio_debug": False,
    "administrator": False, "disable_extension_access": False, "tls_keyfile": None, "tls_certfile": None,
    "ngrok": None, "gradio_img2img_tool": None, "gradio_inpaint_tool": None, "gradio_allowed_path": [],
    "disable_model_loading_ram_optimization": False, "clip_models_path": None, "lowram": False,
    "disable_console_progressbars": False, "enable_console_prompts": False, "api_log": False, "nowebui": False,
    "hide_ui_dir_config": False, "safe_mode": False, "add_stop_route": False, "skip_load_model_at_start": False,
}


def bind(bound_engine, args: argparse.Namespace | None = None) -> None:
    """Point the shim at the running engine (called once at start-up)."""
    global engine, cmd_opts, state
    engine = bound_engine
    cmd_opts = _a1111_cmd_opts(args, bound_engine.paths)
    state = bound_engine.state
    hide_dirs["visible"] = not getattr(cmd_opts, "hide_ui_dir_config", False)
    object.__setattr__(opts, "_settings", bound_engine.settings)


class _EngineUpscaler:
    """A1111's `Upscaler` as scripts call it: `upscale(img, scale, data_path)` with the engine's registry."""

    def __init__(self, name: str):
        self.name = name

    def upscale(self, img, scale, selected_model=None):
        return engine.upscalers.upscale(img, self.name, float(scale))


@dataclass
class UpscalerData:
    """An item of A1111's `shared.sd_upscalers`: `.name`, `.scaler.upscale(img, scale, data_path)`."""

    name: str
    scaler: _EngineUpscaler
    data_path: str | None = None
    scale: int = 4


def list_checkpoint_tiles(use_short: bool = False) -> list[str]:
    """The checkpoint titles (`name.safetensors [hash]`), A1111's `shared_items.list_checkpoint_tiles`."""
    return engine.registry.titles() if engine is not None else []


_NAMES_ELSEWHERE = ("options_templates", "listfiles", "walk_files", "face_restorers", "interrogator", "mem_mon",
                    "sd_upscalers_list", "html", "html_path", "reload_gradio_theme", "restricted_opts", "natural_sort_key",
                    "gradio_theme", "xformers_available", "loaded_hypernetworks", "clip_model", "settings_components",
                    "tab_names", "parser", "batch_cond_uncond", "parallel_processing_allowed", "styles_filename",
                    "config_filename", "sd_default_config", "sd_model_file", "weight_load_location", "latent_upscale_modes",
                    "latent_upscale_default_mode", "list_samplers", "refresh_checkpoints", "device_cpu", "State",
                    "sd_model_changed", "opts_data")


def __getattr__(name: str):
    if name == "sd_upscalers":
        infos = engine.upscalers.list() if engine is not None and engine.upscalers is not None else []
        return [UpscalerData(i.name, _EngineUpscaler(i.name), i.url or (str(i.path) if i.path else None), i.scale)
                for i in infos]  # A1111's data_path: the URL of a Real-ESRGAN model not downloaded yet
    if name == "sd_model":
        from modules.a1111.sd_model import view

        return view(engine.models.current) if engine is not None else None
    if name == "prompt_styles":
        return engine.styles if engine is not None else None
    if name in _NAMES_ELSEWHERE:
        from modules.a1111 import shared_names

        return getattr(shared_names, name)
    if name == "device":
        import torch

        return engine.device_config.device if engine is not None else torch.device("cpu")
    if name in ("models_path", "data_path", "script_path"):
        from modules.paths import REPO_ROOT

        if name == "script_path" or engine is None:
            return str(REPO_ROOT)
        return str(engine.paths.models_dir if name == "models_path" else engine.paths.data_dir)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

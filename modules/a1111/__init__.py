"""A1111's Python surface for community extensions, in one place.

`MODULES` is the table: every A1111 module name an extension may import → the module that implements it here, with
what it stands for. Three kinds of rows:

- our own module under A1111's name (``modules.images`` is our image saving); names only A1111 has are added by a
  module-level ``__getattr__`` that looks them up in ``modules.a1111.<short>_names`` (see `names_from`);
- a shim under ``modules/a1111/`` that A1111's name is aliased to by the import finder installed below;
- UI-side shims (they need gradio) that ``webui/`` registers when it starts (``enable_ui_modules``), so nothing in
  ``modules/`` imports gradio or ``webui/``.

Names that stand for A1111 internals we do not have (LDM model objects, k-diffusion samplers) exist and raise a
named `NotImplementedError` when used (`unsupported`), never at import. Our engine never imports this package.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

# A1111 module name → (implementation, what it is here)
MODULES: dict[str, tuple[str, str]] = {
    "launch": ("launch", "launch.py re-exports modules/launch_utils.py (is_installed, run_pip, run, git_tag)"),
    "modules.launch_utils": ("modules.launch_utils", "pip/git helpers for install.py, core packages protected"),
    "modules.shared": ("modules.shared", "opts, cmd_opts, state, sd_model … over the bound Engine"),
    "modules.shared_items": ("modules.a1111.shared_items", "list_checkpoint_tiles, refresh_checkpoints, sd_vae_items"),
    "modules.shared_state": ("modules.a1111.shared_state", "State = our JobState"),
    "modules.options": ("modules.a1111.options", "OptionInfo, OptionHTML, options_section, Options"),
    "modules.scripts": ("modules.scripts", "Script API, runners, basedir(), scripts_txt2img/img2img"),
    "modules.script_callbacks": ("modules.script_callbacks", "on_* registrations and their params"),
    "modules.scripts_postprocessing": ("modules.scripts_postprocessing", "ScriptPostprocessing, PostprocessedImage"),
    "modules.processing": ("modules.processing", "p objects, Processed, process_images over our engine"),
    "modules.images": ("modules.images", "saving, grids; + resize_image, read_info_from_image, flatten …"),
    "modules.devices": ("modules.devices", "device choice; + autocast, torch_gc, dtype_unet, get_optimal_device …"),
    "modules.paths": ("modules.paths", "models_path, data_path, script_path, extensions_dir …"),
    "modules.paths_internal": ("modules.a1111.paths_internal", "the same paths under their internal module"),
    "modules.sd_models": ("modules.sd_models", "checkpoint list/selection/loading over the registry"),
    "modules.sd_vae": ("modules.a1111.sd_vae", "VAE list and choice over the model manager"),
    "modules.sd_samplers": ("modules.a1111.sd_samplers", "our sampler table under A1111's SamplerData"),
    "modules.sd_samplers_common": ("modules.a1111.sd_samplers_common", "SamplerData, InterruptedException …"),
    "modules.sd_samplers_kdiffusion": ("modules.a1111.sd_samplers_kdiffusion", "k-diffusion internals: unsupported"),
    "modules.sd_samplers_compvis": ("modules.a1111.sd_samplers_compvis", "CompVis samplers: unsupported"),
    "modules.sd_samplers_timesteps": ("modules.a1111.sd_samplers_compvis", "timestep samplers: unsupported"),
    "modules.sd_hijack": ("modules.a1111.sd_hijack", "model_hijack: embedding db, get_prompt_lengths"),
    "modules.sd_hijack_optimizations": ("modules.a1111.sd_hijack_optimizations", "attention helpers"),
    "modules.sd_unet": ("modules.a1111.sd_unet", "SdUnet options: unsupported internals"),
    "modules.sd_hijack_unet": ("modules.a1111.sd_hijack_unet", "`th` (torch with A1111's tolerant cat)"),
    "modules.sd_hijack_clip": ("modules.a1111.sd_hijack_clip", "CLIP wrappers: unsupported internals"),
    "modules.sd_vae_approx": ("modules.a1111.sd_vae_approx", "cheap latent previews (ours)"),
    "modules.sd_models_xl": ("modules.a1111.sd_models_xl", "SDXL LDM hooks: unsupported internals"),
    "modules.sd_schedulers": ("modules.a1111.sd_schedulers", "schedule types from our table"),
    "modules.progress": ("modules.a1111.progress", "task ids and queue bookkeeping"),
    "modules.memmon": ("modules.a1111.shared_names", "MemUsageMonitor"),
    "modules.lowvram": ("modules.a1111.lowvram", "send_everything_to_cpu, is_enabled"),
    "modules.call_queue": ("modules.a1111.call_queue", "wrap_gradio_gpu_call over the engine's job queue"),
    "modules.errors": ("modules.a1111.errors", "report, display, display_once, run"),
    "modules.extra_networks": ("modules.a1111.extra_networks", "parse_prompt(s), ExtraNetwork registry"),
    "modules.prompt_parser": ("modules.prompt_parser", "prompt language; + conditioning containers"),
    "modules.hashes": ("modules.hashes", "file hashes; + sha256, sha256_from_cache"),
    "modules.cache": ("modules.a1111.cache", "cache.json subsections for extensions"),
    "modules.safe": ("modules.a1111.safe", "load (weights only), unsafe_torch_load"),
    "modules.masking": ("modules.masking", "mask helpers; + get_crop_region, expand_crop_region"),
    "modules.extensions": ("modules.extensions", "extension manager; + the loaded `extensions` list"),
    "modules.infotext_utils": ("modules.infotext_utils", "parse_generation_parameters, paste bindings"),
    "modules.generation_parameters_copypaste": ("modules.infotext_utils", "old name of the above (an alias)"),
    "modules.modelloader": ("modules.a1111.modelloader", "load_models (list files), load_file_from_url"),
    "modules.patches": ("modules.a1111.patches", "patch/undo/original: monkey-patching with bookkeeping"),
    "modules.textual_inversion": ("modules.a1111.textual_inversion", "package of the next row"),
    "modules.textual_inversion.textual_inversion": ("modules.a1111.textual_inversion.textual_inversion",
                                                    "Embedding, EmbeddingDatabase over ours"),
    "modules.deepbooru": ("modules.a1111.deepbooru", "DeepDanbooru tagger: not included"),
    "modules.interrogate": ("modules.a1111.deepbooru", "CLIP interrogator: not included"),
    "modules.extras": ("modules.a1111.extras", "run_pnginfo; the merger is in the Models tab"),
    "modules.img2img": ("modules.a1111.img2img", "img2img(…) UI entry and process_batch over the engine"),
    "modules.txt2img": ("modules.a1111.txt2img", "txt2img(…) UI entry over the engine"),
    "modules.api": ("modules.api", "our API package"),
    "modules.api.api": ("modules.api.api", "+ encode_pil_to_base64, decode_base64_to_image"),
    "modules.api.models": ("modules.api.models", "request/response models"),
    "modules.timer": ("modules.a1111.timer", "startup_timer with record()"),
    "modules.sysinfo": ("modules.a1111.sysinfo", "get() diagnostics"),
    "scripts.external_code": ("modules.a1111.controlnet_external_code", "sd-webui-controlnet's module for other "
                              "extensions: ControlNetUnit, get_all_units_in_processing, update_cn_script_in_processing "
                              "… (also as extensions-builtin/sd-webui-controlnet/scripts/external_code.py)"),
    "modules.ui": ("webui.a1111.ui", "UI helpers (gradio): create_refresh_button, gr_show, create_output_panel …"),
    "modules.ui_common": ("webui.a1111.ui", "the same helpers under their newer module"),
    "modules.ui_components": ("webui.gradio_compat:ui_components", "FormRow, ToolButton, InputAccordion … (put in "
                              "sys.modules by webui/gradio_compat.py's install())"),
    "modules.ui_extra_networks": ("webui.a1111.ui_extra_networks", "ExtraNetworksPage registration"),
}

_UI_PREFIX = "webui."
_ui_enabled = False


def enable_ui_modules() -> None:
    """Called by webui/ once gradio is loaded: UI-side rows of the table become importable."""
    global _ui_enabled
    _ui_enabled = True


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        return importlib.import_module(self.target)

    def exec_module(self, module):
        return None


class _AliasFinder(importlib.abc.MetaPathFinder):
    """Resolves A1111 module names that are implemented under another name (the table's shim rows)."""

    def find_spec(self, fullname, path=None, target=None):
        row = MODULES.get(fullname)
        if row is None or row[0] == fullname:
            return None
        impl = row[0]
        if ":" in impl or (impl.startswith(_UI_PREFIX) and not _ui_enabled):
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(impl), is_package=True)


def install() -> None:
    """Put the alias finder first on sys.meta_path (idempotent; cheap: nothing is imported here)."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())


def import_loaded_names() -> None:
    """Import the table's `modules.*` names that A1111 has imported by the time extensions load, so that
    `import modules` then `modules.shared_items.…` works as there (ADetailer). UI rows only once the UI is on."""
    import logging

    for name, (impl, _) in MODULES.items():
        if not name.startswith("modules.") or ":" in impl or (impl.startswith(_UI_PREFIX) and not _ui_enabled):
            continue
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - a shim that cannot load here stays unavailable, as before
            logging.getLogger(__name__).debug("A1111 name %s not importable: %s", name, e)


def names_from(module_name: str):
    """A module-level ``__getattr__`` for one of our modules whose A1111 namesake has more names: they live in
    ``modules.a1111.<short>_names`` and are imported on first use."""
    short = module_name.rsplit(".", 1)[-1]

    def __getattr__(name: str):
        if not name.startswith("__"):
            extra = importlib.import_module(f"modules.a1111.{short}_names")
            if name in getattr(extra, "__all__", ()) or hasattr(extra, name):
                return getattr(extra, name)
        raise AttributeError(f"module {module_name!r} has no attribute {name!r}")

    return __getattr__


from modules.a1111.unsupported import caller_extension, unsupported, Unsupported  # noqa: E402,F401

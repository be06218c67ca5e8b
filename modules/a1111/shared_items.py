"""A1111's `modules.shared_items`: lists the settings and extensions show."""
from __future__ import annotations

from modules.a1111._engine import engine, engine_or_none


def list_checkpoint_tiles(use_short=False):
    e = engine_or_none()
    return e.registry.titles() if e is not None else []


def refresh_checkpoints():
    engine().registry.refresh()


def sd_vae_items():
    e = engine_or_none()
    return e.models.vae_choices() if e is not None else ["Automatic", "None"]


def refresh_vae_list():
    from modules.a1111 import sd_vae

    sd_vae.refresh_vae_list()


def realesrgan_models_names():
    e = engine_or_none()
    return [u.name for u in e.upscalers.list()] if e is not None and e.upscalers is not None else []


def postprocessing_scripts():
    from modules import scripts

    return [d.script_class() for d in scripts.postprocessing_scripts_data]


def sd_unet_items():
    return ["Automatic", "None"]


def reload_hypernetworks():
    """List `models/hypernetworks` again (A1111 rebuilds `shared.hypernetworks`)."""
    e = engine_or_none()
    if e is not None and getattr(e, "hypernetworks", None) is not None:
        e.hypernetworks.refresh()


def get_infotext_names():
    from modules import settings

    return sorted({info.infotext for info in settings.OPTIONS.values() if getattr(info, "infotext", None)})


ui_reorder_categories_builtin_items = ["prompt", "image", "inpaint", "sampler", "accordions", "checkboxes",
                                       "dimensions", "cfg", "denoising", "seed", "batch", "override_settings"]


def ui_reorder_categories():
    yield from ui_reorder_categories_builtin_items
    yield "scripts"

"""PNG Info, Extras and Settings tabs (the Models tab is webui/models_tab.py)."""
from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Any

import gradio as gr

from modules import images as images_mod
from modules import infotext as infotext_mod
from modules import face_restoration, postprocessing
from modules import extension_faults
from modules.settings import DIRECTORY_OPTIONS, OPTIONS, section_title
from webui.runner import USER_ERRORS, error_html, guard_image_input, info_html, unreadable_upload

log = logging.getLogger(__name__)


def infotext_params_in_file(text: str) -> dict[str, str]:
    """The parameters the infotext itself holds, as written (A1111's defaults for absent keys are not added;
    `Size-1`/`Size-2` are shown as `Size: WxH` again)."""
    params = infotext_mod.parse_generation_parameters(text, split_legacy_sampler=False, fill_defaults=False)
    out: dict[str, str] = {}
    for key, value in params.items():
        if key in ("Prompt", "Negative prompt"):
            continue
        if key.endswith(("-1", "-2")) and f"{key[:-2]}-1" in params and f"{key[:-2]}-2" in params:
            base = key[:-2]
            out.setdefault(base, f"{params[base + '-1']}x{params[base + '-2']}")
            continue
        out[key] = value
    return out


def pnginfo_html(image) -> tuple[str, str]:
    if image is None:
        return "", ""
    text = images_mod.read_infotext(image)
    if not text:
        return "<div class='sd-note'>This image carries no generation parameters.</div>", ""
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in infotext_params_in_file(text).items())
    head = info_html(text)
    return f"{head}<table class='sd-params'>{rows}</table>", text


def _pnginfo_upload(payload):
    """Read the uploaded file ourselves: a file that is not a picture gets "not an image: <name>"."""
    from PIL import Image

    if not payload:
        return gr.update(), "", ""
    name = unreadable_upload(payload)
    if name is not None:
        return None, error_html(f"not an image: {name}"), ""
    with Image.open(payload["path"]) as im:
        im.load()
        return (gr.update(), *pnginfo_html(im))


def build_pnginfo():
    with gr.Row(equal_height=False):
        with gr.Column():
            image = gr.Image(label="Source", type="pil", format="png", elem_id="pnginfo_image",
                             sources=["upload", "clipboard"], height=400, image_mode=None)
        with gr.Column():
            out = gr.HTML(elem_id="pnginfo_generation_info")
            text = gr.Textbox(visible=False, elem_id="pnginfo_generation_info_text")
            with gr.Row():
                to_txt2img = gr.Button("Send to txt2img", elem_id="pnginfo_send_to_txt2img")
                to_img2img = gr.Button("Send to img2img", elem_id="pnginfo_send_to_img2img")
    guard_image_input(image, on_upload=False)  # "Send to img2img" reads it
    image.upload(_pnginfo_upload, image, [image, out, text], preprocess=False, show_progress="hidden")
    image.clear(lambda: ("", ""), None, [out, text], queue=False, show_progress="hidden")
    return {"image": image, "text": text, "to_txt2img": to_txt2img, "to_img2img": to_img2img}


def build_extras(engine):
    """A1111's Extras: single image, batch (uploads) or batch from a folder; upscaler 1 and 2, scale by or to."""
    names = engine.upscalers.names()
    with gr.Row(equal_height=False):
        with gr.Column():
            mode, resize_mode = gr.State("single"), gr.State("by")
            with gr.Tabs(elem_id="mode_extras"):
                with gr.Tab("Single Image", id="single", elem_id="extras_single_tab") as single_tab:
                    image = gr.Image(label="Source", type="pil", format="png", elem_id="extras_image",
                                     sources=["upload", "clipboard"], height=360, image_mode=None)
                with gr.Tab("Batch Process", id="batch", elem_id="extras_batch_process_tab") as batch_tab:
                    files = gr.File(label="Batch Process", file_count="multiple", file_types=["image"],
                                    type="filepath", elem_id="extras_image_batch")
                with gr.Tab("Batch from Directory", id="folder", elem_id="extras_batch_directory_tab") as dir_tab:
                    input_dir = gr.Textbox(label="Input directory", elem_id="extras_batch_input_dir",
                                           placeholder="A directory on the same machine where the server is running.")
                    output_dir = gr.Textbox(label="Output directory", elem_id="extras_batch_output_dir",
                                            placeholder="Leave blank to save images to the default path.")
                    show_results = gr.Checkbox(label="Show result images", value=True,
                                               elem_id="extras_show_extras_results")
            run = gr.Button("Generate", variant="primary", elem_id="extras_generate")
            with gr.Tabs(elem_id="extras_resize_mode"):
                with gr.Tab("Scale by", elem_id="extras_scale_by_tab") as by_tab:
                    scale = gr.Slider(1.0, 8.0, value=4.0, step=0.05, label="Resize", elem_id="extras_upscaling_resize")
                with gr.Tab("Scale to", elem_id="extras_scale_to_tab") as to_tab:
                    with gr.Row():
                        to_w = gr.Number(value=512, precision=0, label="Width", elem_id="extras_upscaling_resize_w")
                        to_h = gr.Number(value=512, precision=0, label="Height", elem_id="extras_upscaling_resize_h")
                        crop = gr.Checkbox(label="Crop to fit", value=True, elem_id="extras_upscaling_crop")
            with gr.Row():
                upscaler_1 = gr.Dropdown(names, value="Lanczos", label="Upscaler 1", elem_id="extras_upscaler_1")
                refresh = gr.Button("🔄", elem_id="extras_upscaler_refresh", size="sm", min_width=40, scale=0)
            with gr.Row():
                upscaler_2 = gr.Dropdown(names, value="None", label="Upscaler 2", elem_id="extras_upscaler_2")
                visibility = gr.Slider(0.0, 1.0, value=0.0, step=0.001, label="Upscaler 2 visibility",
                                       elem_id="extras_upscaler_2_visibility")
            with gr.Row():  # A1111's face restoration steps (0 = off); GFPGAN runs first, then CodeFormer
                gfpgan_vis = gr.Slider(0.0, 1.0, value=0.0, step=0.001, label="GFPGAN visibility",
                                       elem_id="extras_gfpgan_visibility")
            with gr.Row():
                codeformer_vis = gr.Slider(0.0, 1.0, value=0.0, step=0.001, label="CodeFormer visibility",
                                           elem_id="extras_codeformer_visibility")
                codeformer_w = gr.Slider(0.0, 1.0, value=0.0, step=0.001,
                                         label="CodeFormer weight (0 = maximum effect, 1 = minimum effect)",
                                         elem_id="extras_codeformer_weight")
        with gr.Column():
            gallery = gr.Gallery(label="Result", format="png", elem_id="extras_gallery", interactive=False,
                                 height=420, object_fit="contain", columns=3)
            info = gr.HTML(elem_id="html_info_extras")

    for tab, value in ((single_tab, "single"), (batch_tab, "batch"), (dir_tab, "folder")):
        tab.select(lambda v=value: v, None, mode, queue=False, show_progress="hidden")
    for tab, value in ((by_tab, "by"), (to_tab, "to")):
        tab.select(lambda v=value: v, None, resize_mode, queue=False, show_progress="hidden")

    def go(mode, img, paths, in_dir, out_dir, show, resize, factor, w, h, crop, up1, up2, vis, gfpgan=0.0,
           codeformer=0.0, codeformer_weight=0.0):
        to_size = resize == "to"
        opts = postprocessing.UpscaleOptions(up1, factor, int(w or 0) if to_size else 0,
                                             int(h or 0) if to_size else 0, up2, vis, crop, float(gfpgan or 0),
                                             float(codeformer or 0), float(codeformer_weight or 0))
        restorers = face_restoration.for_engine(engine)
        try:
            named = _extras_inputs(mode, img, paths, in_dir)
            outdir = (engine.paths.resolve_data_path(out_dir.strip()) if mode == "folder" and out_dir.strip()
                      else postprocessing.extras_output_dir(engine.paths, engine.settings))
            done = []
            with engine.queue.turn():
                for item in postprocessing.upscale_many(engine.upscalers, named, opts, restorers):
                    postprocessing.save_upscaled(item, outdir, engine.settings, upscaler_name=up1)
                    done.append(item if mode != "folder" or show else None)
        except (*USER_ERRORS, OSError) as e:
            return [], error_html(str(e))
        return _extras_result(done, outdir)

    inputs = [mode, image, files, input_dir, output_dir, show_results, resize_mode, scale, to_w, to_h, crop,
              upscaler_1, upscaler_2, visibility, gfpgan_vis, codeformer_vis, codeformer_w]
    run.click(go, inputs, [gallery, info], concurrency_id="generate", concurrency_limit=None)  # engine queue orders
    guard_image_input(image, info)
    refresh.click(lambda: [gr.update(choices=engine.upscalers.names())] * 2, None, [upscaler_1, upscaler_2],
                  queue=False)
    return {"image": image}


def _extras_inputs(mode: str, image, paths, input_dir: str):
    """(name, image) pairs for the chosen Extras mode; a clear ValueError when there is nothing to work on."""
    if mode == "single":
        if image is None:
            raise ValueError("Upload an image first")
        return [(None, image)]
    if mode == "batch":
        if not paths:
            raise ValueError("Add images to the batch first")
        return (_open_upload(p) for p in paths)
    if not (input_dir or "").strip():
        raise ValueError("Enter an input directory")
    return postprocessing.images_in_folder(input_dir.strip())


def _open_upload(path) -> tuple[str, Any]:
    from PIL import UnidentifiedImageError

    try:
        return Path(path).name, postprocessing.read_image(path)
    except (UnidentifiedImageError, OSError):
        raise ValueError(f"{Path(path).name} is not an image") from None


def _extras_result(done: list, outdir: Path):
    shown = [d for d in done if d is not None]
    if not done:
        return [], error_html("No images found")
    last = shown[-1] if shown else None
    sizes = f"{last.image.width}x{last.image.height}" if last else ""
    if len(done) == 1 and last is not None:
        note = f"Result: {sizes}, saved as {last.path}"
    else:
        note = f"{len(done)} images upscaled{' (last ' + sizes + ')' if sizes else ''}, saved to {outdir}"
    extra = f"<div class='sd-note' id='extras_result_note'>{html.escape(note)}</div>"
    return [d.image for d in shown], info_html(last.infotext if last else "", extra)


def build_settings(engine, args=None, tab=None):
    """A1111's Settings tab. The page shows what is saved: each time the tab is opened (`tab`'s select) its fields
    are filled from engine.settings (not the values at UI build), and Apply writes only the fields the user changed
    since then (compared with what the page was given), so a stale field never writes an old value back.

    Filled on opening, not on page load: ~200 updates to fields of a tab not yet drawn cost Gradio's page ~1 s
    of script time on every load, and a page left open for a day still shows today's settings."""
    components: list[tuple[str, Any]] = []
    sections: dict[str, list[str]] = {}
    hide_dirs = bool(getattr(args, "hide_ui_dir_config", False))
    for name, info in OPTIONS.items():
        if info.section == "hidden" or (hide_dirs and name in DIRECTORY_OPTIONS):
            continue
        sections.setdefault(info.section, []).append(name)
    with gr.Row():
        apply = gr.Button("Apply settings", variant="primary", elem_id="settings_submit")
    result = gr.HTML(elem_id="settings_result")
    with gr.Tabs(elem_id="settings"):
        for section, names in sections.items():
            with gr.Tab(section_title(section), elem_id=f"settings_{section}"):
                for name in names:
                    try:
                        comp = _setting_component(engine, name)
                    except Exception as e:  # noqa: BLE001 - one extension's bad setting must not stop the page
                        extension_faults.faults.record(f"setting {name}", e,
                                                       extension=getattr(OPTIONS[name], "extension", None) or "")
                        continue
                    if comp is not None:
                        components.append((name, comp))
        with gr.Tab("Defaults", id="defaults", elem_id="settings_tab_defaults"):
            defaults = _defaults_section(engine)
    names = [name for name, _ in components]
    shown = gr.State({name: _page_value(engine, name)[0] for name in names})

    def fill():
        """What is saved now, for every field (and the current choices of the dropdowns)."""
        values, updates = {}, []
        for name, comp in components:
            value, choices = _page_value(engine, name)
            values[name] = value
            if choices is not None and isinstance(comp, gr.Dropdown) and not getattr(comp, "multiselect", False):
                updates.append(gr.update(value=value, choices=choices))
            else:
                updates.append(gr.update(value=value))
        return [*updates, values]

    def do_apply(page_was, *values):
        page_was = page_was or {}
        changed = {}
        for (name, _), value in zip(components, values):
            if name in page_was and _same(value, page_was[name]):
                continue  # not touched on this page: whatever is saved stays
            stored = stored_value(name, value)
            if not _same(stored, engine.settings.get(name, None)):
                changed[name] = stored
        shown_now = dict(page_was)
        if not changed:
            shown_now.update({n: v for n, v in zip(names, values)})
            return "<div class='sd-note'>Nothing changed.</div>", shown_now
        try:
            engine.settings.update(changed)
            engine.settings.save()
        except (ValueError, OSError) as e:
            return error_html(str(e)), gr.update()
        shown_now.update({n: v for n, v in zip(names, values)})
        note = f"{len(changed)} settings changed: {html.escape(', '.join(changed))}"
        return f"<div class='sd-note'>{note}</div>", shown_now

    apply.click(do_apply, [shown, *[c for _, c in components]], [result, shown])
    if tab is not None:
        tab.select(fill, None, [*[c for _, c in components], shown], queue=False, show_progress="hidden")
    return {"apply": apply, "defaults": defaults}


def _defaults_section(engine) -> dict:
    """A1111's Settings → Defaults: the page's current values written to ui-config.json as the controls' defaults.
    webui/app.py wires the buttons once every tab's controls are known (`wire_defaults`)."""
    gr.HTML("<p>Change values in the other tabs, press <b>View changes</b> to review how they differ from the "
            f"defaults in <code>{html.escape(str(engine.paths.ui_config_file))}</code>, then <b>Apply</b> to write "
            "them there. The new defaults apply after a restart.</p>")
    with gr.Row():
        view = gr.Button("View changes", elem_id="ui_defaults_view", variant="secondary")
        apply = gr.Button("Apply", elem_id="ui_defaults_apply", variant="primary")
    return {"view": view, "apply": apply, "review": gr.HTML("", elem_id="ui_defaults_review")}


def wire_defaults(defaults: dict, cfg) -> None:
    """The Defaults buttons read every control ui-config.json has a `/value` key for (`cfg`: webui.ui_config)."""
    inputs = list(cfg.components.values())

    def view(*values):
        rows = "".join(f"<tr><td>{html.escape(key)}</td><td>{html.escape(repr(old))}</td>"
                       f"<td>{html.escape(repr(new))}</td></tr>" for key, old, new in cfg.changes(list(values)))
        rows = rows or "<tr><td colspan=3>No changes</td></tr>"
        return f"<table><thead><tr><th>Path</th><th>Old value</th><th>New value</th></tr></thead>{rows}</table>"

    def apply(*values):
        try:
            count = cfg.write_changes(list(values))
        except OSError as e:
            return error_html(str(e))
        return "<div class='sd-note'>No changes.</div>" if not count else \
            f"<div class='sd-note'>Wrote {count} changes: they apply after a restart.</div>"

    defaults["view"].click(view, inputs, defaults["review"], queue=False)
    defaults["apply"].click(apply, inputs, defaults["review"], queue=False)


# webui/app.py's bar: A1111's checkpoint, VAE and clip skip; Forge's parts and memory controls
FIXED_QUICK_SETTINGS = ("sd_model_checkpoint", "sd_vae", "forge_additional_modules", "CLIP_stop_at_last_layers",
                        "forge_unet_storage_dtype", "forge_async_loading", "forge_pin_shared_memory", "gpu_weights_mb")


def quick_settings(settings) -> tuple[str, ...]:
    """Every setting the bar at the top shows: the fixed ones, then the others A1111's "Quicksettings list" names
    (read when the page is built, as A1111: a change shows after a restart). Their fields in the Settings tab are
    copies with ids of their own."""
    wanted = settings.get("quicksettings_list", []) or []
    return FIXED_QUICK_SETTINGS + tuple(
        name for name in dict.fromkeys(wanted)
        if name in OPTIONS and name not in FIXED_QUICK_SETTINGS and OPTIONS[name].section != "hidden")


def quick_setting_component(engine, name: str):
    """A field of the bar for one of the Quicksettings list's settings: as the Settings tab makes it, labelled
    without the setting's key, with A1111's `setting_<name>` id."""
    return _setting_component(engine, name, quick=True)


def _same(a, b) -> bool:
    """Equal as settings: "" and None alike (an empty text box), 1 and 1.0 alike, lists element by element."""
    if a in ("", None) and b in ("", None):
        return True
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b


def _checkpoint_titles(engine) -> list[str]:
    try:
        return list(engine.registry.titles())
    except Exception:  # noqa: BLE001 - a registry that cannot list must not stop the Settings tab
        return []


def _page_value(engine, name: str):
    """(value the field shows, dropdown choices or None) for what is saved now."""
    info = OPTIONS[name]
    value = engine.settings.get(name, info.default)
    if name == "sd_model_checkpoint":
        titles = _checkpoint_titles(engine)
        entry = engine.registry.get(value) if value else None
        if entry is None and not value and engine.models.current is not None:
            entry = engine.registry.get(engine.models.current.title)
        return (entry.title if entry is not None else (value or None)), titles + (
            [value] if value and entry is None else [])
    if name == "sd_vae":
        choices = list(engine.models.vae_choices())
        return value, choices + ([value] if value and value not in choices else [])
    if getattr(info, "component", None) is not None:
        return value, None
    kind = info.type or type(info.default)
    choices = info.get_choices() if hasattr(info, "get_choices") else None
    if name == "quicksettings_list":  # offered, not enforced: an extension's key may be listed before it loads
        choices = [n for n, option in OPTIONS.items() if option.section != "hidden"]
    elif name == "upscaler_for_img2img" and engine.upscalers is not None:
        choices = ["None", *engine.upscalers.names()]
    elif name in ("hidden_tabs", "ui_tab_order"):  # extensions' tab titles can be typed in
        choices = ["txt2img", "img2img", "Extras", "PNG Info", "History", "Models", "Train", "Extensions"] + (
            ["Settings"] if name == "ui_tab_order" else [])
    if kind is bool:
        return bool(value), None
    if kind is list:
        values = list(value or [])
        return values, list(dict.fromkeys([*(choices or []), *values]))
    if choices:
        values = list(choices)
        if value not in values and value is not None:
            values.append(value)
        return value, values
    if kind is str or value is None:
        return "" if value is None else value, None
    return value, None


def stored_value(name: str, value):
    """A field's value as the option stores it: an empty box of a nullable option is None."""
    info = OPTIONS.get(name)
    if info is not None and info.nullable and value in ("", None):
        return None
    return value


def _setting_component(engine, name: str, quick: bool = False):
    info = OPTIONS[name]
    value, choices = _page_value(engine, name)
    label = info.label or name if quick else f"{info.label or name} ({name})"
    # The quick-settings bar has A1111's `setting_<name>` ids for its fields; the copies here get their own.
    eid = f"setting_{name}" if quick or name not in quick_settings(engine.settings) else f"setting_{name}_settings_tab"
    if name in ("sd_model_checkpoint", "sd_vae"):  # the checkpoint / VAE lists, as in the quick settings
        return gr.Dropdown(choices, value=value, label=label, elem_id=eid)
    if getattr(info, "component", None) is not None:  # an extension's option: its own component, as A1111 builds it
        args = info.component_args() if callable(info.component_args) else dict(info.component_args or {})
        return info.component(label=label, value=value, elem_id=eid, **args)
    kind = info.type or type(info.default)
    if kind is bool:
        return gr.Checkbox(value=value, label=label, elem_id=eid)
    if kind is list:
        has_choices = bool(info.get_choices())
        return gr.Dropdown(choices, value=value, multiselect=True, allow_custom_value=not has_choices, label=label,
                           elem_id=eid)
    if choices:
        return gr.Dropdown(choices, value=value, label=label, elem_id=eid)
    if kind in (int, float):
        if info.minimum is not None and info.maximum is not None and kind is int and info.maximum - info.minimum <= 4096:
            return gr.Slider(info.minimum, info.maximum, value=value, step=1, label=label, elem_id=eid)
        return gr.Number(value=value, label=label, elem_id=eid, precision=0 if kind is int else None)
    if kind is str or value is None:
        return gr.Textbox(value=str(value), label=label, elem_id=eid)
    return None

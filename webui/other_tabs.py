"""PNG Info, Extras, Models and Settings tabs."""
from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Any

import gradio as gr

from modules import images as images_mod
from modules import infotext as infotext_mod
from modules import postprocessing
from modules.models import detect
from modules.settings import OPTIONS
from webui.runner import USER_ERRORS, error_html, info_html

log = logging.getLogger(__name__)


def pnginfo_html(image) -> tuple[str, str]:
    if image is None:
        return "", ""
    text = images_mod.read_infotext(image)
    if not text:
        return "<div class='sd-note'>This image carries no generation parameters.</div>", ""
    params = infotext_mod.parse_generation_parameters(text)
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in params.items() if k not in ("Prompt", "Negative prompt"))
    head = info_html(text)
    return f"{head}<table class='sd-params'>{rows}</table>", text


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
    image.change(pnginfo_html, image, [out, text], show_progress="hidden")
    return {"image": image, "text": text, "to_txt2img": to_txt2img, "to_img2img": to_img2img}


def build_extras():
    with gr.Row(equal_height=False):
        with gr.Column():
            image = gr.Image(label="Source", type="pil", format="png", elem_id="extras_image",
                             sources=["upload", "clipboard"], height=360, image_mode=None)
            with gr.Tabs():
                with gr.Tab("Scale by", elem_id="extras_scale_by_tab"):
                    scale = gr.Slider(1.0, 8.0, value=2.0, step=0.05, label="Resize", elem_id="extras_upscaling_resize")
                with gr.Tab("Scale to", elem_id="extras_scale_to_tab"):
                    with gr.Row():
                        to_w = gr.Number(value=0, precision=0, label="Width", elem_id="extras_upscaling_resize_w")
                        to_h = gr.Number(value=0, precision=0, label="Height", elem_id="extras_upscaling_resize_h")
            upscaler = gr.Dropdown(list(postprocessing.UPSCALERS), value="Lanczos", label="Upscaler 1",
                                   elem_id="extras_upscaler_1")
            gr.Markdown("Face restoration (GFPGAN/CodeFormer) and model upscalers (ESRGAN…) are not included yet.",
                        elem_classes=["sd-note"])
            run = gr.Button("Generate", variant="primary", elem_id="extras_generate")
        with gr.Column():
            result = gr.Image(label="Result", type="pil", format="png", elem_id="extras_result", interactive=False,
                              height=360)
            info = gr.HTML(elem_id="html_info_extras")

    def go(img, factor, w, h, name):
        if img is None:
            return None, error_html("Upload an image first")
        try:
            out = postprocessing.upscale(img, name, factor, int(w or 0), int(h or 0))
        except USER_ERRORS as e:
            return None, error_html(str(e))
        text = "\n".join(t for t in (out.original_infotext, out.params_text) if t)
        return out.image, info_html(text)

    run.click(go, [image, scale, to_w, to_h, upscaler], [result, info], concurrency_id="generate")
    return {"image": image}


def _checkpoint_rows(engine) -> list[list[Any]]:
    rows = []
    for info in engine.registry.list():
        size = f"{info.size / 2**20:.1f} MiB" if info.size else ""
        rows.append([info.title, info.shorthash or "(hashing…)", family_label(info.filename), size,
                     str(info.filename)])
    return rows


def family_label(path: Path) -> str:
    """The family read from a .safetensors header (shapes only, no weights loaded); '—' where that can't be done."""
    path = Path(path)
    if path.is_dir():
        return "diffusers folder"
    if path.suffix.lower() != ".safetensors":
        return "—"
    try:
        from safetensors import safe_open

        class Shape:
            def __init__(self, shape):
                self.shape = tuple(shape)

        with safe_open(str(path), framework="pt") as f:
            shapes = {k: Shape(f.get_slice(k).get_shape()) for k in f.keys()}
        spec = detect.detect(shapes, name=path.name, prediction_hint=detect.prediction_hint_from_yaml(path))
        return spec.label if spec.prediction_type != "probe" else spec.label.replace("(probe)", "")
    except Exception as e:  # an unreadable file is shown as such, not an error page
        return f"unreadable: {str(e)[:120]}"


def build_models(engine, on_loaded):
    gr.Markdown("### Checkpoints")
    table = gr.Dataframe(headers=["Title", "Hash", "Family", "Size", "File"], value=_checkpoint_rows(engine),
                         interactive=False, elem_id="models_checkpoints", wrap=True)
    with gr.Row():
        refresh = gr.Button("🔄 Refresh", elem_id="models_refresh")
        choice = gr.Dropdown(engine.registry.titles(), label="Checkpoint", elem_id="models_checkpoint_choice")
        load = gr.Button("Load", variant="primary", elem_id="models_load")
    status = gr.HTML(elem_id="models_status")
    gr.Markdown("### VAEs")
    vae_table = gr.Dataframe(headers=["Name", "File"], value=_vae_rows(engine), interactive=False,
                             elem_id="models_vaes")

    def do_refresh():
        engine.registry.refresh()
        engine.registry.hash_all_in_background()
        return _checkpoint_rows(engine), gr.update(choices=engine.registry.titles()), _vae_rows(engine)

    def do_load(title):
        if not title:
            return error_html("Choose a checkpoint first"), gr.update()
        try:
            model = engine.models.select(title)
        except USER_ERRORS as e:
            return error_html(str(e)), gr.update()
        return f"<div class='sd-note'>Loaded {html.escape(model.title)} ({html.escape(model.spec.label)})</div>", \
            gr.update(value=model.title)

    refresh.click(do_refresh, None, [table, choice, vae_table])
    load.click(do_load, choice, [status, on_loaded], concurrency_id="generate")
    return {"refresh": refresh}


def _vae_rows(engine):
    from modules.models.registry import list_vaes

    return [[v.name, str(v.filename)] for v in list_vaes(engine.paths)]


def build_settings(engine):
    components: list[tuple[str, Any]] = []
    sections: dict[str, list[str]] = {}
    for name, info in OPTIONS.items():
        if info.section == "hidden":
            continue
        sections.setdefault(info.section, []).append(name)
    with gr.Row():
        apply = gr.Button("Apply settings", variant="primary", elem_id="settings_submit")
    result = gr.HTML(elem_id="settings_result")
    with gr.Tabs(elem_id="settings"):
        for section, names in sections.items():
            with gr.Tab(section.replace("-", " ").replace("_", " ").capitalize(), elem_id=f"settings_{section}"):
                for name in names:
                    comp = _setting_component(engine, name)
                    if comp is not None:
                        components.append((name, comp))

    def do_apply(*values):
        changed = {}
        for (name, _), value in zip(components, values):
            current = engine.settings.get(name, None)
            if value != current and not (value in ("", None) and current in ("", None)):
                changed[name] = value
        if not changed:
            return "<div class='sd-note'>Nothing changed.</div>"
        try:
            engine.settings.update(changed)
            engine.settings.save()
        except (ValueError, OSError) as e:
            return error_html(str(e))
        return f"<div class='sd-note'>{len(changed)} settings changed: {html.escape(', '.join(changed))}</div>"

    apply.click(do_apply, [c for _, c in components], result)
    return {"apply": apply}


def _setting_component(engine, name: str):
    info = OPTIONS[name]
    value = engine.settings.get(name, info.default)
    label = f"{info.label or name} ({name})"
    eid = f"setting_{name}"
    kind = info.type or type(info.default)
    choices = info.get_choices() if hasattr(info, "get_choices") else None
    if kind is bool:
        return gr.Checkbox(value=bool(value), label=label, elem_id=eid)
    if choices:
        values = list(choices)
        if value not in values and value is not None:
            values.append(value)
        return gr.Dropdown(values, value=value, label=label, elem_id=eid)
    if kind in (int, float):
        if info.minimum is not None and info.maximum is not None and kind is int and info.maximum - info.minimum <= 4096:
            return gr.Slider(info.minimum, info.maximum, value=value, step=1, label=label, elem_id=eid)
        return gr.Number(value=value, label=label, elem_id=eid, precision=0 if kind is int else None)
    if kind is str or value is None:
        return gr.Textbox(value="" if value is None else str(value), label=label, elem_id=eid)
    return None

"""A1111's `modules.ui` / `modules.ui_common` helpers that extension UIs call, built with Gradio 6."""
from __future__ import annotations

import html
import platform
import sys
from dataclasses import dataclass

import gradio as gr

refresh_symbol = "\U0001f504"  # 🔄
random_symbol = "\U0001f3b2\ufe0f"  # 🎲️
reuse_symbol = "\u267b\ufe0f"  # ♻️
paste_symbol = "\u2199\ufe0f"  # ↙
folder_symbol = "\U0001f4c2"  # 📂
save_style_symbol = "\U0001f4be"  # 💾
apply_style_symbol = "\U0001f4cb"  # 📋
clear_prompt_symbol = "\U0001f5d1\ufe0f"  # 🗑️
extra_networks_symbol = "\U0001F3B4"  # 🎴
switch_values_symbol = "\U000021C5"  # ⇅
detect_image_size_symbol = "\U0001F4D0"  # 📐
up_down_symbol = "\u2195\ufe0f"  # ↕️


def gr_show(visible=True):
    return gr.update(visible=visible)


def plaintext_to_html(text, classname=None):
    content = "<br>\n".join(html.escape(x) for x in str(text).split("\n"))
    return f"<p class='{classname}'>{content}</p>" if classname else f"<p>{content}</p>"


def create_refresh_button(refresh_component, refresh_method, refreshed_args, elem_id):
    """A 🔄 button: runs `refresh_method()`, then updates the component(s) with `refreshed_args` (a dict, or a
    function returning one), as A1111's."""
    from modules.ui_components import ToolButton

    components = refresh_component if isinstance(refresh_component, list) else [refresh_component]

    def refresh():
        refresh_method()
        args = refreshed_args() if callable(refreshed_args) else refreshed_args
        for comp in components:
            for k, v in (args or {}).items():
                try:
                    setattr(comp, k, v)
                except Exception:  # noqa: BLE001 - read-only attributes stay as they are
                    pass
        update = gr.update(**(args or {}))
        return [update] * len(components) if len(components) > 1 else update

    button = ToolButton(value=refresh_symbol, elem_id=elem_id)
    button.click(fn=refresh, inputs=[], outputs=components)
    return button


def setup_dialog(button_show, dialog, *, button_close=None):
    button_show.click(fn=lambda: gr.update(visible=True), inputs=[], outputs=[dialog])
    if button_close is not None:
        button_close.click(fn=lambda: gr.update(visible=False), inputs=[], outputs=[dialog])


@dataclass
class OutputPanel:
    gallery: object = None
    generation_info: object = None
    infotext: object = None
    html_log: object = None
    button_upscale: object = None

    def __iter__(self):
        """Old extensions unpack it: gallery, generation_info, html_info, html_log."""
        return iter((self.gallery, self.generation_info, self.infotext, self.html_log))


def create_output_panel(tabname, outdir, toprow=None):
    """A gallery with the selected image's infotext under it, like the generation tabs' output column."""
    with gr.Column(elem_id=f"{tabname}_results"):
        gallery = gr.Gallery(label="Output", show_label=False, elem_id=f"{tabname}_gallery", columns=4,
                             object_fit="contain", height="auto")
        generation_info = gr.Textbox(visible=False, elem_id=f"generation_info_{tabname}")
        infotext = gr.HTML(elem_id=f"html_info_{tabname}", elem_classes="infotext")
        html_log = gr.HTML(elem_id=f"html_log_{tabname}", elem_classes="html-log")
    return OutputPanel(gallery, generation_info, infotext, html_log)


def versions_html() -> str:
    import torch

    from modules.version import VERSION

    try:
        gradio_version = gr.__version__
    except AttributeError:
        gradio_version = "?"
    python = ".".join(str(x) for x in sys.version_info[:3])
    return (f"version: {html.escape(VERSION)} &#x2000;•&#x2000; python: {python} &#x2000;•&#x2000; "
            f"torch: {html.escape(torch.__version__)} &#x2000;•&#x2000; gradio: {html.escape(gradio_version)} "
            f"&#x2000;•&#x2000; {html.escape(platform.system())}")


def ordered_ui_categories():
    from modules.a1111.shared_items import ui_reorder_categories

    yield from ui_reorder_categories()


def create_override_settings_dropdown(tabname, row):
    return gr.Dropdown([], value=None, label="Override settings", visible=False, elem_id=f"{tabname}_override_settings",
                       multiselect=True)


def create_buttons(tabs_list):
    """A1111's "send to" buttons ({tab: button}); the page's own send-to buttons are wired by the tabs."""
    buttons = {}
    for tab in tabs_list:
        buttons[tab] = gr.Button(f"Send to {tab}", elem_id=f"{tab}_tab")
    return buttons


def bind_buttons(buttons, send_image, send_generate_info):
    """Record the bindings (A1111's register_paste_params_button for each button)."""
    from modules.infotext_utils import ParamBinding, register_paste_params_button

    for tabname, button in (buttons or {}).items():
        register_paste_params_button(ParamBinding(paste_button=button, tabname=tabname,
                                                  source_text_component=send_generate_info,
                                                  source_image_component=send_image))


def connect_paste_params_buttons():
    """Our tabs wire their own send-to buttons."""


def apply_setting(key, value):
    from modules import shared

    if value is None:
        return gr.update()
    shared.opts.set(key, value)
    shared.opts.save()
    return getattr(shared.opts, key)


def __getattr__(name):
    """A1111's module-level component handles (txt2img_paste_fields, …) do not exist in our layout."""
    if name in ("txt2img_paste_fields", "img2img_paste_fields"):
        return []
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

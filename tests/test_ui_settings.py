"""A1111's User interface settings that shape the page: what the "Send to" buttons send (`send_seed`,
`send_size`), the quick settings bar, hidden and ordered tabs, gallery and editor heights, brush colours."""
from __future__ import annotations

import gradio as gr
from PIL import Image

TEXT = "a red house\nSteps: 6, Sampler: Euler, CFG scale: 6, Seed: 7, Size: 64x64, Variation seed: 9"


def _sent(engine, picture, **settings) -> dict:
    from webui import generation_tabs
    from webui.app import sent_updates

    for key, value in settings.items():
        engine.settings.set(key, value)
    with gr.Blocks():
        controls = generation_tabs.build_img2img(engine)
    updates = sent_updates(engine.settings, controls, TEXT, picture)
    return {name: update.get("value") for (name, _), update in zip(controls.fields, updates)}


def test_send_seed_and_size_follow_the_settings(engine):
    hires = Image.new("RGB", (128, 96))
    sent = _sent(engine, hires)  # A1111's defaults: both on
    assert (sent["seed"], sent["subseed"], sent["steps"], sent["prompt"]) == (7, 9, 6, "a red house")
    assert (sent["width"], sent["height"]) == (128, 96)  # the picture's own size, not the first pass's 64x64
    kept = _sent(engine, hires, send_seed=False, send_size=False)
    assert kept["seed"] is None and kept["subseed"] is None and kept["width"] is None and kept["height"] is None
    assert kept["steps"] == 6 and kept["prompt"] == "a red house"  # the rest is still sent


def test_quicksettings_list_hidden_tabs_and_tab_order_shape_the_page(tiny_models, tmp_path):
    """A1111's "Quicksettings list" (a listed setting gets a field in the bar at the top, saved as it changes; its
    Settings-tab field gets an id of its own), "Hidden UI tabs" and "UI tab order", read when the page is built."""
    from modules import script_callbacks
    from tests import ext_fixtures
    from webui import app as webui_app

    engine, ns = ext_fixtures.extension_engine(tiny_models, tmp_path, {})
    engine.settings.update({"quicksettings_list": ["sd_model_checkpoint", "img2img_color_correction",
                                                   "eta_noise_seed_delta", "no_such_setting"],
                            "hidden_tabs": ["Train", "Settings"], "ui_tab_order": ["Extras", "img2img"]})
    try:
        demo = webui_app.create_ui(engine, ns)
    finally:
        script_callbacks.clear_callbacks()
    by_id = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}

    def inside(block):
        for child in getattr(block, "children", []):
            yield child
            yield from inside(child)

    in_bar = {c.elem_id for c in inside(by_id["quicksettings_listed"])}
    assert {"setting_img2img_color_correction", "setting_eta_noise_seed_delta"} <= in_bar
    assert "setting_no_such_setting" not in by_id
    assert by_id["setting_img2img_color_correction_settings_tab"] is not by_id["setting_img2img_color_correction"]
    assert by_id["setting_img2img_color_correction"].label == "Apply color correction to img2img results to " \
                                                              "match original colors"
    tab_ids = [c.elem_id for c in by_id["tabs"].children]
    assert tab_ids[:3] == ["tab_extras", "tab_img2img", "tab_txt2img"]
    assert by_id["tab_train"].visible is False and by_id["tab_settings"].visible is not False  # never hidden

    field = by_id["setting_eta_noise_seed_delta"]
    change = next(fn for fn in demo.fns.values() if fn.inputs == [field])
    change.fn(31337)
    assert engine.settings.get("eta_noise_seed_delta") == 31337
    assert '"eta_noise_seed_delta": 31337' in engine.paths.config_file.read_text()


def test_gallery_and_editor_heights_and_brush_colours_follow_the_settings(engine):
    from webui import generation_tabs

    engine.settings.update({"gallery_height": "30em", "img2img_editor_height": 500,
                            "img2img_sketch_default_brush_color": "#ff0000",
                            "img2img_inpaint_mask_brush_color": "#00ff00"})
    with gr.Blocks():
        controls = generation_tabs.build_img2img(engine)
    editors = {k: controls.extra[k] for k in ("init", "sketch", "inpaint", "inpaint_sketch")}
    assert controls.gallery.height == "30em"
    assert {e.height for e in editors.values()} == {500}
    assert editors["sketch"].brush.colors[0] == "#ff0000"
    assert editors["inpaint"].brush.colors == ["#00ff00"]


def test_the_browser_opens_at_start_as_auto_launch_browser_says():
    """A1111's "Automatically open webui in browser on startup": Local (the default) unless the server is for
    other computers, Remote always, Disable never; --autolaunch always."""
    from argparse import Namespace

    from modules.server import opens_browser

    local, listening = Namespace(listen=False, share=False, server_name=None), Namespace(listen=True)
    setting = {"auto_launch_browser": "Local"}
    get = type("S", (), {"get": lambda self, k, d=None: setting.get(k, d)})()
    assert opens_browser(local, get) and not opens_browser(listening, get)
    setting["auto_launch_browser"] = "Remote"
    assert opens_browser(listening, get)
    setting["auto_launch_browser"] = "Disable"
    assert not opens_browser(local, get) and opens_browser(Namespace(autolaunch=True), get)


def test_show_warnings_lets_the_libraries_warnings_through_or_not():
    """A1111's "Show warnings in console" (off by default)."""
    import warnings

    from modules.server import show_warnings

    with warnings.catch_warnings(record=True) as seen:
        show_warnings(False)
        warnings.warn("a library's deprecation", DeprecationWarning)
        show_warnings(True)
        warnings.warn("a library's note", UserWarning)
    assert [str(w.message) for w in seen] == ["a library's note"]


def test_pasting_skips_the_listed_fields_and_infers_styles(engine):
    """A1111's "Disregard fields from pasted infotext" and "Infer styles from prompts of pasted infotext" (Apply if
    any, its default: a style whose text is in the prompt is picked and its text taken out)."""
    from webui import generation_tabs

    engine.paths.styles_file.write_text('name,prompt,negative_prompt\nInk,"{prompt}, ink drawing",\n')
    engine.styles.reload()
    with gr.Blocks():
        controls = generation_tabs.build_txt2img(engine)
    text = "a cat, ink drawing\nSteps: 5, Sampler: Euler, Seed: 3, Size: 64x64"

    def pasted(**settings):
        engine.settings.update(settings)
        updates = generation_tabs.paste_updates(controls, text)
        return {name: u.get("value") for (name, _), u in zip(controls.fields, updates)}

    inferred = pasted()
    assert inferred["prompt"] == "a cat" and inferred["styles"] == ["Ink"] and inferred["seed"] == 3
    kept = pasted(infotext_styles="Ignore", infotext_skip_pasting=["Seed"])
    assert kept["prompt"] == "a cat, ink drawing" and kept["styles"] is None and kept["seed"] is None
    assert kept["steps"] == 5
    discarded = pasted(infotext_styles="Discard", infotext_skip_pasting=[])
    assert discarded["prompt"] == "a cat" and discarded["styles"] is None

"""ui-config.json's slider keys as A1111 reads them: `/minimum`, `/maximum`, `/step` and `/value`; a hand-edited
value outside the range, or a range that cannot be, is replaced with a warning instead of breaking Generate."""
from __future__ import annotations

import json
import logging

from webui.ui_config import UiConfig


def test_a_raised_maximum_allows_the_stored_value_and_built_ins_are_written(tmp_path):
    path = tmp_path / "ui-config.json"
    path.write_text(json.dumps({"txt2img/Sampling steps/maximum": 500, "txt2img/Sampling steps/value": 400}))
    cfg = UiConfig(path)
    assert cfg.slider("txt2img/Sampling steps", 1, 150, 20, 1) == {"minimum": 1, "maximum": 500, "step": 1,
                                                                    "value": 400}
    assert cfg.slider("txt2img/Width", 64, 2048, 512, 8)["value"] == 512
    cfg.save()
    saved = json.loads(path.read_text())
    assert saved["txt2img/Width/minimum"] == 64 and saved["txt2img/Width/step"] == 8
    assert saved["txt2img/Sampling steps/maximum"] == 500 and saved["txt2img/Sampling steps/minimum"] == 1


def test_an_impossible_value_or_range_is_replaced_with_a_warning(tmp_path, caplog):
    path = tmp_path / "ui-config.json"
    path.write_text(json.dumps({"a/Steps/value": 999, "b/Steps/minimum": 50, "b/Steps/maximum": 10,
                                "c/Steps/maximum": "lots", "d/Steps/step": 0}))
    cfg = UiConfig(path)
    with caplog.at_level(logging.WARNING):
        assert cfg.slider("a/Steps", 1, 150, 20, 1)["value"] == 150
        assert cfg.slider("b/Steps", 1, 150, 20, 1) == {"minimum": 1, "maximum": 150, "step": 1, "value": 20}
        assert cfg.slider("c/Steps", 1, 150, 20, 1)["maximum"] == 150
        assert cfg.slider("d/Steps", 1, 150, 20, 1)["step"] == 1
    text = caplog.text
    assert "a/Steps/value 999 is outside 1 to 150" in text and "b/Steps has minimum 50, maximum 10" in text
    assert "c/Steps/maximum is 'lots'" in text and "d/Steps has minimum 1, maximum 150, step 0" in text


def test_the_page_takes_every_labelled_controls_keys_as_a1111_writes_them(tiny_models, tmp_path, caplog):
    """A user's ui-config.json from A1111: prompts, dropdowns, radios, checkboxes, hidden controls, the opening tab,
    and script controls under `customscript/<file>/` (the built-in refiner, ControlNet and prompt matrix) take
    effect; values a control cannot take are named and left; keys the file lacks are written."""
    from modules import script_callbacks
    from tests import ext_fixtures
    from webui import app as webui_app

    engine, ns = ext_fixtures.extension_engine(tiny_models, tmp_path, {}, builtin=True)
    stored = {"txt2img/Negative prompt/value": "blurry", "txt2img/Sampling method/value": "DPM++ 2M",
              "txt2img/Schedule type/value": "Karras", "txt2img/Hires. fix/value": True,
              "txt2img/Upscaler/value": "No such upscaler", "txt2img/CFG Scale/value": "high",
              "img2img/Resize mode/value": "Crop and resize", "txt2img/Seed/visible": False,
              "customscript/refiner.py/txt2img/Refiner/value": True,
              "customscript/controlnet.py/img2img/Control Weight/value": 0.5,
              "customscript/prompt_matrix.py/txt2img/Put variable parts at start of prompt/value": True,
              "webui/Tabs@tabs/selected": "img2img", "img2img/Tabs@mode_img2img/selected": "inpaint"}
    engine.paths.ui_config_file.write_text(json.dumps(stored))
    try:
        with caplog.at_level(logging.WARNING):
            demo = webui_app.create_ui(engine, ns)
    finally:
        script_callbacks.clear_callbacks()
    by_id = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    assert by_id["txt2img_neg_prompt"].value == "blurry" and by_id["txt2img_sampling"].value == "DPM++ 2M"
    assert by_id["txt2img_scheduler"].value == "Karras" and by_id["resize_mode"].value == "Crop and resize"
    assert by_id["txt2img_enable_hr"].value is True and by_id["txt2img_seed"].visible is False
    assert by_id["txt2img_hr"].open is True  # A1111's hires checkbox is its accordion: checked, it is open
    assert by_id["txt2img_enable-checkbox"].value is True and by_id["img2img_enable-checkbox"].value is False
    weights = [b.value for i, b in by_id.items() if i.startswith("img2img_controlnet_") and i.endswith("_weight_slider")]
    assert weights and set(weights) == {0.5}
    assert by_id["tabs"].selected == "img2img"
    # img2img's sub-tab by A1111's id for it: Inpaint, with its options shown and the mode the page starts in
    assert by_id["mode_img2img"].selected == "inpaint_tab" and by_id["img2img_inpaint_controls"].visible is True
    assert by_id["txt2img_hr_upscaler"].value == "Latent" and by_id["txt2img_cfg_scale"].value == 7.0
    assert "txt2img/Upscaler/value is 'No such upscaler'" in caplog.text and "CFG Scale/value is 'high'" in caplog.text
    runner = engine.scripts.txt2img  # an API request without the script's arguments gets the file's value
    matrix = next(s for s in runner.scripts if (s.filename or "").endswith("prompt_matrix.py"))
    assert runner.defaults[matrix.args_from] is True
    written = json.loads(engine.paths.ui_config_file.read_text())
    assert written["txt2img/Prompt/value"] == "" and written["img2img/Denoising strength/maximum"] == 1.0
    assert written["txt2img/Generate/visible"] is True and written["txt2img/Negative prompt/value"] == "blurry"
    assert written["customscript/refiner.py/img2img/Switch at/value"] == 0.8
    assert "customscript/xyz_grid.py/txt2img/X values/value" in written
    view = by_id["ui_defaults_view"]  # Settings → Defaults reads every control with a `/value` key
    inputs = next(len(fn.inputs) for fn in demo.fns.values() if any(t[0] == view._id for t in fn.targets))
    assert inputs >= sum(1 for key in written if key.endswith("/value") and not key.startswith("webui/")) > 200


def test_a_checkbox_that_is_an_accordion_hides_the_whole_accordion(tmp_path):
    """A1111's InputAccordion (Hires. fix; extensions' `InputAccordion`): `…/visible: false` hides the accordion,
    not only its checkbox, which would leave an empty accordion on the page."""
    import gradio as gr

    path = tmp_path / "ui-config.json"
    path.write_text(json.dumps({"t/Hires. fix/visible": False, "t/Hires. fix/value": False}))
    with gr.Blocks():
        with gr.Tab("t") as tab:
            with gr.Accordion("Hires. fix", open=True) as accordion:
                enable = gr.Checkbox(label="Enable hires. fix", value=True)
                enable.ui_config_label, enable.accordion = "Hires. fix", accordion
    cfg = UiConfig(path)
    cfg.apply_block(tab, "t")
    assert accordion.visible is False and enable.visible is True
    assert enable.value is False and accordion.open is False


def test_defaults_view_and_apply_write_the_pages_values_as_the_next_defaults(tmp_path):
    """Settings → Defaults (A1111's): the page's values that differ from the file are listed, then written into it
    (an index-typed radio by its choice); the file's other keys, even ones written since the start, stay."""
    import gradio as gr
    import pytest

    def build(cfg):
        with gr.Blocks():
            with gr.Tab("t") as tab:
                gr.Slider(1, 150, value=20, step=1, label="Steps")
                gr.Radio(["Just resize", "Crop and resize"], value="Just resize", type="index", label="Resize mode")
                prompt = gr.Textbox(label="Prompt")
        cfg.apply_block(tab, "t")
        cfg.save()
        return prompt

    path = tmp_path / "ui-config.json"
    cfg = UiConfig(path)
    build(cfg)
    assert list(cfg.components) == ["t/Steps/value", "t/Resize mode/value", "t/Prompt/value"]
    assert cfg.changes([20, 0, ""]) == []
    page = [30, 1, "a cat"]
    assert cfg.changes(page) == [("t/Steps/value", 20, 30), ("t/Resize mode/value", "Just resize", "Crop and resize"),
                                 ("t/Prompt/value", "", "a cat")]
    path.write_text(json.dumps({**json.loads(path.read_text()), "other/X/value": 1}))
    assert cfg.write_changes(page) == 3
    saved = json.loads(path.read_text())
    assert (saved["t/Steps/value"], saved["t/Resize mode/value"], saved["other/X/value"]) == (30, "Crop and resize", 1)
    assert build(UiConfig(path)).value == "a cat"  # the next start's default

    path.write_text("{not json")  # a file that cannot be read is left for the user to fix, never written over
    broken = UiConfig(path)
    build(broken)
    with pytest.raises(OSError, match="could not be read"):
        broken.write_changes(page)
    assert path.read_text() == "{not json"


def test_hidden_samplers_and_token_counters_settings_shape_the_page(tiny_models, tmp_path):
    """A1111's "Hide samplers in user interface" (the sampling and hires dropdowns leave them out; the default falls
    to the first shown) and "Disable prompt token counters" (no counters on the page)."""
    from modules import script_callbacks
    from modules.sampling import samplers
    from tests import ext_fixtures
    from webui import app as webui_app

    engine, ns = ext_fixtures.extension_engine(tiny_models, tmp_path, {}, builtin=True)
    hidden = [samplers.UI_DEFAULT_SAMPLER, "Euler a"]
    engine.settings.set("hide_samplers", hidden)
    engine.settings.set("disable_token_counters", True)
    try:
        demo = webui_app.create_ui(engine, ns)
    finally:
        script_callbacks.clear_callbacks()
    by_id = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    offered = [c[0] if isinstance(c, (list, tuple)) else c for c in by_id["txt2img_sampling"].choices]
    assert not set(hidden) & set(offered) and "Euler" in offered
    assert by_id["txt2img_sampling"].value == offered[0]
    hires = [c[0] if isinstance(c, (list, tuple)) else c for c in by_id["hr_sampler"].choices]
    assert "Euler a" not in hires and "Euler" in hires
    assert by_id["txt2img_token_counter"].visible is False and by_id["img2img_negative_token_counter"].visible is False

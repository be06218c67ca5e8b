"""Gradio 3 calls found in community A1111 extensions (every pattern of the extension survey) build and behave under
Gradio 6: an extension-shaped UI file written with them is loaded from an `extensions/` folder, built in a
gr.Blocks, and its events are run through gradio's own request path."""
from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import sys
import tempfile

import gradio as gr
import numpy as np
import pytest
from gradio.state_holder import SessionState
from gradio.utils import get_upload_folder
from PIL import Image

from modules import script_callbacks
from webui import gradio_compat

EXTENSION_UI = '''
import gradio as gr
import gradio.components
from gradio.components import FormComponent, IOComponent
from modules.ui_components import ToolButton as A1111ToolButton

seen = {}


class RefreshButton(gr.Button, FormComponent):
    """The A1111 way to make a small icon button: no get_block_name, **kwargs only."""

    def __init__(self, **kwargs):
        super().__init__(variant="tool", **kwargs)


class PassThrough(gradio.components.IOComponent):
    """A Gradio 3 custom component: IOComponent had pass-through pre/postprocess."""

    def get_block_name(self):
        return "textbox"


def remember(name):
    def callback(*values):
        seen[name] = values[0] if len(values) == 1 else values
        return "ok"
    return callback


def build():
    c = {}
    with gr.Box():
        with gr.Row().style(equal_height=True):
            with gr.Column(scale=0.4) as c["narrow"]:
                c["sketch"] = gr.Image(source="upload", tool="sketch", type="pil", label="Mask",
                                       brush_color="#ffffff", brush_radius=20, elem_id="g3_sketch")
                c["sketch_np"] = gr.Image(source="upload", tool="sketch", type="numpy", image_mode="L")
            with gr.Column(scale=1.6) as c["wide"]:
                c["color"] = gr.Image(source="upload", tool="color-sketch", type="pil", brush_color="#00ff00")
                c["editor"] = gr.Image(tool="editor", type="numpy")
                c["canvas"] = gr.Image(source="canvas", shape=(64, 48), type="pil")
                c["webcam"] = gr.Image(source="webcam", type="pil")
                c["thumb"] = gr.Image(shape=(16, 8), type="pil")
    c["video"] = gr.Video(source="upload")
    c["files"] = gr.File(type="file", file_count="multiple")
    c["table"] = gr.Dataframe(headers=["a", "b"], max_rows=10, overflow_row_behaviour="paginate")
    c["gallery"] = gr.Gallery(label="Out").style(grid=[2, 4], height="auto")
    c["prompt"] = gr.Textbox(label="Prompt", lines=2).style(container=False)
    c["go"] = gr.Button("Go", variant="primary").style(full_width=False)
    c["tool"] = gr.Button("\\U0001f504", variant="tool")
    c["refresh"] = RefreshButton(value="\\U0001f5d1")
    c["a1111_tool"] = A1111ToolButton("\\U0001f4cb")
    c["custom"] = PassThrough(value="x", label="Custom")
    c["legacy_in"] = gr.inputs.Textbox(lines=3, default="hello", label="Legacy")
    c["legacy_slider"] = gr.inputs.Slider(1, 10, 1, default=4, label="Steps")
    c["legacy_out"] = gr.outputs.Image(type="auto", label="Legacy out")
    c["status"] = gr.Textbox(label="Status")
    c["drop"] = gr.Dropdown(choices=["a", "b"], value="a")

    c["dep_sketch"] = c["go"].click(remember("sketch"), [c["sketch"]], [c["status"]], _js="(x) => x")
    c["dep_then"] = c["dep_sketch"].then(fn=None, _js="() => window.g3_then = true")
    c["go"].click(remember("sketch_np"), [c["sketch_np"]], [c["status"]])
    c["go"].click(remember("color"), [c["color"]], [c["status"]])
    c["go"].click(remember("canvas"), [c["canvas"]], [c["status"]])
    c["go"].click(remember("files"), [c["files"]], [c["status"]])
    c["drop"].change(lambda v: gr.Dropdown.update(choices=["a", "b", v + "!"], value=v + "!"), [c["drop"]],
                     [c["drop"]], _js="(v) => v")
    c["tool"].click(lambda: gr.Image.update(value=None), None, [c["sketch"]])
    gr.on([c["prompt"].submit], fn=None, _js="() => 'on'")
    return c


def build_with_unknown_arguments():
    a = gr.Textbox(label="One", show_copy_button_v3=True)
    b = gr.Slider(0, 1, label="Two", randomize_v3=True)
    return a, b
'''


@pytest.fixture(scope="module")
def ext(tmp_path_factory):
    """The fixture extension's UI module, imported from `<data>/extensions/sd-webui-g3-fixture/scripts/`."""
    gradio_compat.install()
    folder = tmp_path_factory.mktemp("g3") / "extensions" / "sd-webui-g3-fixture" / "scripts"
    folder.mkdir(parents=True)
    path = folder / "g3_ui.py"
    path.write_text(EXTENSION_UI)
    spec = importlib.util.spec_from_file_location("g3_fixture_ui", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as modules.scripts loads extension scripts
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def ui(ext):
    created = []
    script_callbacks.on_after_component(lambda component, **kw: created.append(kw.get("elem_id")))
    try:
        with gr.Blocks() as demo:
            c = ext.build()
            demo.load(fn=None, _js="() => 'loaded'")
    finally:
        script_callbacks.clear_callbacks()
    return demo, c, created


def _run(demo, fn_index, *inputs):
    """One event through gradio's request path (payload validation, preprocess, callback, postprocess)."""
    return asyncio.run(demo.process_api(block_fn=fn_index, inputs=list(inputs), state=SessionState(demo)))


def _fn_index(demo, component, event="click", n=0):
    found = [i for i, fn in demo.fns.items()
             if any(t[0] == component._id and t[1] == event for t in fn.targets)]
    return found[n]


def _upload_dir() -> str:
    """Where gradio keeps uploads: files a request names must be there."""
    os.makedirs(get_upload_folder(), exist_ok=True)
    return tempfile.mkdtemp(dir=get_upload_folder())


def _file(image: Image.Image, name: str) -> dict:
    folder = _upload_dir()
    path = os.path.join(folder, name)
    image.save(path)
    return {"path": path, "orig_name": name, "meta": {"_type": "gradio.FileData"}}


def _painted_payload(size=(32, 32), box=(4, 4, 12, 12), colour=(255, 255, 255, 255)):
    background = Image.new("RGB", size, (200, 30, 30))
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    layer.paste(colour, box)
    composite = background.convert("RGBA")
    composite.alpha_composite(layer)
    return {"background": _file(background, "photo.png"), "layers": [_file(layer, "layer.png")],
            "composite": _file(composite, "composite.png"), "id": None}


def test_the_gradio3_ui_builds_and_renders_with_gradio6_components(ui):
    demo, c, created = ui
    config = demo.get_config_file()
    types = {comp["id"]: comp["type"] for comp in config["components"]}
    assert types[c["sketch"]._id] == "imageeditor"
    assert types[c["thumb"]._id] == "image"
    assert types[c["refresh"]._id] == "button" and types[c["a1111_tool"]._id] == "button"
    assert types[c["custom"]._id] == "textbox"
    assert "g3_sketch" in created  # on_after_component still sees components by elem_id
    props = {comp["id"]: comp["props"] for comp in config["components"]}
    assert props[c["a1111_tool"]._id]["value"] == "\U0001f4cb"  # a positional label survives the subclass
    assert props[c["refresh"]._id]["value"] == "\U0001f5d1"


def test_js_reaches_the_page_on_listeners_then_load_and_gr_on(ui):
    demo, c, _ = ui
    js = [dep["js"] for dep in demo.get_config_file()["dependencies"]]
    assert "(x) => x" in js and "() => window.g3_then = true" in js
    assert "(v) => v" in js and "() => 'on'" in js and "() => 'loaded'" in js


def test_sketch_callback_gets_gradio3_image_and_mask(ui, ext):
    demo, c, _ = ui
    result = _run(demo, _fn_index(demo, c["go"], n=0), _painted_payload())
    assert result["data"] == ["ok"]
    value = ext.seen["sketch"]
    assert set(value) == {"image", "mask"}
    image, mask = value["image"], value["mask"]
    assert isinstance(image, Image.Image) and image.size == (32, 32)
    assert image.getpixel((6, 6)) == (200, 30, 30)  # the picture itself, without the strokes
    assert mask.getpixel((6, 6)) == (255, 255, 255) and mask.getpixel((20, 20)) == (0, 0, 0)


def test_sketch_mask_follows_type_and_image_mode(ui, ext):
    demo, c, _ = ui
    _run(demo, _fn_index(demo, c["go"], n=1), _painted_payload(box=(0, 0, 8, 32)))
    value = ext.seen["sketch_np"]
    assert isinstance(value["mask"], np.ndarray) and value["mask"].shape == (32, 32)
    assert value["mask"][:, :8].min() == 255 and value["mask"][:, 8:].max() == 0


def test_color_sketch_and_canvas_give_the_drawn_picture(ui, ext):
    demo, c, _ = ui
    _run(demo, _fn_index(demo, c["go"], n=2), _painted_payload(colour=(0, 255, 0, 255)))
    drawn = ext.seen["color"]
    assert isinstance(drawn, Image.Image) and drawn.getpixel((6, 6)) == (0, 255, 0)
    assert drawn.getpixel((20, 20)) == (200, 30, 30)

    stroke = Image.new("RGBA", (64, 48), (0, 0, 0, 0))
    stroke.paste((0, 0, 0, 255), (10, 10, 20, 20))
    canvas = {"background": None, "layers": [_file(stroke, "l.png")], "composite": _file(stroke, "c.png"),
              "id": None}
    _run(demo, _fn_index(demo, c["go"], n=3), canvas)
    sketch = ext.seen["canvas"]
    assert sketch.mode == "RGB" and sketch.size == (64, 48)
    assert sketch.getpixel((15, 15)) == (0, 0, 0) and sketch.getpixel((40, 40)) == (255, 255, 255)


def test_sketch_editor_shows_what_gradio3_callbacks_return(ui):
    _, c, _ = ui
    sketch = c["sketch"]
    assert sketch.brush.default_size == 20 and sketch.brush.colors == ["#ffffff"]
    photo = Image.new("RGB", (20, 10), "blue")
    mask = Image.new("L", (20, 10), 0)
    mask.paste(255, (0, 0, 5, 10))
    shown = sketch.postprocess({"image": photo, "mask": mask})
    assert shown.background is not None and len(shown.layers) == 1
    layer = Image.open(shown.layers[0].path)
    assert layer.getchannel("A").getpixel((2, 5)) == 255 and layer.getchannel("A").getpixel((15, 5)) == 0
    assert sketch.postprocess(photo).background is not None
    assert sketch.postprocess(None) is None


def test_image_shape_and_sources(ui):
    _, c, _ = ui
    assert c["webcam"].sources == ["webcam"] and c["video"].sources == ["upload"]
    assert c["canvas"].canvas_size == (64, 48) and c["canvas"].sources == []
    from gradio.data_classes import ImageData

    big = _file(Image.new("RGB", (100, 100), "white"), "big.png")
    out = c["thumb"].preprocess(ImageData(path=big["path"], orig_name="big.png"))
    assert out.size == (16, 8)


def test_file_type_file_values_have_name(ui, ext):
    demo, c, _ = ui
    folder = _upload_dir()
    path = os.path.join(folder, "prompts.txt")
    with open(path, "w") as f:
        f.write("a cat\n")
    _run(demo, _fn_index(demo, c["go"], n=4), [{"path": path, "orig_name": "prompts.txt",
                                               "meta": {"_type": "gradio.FileData"}}])
    files = ext.seen["files"]
    assert files[0].name == path and files[0].orig_name == "prompts.txt"
    assert open(files[0].name).read() == "a cat\n"
    with tempfile.NamedTemporaryFile(suffix=".txt", dir=folder) as handle:
        handle.write(b"x")
        handle.flush()
        assert c["files"].postprocess([handle]).root[0].path == handle.name  # a Gradio 3 file object as output


def test_layout_and_style_arguments_take_effect(ui):
    _, c, _ = ui
    assert c["narrow"].scale == 1 and c["wide"].scale == 2
    assert c["gallery"].columns == 4 and c["gallery"].height == "auto"
    assert c["prompt"].container is False
    assert c["go"].scale == 0
    assert c["tool"].variant == "secondary" and c["tool"].size == "sm" and "tool" in c["tool"].elem_classes
    assert c["refresh"].variant == "secondary" and "tool" in c["refresh"].elem_classes
    assert c["table"].headers == ["a", "b"]
    assert gr.Box is gr.Group


def test_component_update_and_legacy_modules(ui):
    demo, c, _ = ui
    result = _run(demo, _fn_index(demo, c["drop"], "change"), "b")
    assert result["data"][0]["value"] == "b!" and ["b!", "b!"] in result["data"][0]["choices"]
    result = _run(demo, _fn_index(demo, c["tool"]))  # gr.Image.update on the sketch editor
    assert result["data"][0]["__type__"] == "update"
    assert isinstance(c["legacy_in"], gr.Textbox) and c["legacy_in"].value == "hello" and c["legacy_in"].lines == 3
    assert c["legacy_slider"].value == 4 and c["legacy_slider"].maximum == 10
    assert isinstance(c["legacy_out"], gr.Image) and c["legacy_out"].label == "Legacy out"
    assert c["custom"].preprocess("typed") == "typed"
    assert issubclass(gr.components.IOComponent, gr.components.Component)


def test_unknown_arguments_are_dropped_with_one_warning_naming_the_extension(ext, caplog):
    with caplog.at_level(logging.DEBUG, logger="webui.gradio_compat"):
        with gr.Blocks():
            a, b = ext.build_with_unknown_arguments()
    assert a.label == "One" and b.label == "Two"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "sd-webui-g3-fixture" in warnings[0].getMessage()
    assert "show_copy_button_v3" in warnings[0].getMessage()
    assert any("randomize_v3" in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)


def test_only_named_events_are_described_as_api_and_unnamed_ones_still_run():
    # Gradio 6 names every event after its function (/lambda_7); described, the UI's ~270 events were 2 MB of every
    # page. An extension's api_name (keyword or positional) keeps its endpoint in the description, as in Gradio 3.
    gradio_compat.install()
    with gr.Blocks() as demo:
        box = gr.Textbox()
        out = gr.Textbox()
        box.change(lambda v: v + "!", box, out)
        gr.Button().click(lambda v: v.upper(), box, out, api_name="shout")
        gr.Button().click(lambda v: v[::-1], box, out, "reverse")
    assert set(demo.get_api_info()["named_endpoints"]) == {"/shout", "/reverse"}
    result = _run(demo, _fn_index(demo, box, "change"), "hi")
    assert result["data"] == ["hi!"]

"""The ControlNet accordion of txt2img/img2img (webui/controlnet_panel.py) as the sd-webui-controlnet extension's users
know it: its elem_ids, Control Type filtering, 💥 preview, generation with a unit, errors, and ↙ paste of
"ControlNet N". Browser tests drive Debian's Chromium against the app launch.py serves (tests/servers.py), with a
tiny random-weight ControlNet in models/ControlNet."""
from __future__ import annotations

import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.servers import SharedCache

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CANNY_FILE = "control_v11p_sd15_canny"
U0 = "txt2img_controlnet_ControlNet-0"

INFOTEXT = ('a house\nSteps: 3, Sampler: Euler, Seed: 5, Size: 64x64, ControlNet 0: "Module: canny, '
            'Model: control_v11p_sd15_canny, Weight: 0.6, Resize Mode: Just Resize, Processor Res: 256, '
            'Threshold A: 50.0, Threshold B: 150.0, Guidance Start: 0.1, Guidance End: 0.9, Pixel Perfect: False, '
            'Control Mode: My prompt is more important"')


def _square(size: int = 64) -> Image.Image:
    im = Image.new("RGB", (size, size), "black")
    ImageDraw.Draw(im).rectangle((size // 4, size // 4, 3 * size // 4 - 1, 3 * size // 4 - 1), fill="white")
    return im


# --------------------------------------------------------------------------------------------------------------------
# Without a browser


def test_paste_maps_controlnet_infotext_to_the_unit_controls():
    from modules.infotext import parse_generation_parameters
    from webui.controlnet_panel import key, paste_fields

    params = parse_generation_parameters(INFOTEXT + ', ControlNet 1: "Module: depth_midas, Model: gone, '
                                                    'Weight: 1.0, Pixel Perfect: True"')
    titles = [f"{CANNY_FILE} [0123abcd]"]
    out = paste_fields(params, 3, titles, find=lambda m: titles[0] if m == CANNY_FILE else None)
    value = {k: v.get("value") for k, v in out.items()}
    assert value[key(0, "enabled")] is True and value[key(0, "control_type")] == "All"
    assert value[key(0, "module")] == "canny" and value[key(0, "model")] == titles[0]  # found with its hash
    assert (value[key(0, "weight")], value[key(0, "guidance_start")], value[key(0, "guidance_end")]) == (0.6, 0.1, 0.9)
    assert value[key(0, "resize_mode")] == "Just Resize" and value[key(0, "pixel_perfect")] is False
    assert value[key(0, "control_mode")] == "My prompt is more important"
    # the sliders are canny's, with the pasted values
    assert (out[key(0, "processor_res")]["value"], out[key(0, "processor_res")]["visible"]) == (256, True)
    assert (out[key(0, "threshold_a")]["label"], out[key(0, "threshold_a")]["value"]) == ("Low Threshold", 50.0)
    assert (out[key(0, "threshold_b")]["label"], out[key(0, "threshold_b")]["value"]) == ("High Threshold", 150.0)
    # unit 1: a module written by name comes back as the dropdown's label; a model that is not installed is kept
    # (and offered); Pixel Perfect hides the resolution
    assert value[key(1, "module")] == "depth_midas" and value[key(1, "model")] == "gone"
    assert "gone" in out[key(1, "model")]["choices"] and out[key(1, "processor_res")]["visible"] is False
    assert not any(k.startswith("controlnet_2_") for k in out)  # unit 2 is not in the infotext: left alone
    assert all(k.startswith("controlnet_0_") for k in paste_fields(params, 1, titles))  # only unit 0


def test_unit_values_become_the_extensions_api_units():
    from modules.request_types import Img2ImgRequest, Txt2ImgRequest
    from webui.controlnet_panel import key, put_units, select_control_type

    picture = _square()
    values = {"prompt": "p", key(0, "enabled"): True, key(0, "module"): "canny", key(0, "model"): "cn [1234]",
              key(0, "weight"): 0.5, key(0, "image"): picture, key(0, "processor_res"): 256.0,
              key(0, "threshold_a"): 50.0, key(0, "threshold_b"): 150.0, key(0, "control_mode"): "Balanced",
              key(0, "resize_mode"): "Just Resize", key(0, "guidance_start"): 0.0, key(0, "guidance_end"): 1.0,
              key(0, "hr_option"): "Low res only", key(1, "enabled"): False, key(1, "module"): "none",
              key(1, "model"): "None"}
    data = put_units(dict(values))
    assert not any(k.startswith("controlnet_") for k in data)
    req = Txt2ImgRequest.from_dict(data)
    first, second = req.controlnet_units
    assert (first.module, first.model, first.weight, first.processor_res, first.threshold_a) == (
        "canny", "cn [1234]", 0.5, 256, 50.0)
    assert first.images[0].image.size == (64, 64) and first.hr_option.value == "Low res only"
    assert first.infotext().startswith("Module: canny, Model: cn [1234], Weight: 0.5, Resize Mode: Just Resize")
    assert not second.enabled
    # Multi-Inputs (several pictures, e.g. for an IP-Adapter) when the single image is empty
    several = put_units({**values, key(0, "image"): None, key(0, "multi_images"): [(picture, None), (_square(), "")]})
    assert len(Txt2ImgRequest.from_dict(several).controlnet_units[0].images) == 2
    # nothing enabled: no units in the request at all
    assert "controlnet" not in put_units({key(0, "enabled"): False, key(0, "model"): "None"}).get(
        "alwayson_scripts", {})
    # enabled without a model: passed on for the engine to judge (an error naming the unit's field, except on a
    # Flux.1 Depth/Canny checkpoint, which reads the map itself; the page test shows the error)
    bare = put_units({key(1, "enabled"): True, key(1, "module"): "canny", key(1, "model"): "None"})
    assert bare["alwayson_scripts"]["controlnet"]["args"][0]["model"] == "None"
    # img2img: the unit's own picture only with "Upload independent control image"
    i2i = put_units({**values, "init_images": [picture]}, is_img2img=True)
    assert Img2ImgRequest.from_dict(i2i).controlnet_units[0].images == []
    i2i = put_units({**values, key(0, "independent"): True, "init_images": [picture]}, is_img2img=True)
    assert len(Img2ImgRequest.from_dict(i2i).controlnet_units[0].images) == 1
    # Control Type: the preprocessors and the models whose names fit, "11" preferred
    modules, models, module, model = select_control_type("Canny", ["a_sd15_canny [1]", "b_v11_canny [2]",
                                                                    "c_depth [3]"])
    assert modules[:2] == ["none", "canny"] and module == "canny"
    assert models == ["None", "a_sd15_canny [1]", "b_v11_canny [2]"] and model == "b_v11_canny [2]"
    assert select_control_type("All", ["x [1]"])[1:] == (["None", "x [1]"], "none", "None")


def test_run_preprocessor_gives_the_map_or_a_message(tmp_path):
    from types import SimpleNamespace

    from webui.controlnet_panel import run_preprocessor

    engine = SimpleNamespace(paths=SimpleNamespace(annotator_dir=tmp_path))
    picture = _square()
    edges = np.asarray(run_preprocessor(engine, picture, None, False, "canny", 128, 100, 200, False, None, 64, 64))
    assert edges.shape == (128, 128, 3) and 0 < (edges > 127).mean() < 0.1
    # Pixel Perfect: the resolution that maps the 64 px picture onto the 256 px generation
    assert run_preprocessor(engine, picture, None, False, "canny", 512, 100, 200, True, "Crop and Resize",
                            256, 256).size == (256, 256)
    # an uploaded mask: used by inpaint preprocessors; for others a drawn mask is the input ("scribble")
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).line((0, 32, 63, 32), fill=255, width=3)
    scribbled = np.asarray(run_preprocessor(engine, picture, mask, True, "canny", 64, 100, 200, False, None, 64, 64))
    assert scribbled[10:22].max() == 0 and scribbled[28:37].max() == 255  # edges of the line, not of the square
    with pytest.raises(ValueError, match="no input image"):
        run_preprocessor(engine, None, None, False, "canny", 512, 100, 200, False, None, 64, 64)
    with pytest.raises(ValueError, match=r"needs .*dpt_hybrid.* in .*midas"):
        run_preprocessor(engine, picture, None, False, "depth_midas", 512, -1, -1, False, None, 64, 64)


# --------------------------------------------------------------------------------------------------------------------
# In the browser: one server and one browser for the module


@pytest.fixture(scope="module")
def cn_data(tmp_path_factory, tiny_models, load_tiny) -> Path:
    from tests.tiny_controlnets import build_controlnet, write_original

    data = tmp_path_factory.mktemp("cn-ui-data")
    ckpt = data / "models" / "Stable-diffusion"
    ckpt.mkdir(parents=True)
    shutil.copy(tiny_models.path("sd1.safetensors"), ckpt / "sd1.safetensors")
    nets = data / "models" / "ControlNet"
    nets.mkdir(parents=True)
    unet = load_tiny("sd1.safetensors").unet
    write_original(build_controlnet(unet, 1), unet, nets / f"{CANNY_FILE}.safetensors")
    (data / "ui-config.json").write_text(json.dumps({
        "txt2img/Width/value": 64, "txt2img/Height/value": 64, "txt2img/Sampling steps/value": 3,
        "img2img/Width/value": 64, "img2img/Height/value": 64, "img2img/Sampling steps/value": 3}))
    (data / "config.json").write_text(json.dumps({"sd_model_checkpoint": "sd1.safetensors"}))
    _square().save(data / "square.png")
    return data


@pytest.fixture(scope="module")
def server(cn_data, tmp_path_factory):
    from tests.servers import Server

    srv = Server(cn_data, tmp_path_factory.mktemp("cn-logs") / "server.log").start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    sync_api.expect.set_options(timeout=30_000)  # a busy 2-core machine can take longer to draw a tab
    with sync_api.sync_playwright() as p:
        b = SharedCache(p.chromium.launch(executable_path=CHROMIUM, args=FLAGS))
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    pg = browser.new_page(viewport={"width": 1280, "height": 1000})
    pg.set_default_timeout(60000)
    pg.goto(server.url)
    pg.wait_for_selector("#txt2img_prompt textarea")
    yield pg
    pg.close()


def _expect():
    from playwright.sync_api import expect

    return expect


def open_controlnet(page, tab: str = "txt2img"):
    expect = _expect()
    page.locator(f"#{tab}_controlnet #controlnet .label-wrap").first.click()
    expect(page.locator(f"#{tab}_controlnet_ControlNet-0_controlnet_enable_checkbox")).to_be_visible()


def pick(page, elem_id: str, option: str):
    page.click(f"#{elem_id} input[role=combobox]")
    page.get_by_role("option", name=option, exact=True).click()


def generate(page, tab: str = "txt2img") -> str:
    page.click(f"#{tab}_generate")
    info = page.locator(f"#html_info_{tab}")
    _expect()(info).to_contain_text(re.compile(r"Steps:|⚠"), timeout=90000)
    return info.inner_text()


SUFFIXES = ("input_image", "controlnet_enable_checkbox", "controlnet_low_vram_checkbox",
            "controlnet_pixel_perfect_checkbox", "controlnet_preprocessor_preview_checkbox",
            "controlnet_type_filter_radio", "controlnet_preprocessor_dropdown", "controlnet_trigger_preprocessor",
            "controlnet_model_dropdown", "controlnet_refresh_models", "controlnet_control_weight_slider",
            "controlnet_start_control_step_slider", "controlnet_ending_control_step_slider",
            "controlnet_control_mode_radio", "controlnet_resize_mode_radio")
# Drawn only when shown (Gradio 6 leaves hidden components out of the page): after Allow Preview, a preprocessor
# with sliders, the hires fix.
SHOWN_LATER = ("generated_image", "controlnet_preprocessor_resolution_slider", "controlnet_threshold_A_slider",
               "controlnet_threshold_B_slider", "controlnet_hr_option_radio")


@pytest.mark.slow
def test_accordion_with_three_units_and_the_extensions_ids(page, tmp_path):
    expect = _expect()
    expect(page.locator("#txt2img_controlnet #controlnet")).to_be_visible()
    expect(page.locator(f"#{U0}_controlnet_enable_checkbox")).to_be_hidden()  # closed by default
    open_controlnet(page)
    tabs = page.locator("#txt2img_controlnet_tabs [role=tab]", has_text="ControlNet Unit")  # (not a unit's own)
    expect(tabs).to_have_text(["ControlNet Unit 0", "ControlNet Unit 1", "ControlNet Unit 2"])
    for suffix in SUFFIXES:
        expect(page.locator(f"#{U0}_{suffix}")).to_have_count(1)
    page.get_by_role("tab", name="Multi-Inputs").first.click()  # several pictures for one unit
    expect(page.locator(f"#{U0}_multi_inputs_gallery")).to_be_visible()
    page.get_by_role("tab", name="Single Image").first.click()
    expect(page.locator(f"#{U0}_controlnet_type_filter_radio")).to_contain_text("Canny")
    expect(page.locator(f"#{U0}_controlnet_preprocessor_dropdown input")).to_have_value("none")
    expect(page.locator(f"#{U0}_controlnet_model_dropdown input")).to_have_value("None")
    for hidden in SHOWN_LATER:
        expect(page.locator(f"#{U0}_{hidden}")).to_be_hidden()
    page.locator(f"#{U0}_controlnet_preprocessor_preview_checkbox input").check()
    page.locator("#txt2img_hr .label-wrap").first.click()
    page.locator("#txt2img_enable_hr input").check()  # the hires option shows with the hires fix, as in the extension
    pick(page, f"{U0}_controlnet_preprocessor_dropdown", "canny")
    for suffix in SHOWN_LATER:
        expect(page.locator(f"#{U0}_{suffix}")).to_be_visible()
    expect(page.locator(f"#{U0}_controlnet_threshold_A_slider")).to_contain_text("Low Threshold")
    page.locator("#txt2img_controlnet").first.scroll_into_view_if_needed()  # Gradio draws a Group as 2 divs, same id
    page.wait_for_timeout(500)
    folder = Path(os.environ.get("SD_TEST_ARTIFACTS") or tmp_path)
    page.locator("#txt2img_settings").screenshot(path=str(folder / "cn_ui.png"))
    page.get_by_role("tab", name="ControlNet Unit 2").click()
    expect(page.locator("#txt2img_controlnet_ControlNet-2_controlnet_enable_checkbox")).to_be_visible()
    # img2img: its own accordion; the unit uses the img2img picture unless "Upload independent control image"
    page.get_by_role("tab", name="img2img", exact=True).click()
    open_controlnet(page, "img2img")
    same = page.locator("#img2img_controlnet_ControlNet-0_controlnet_same_img2img_checkbox input")
    expect(page.locator("#img2img_controlnet_ControlNet-0_input_image")).to_be_hidden()
    same.check()
    expect(page.locator("#img2img_controlnet_ControlNet-0_input_image")).to_be_visible()
    expect(page.locator("#img2img_controlnet_ControlNet-0_controlnet_trigger_preprocessor")).to_be_visible()


def _canny_unit_previews_its_map_and_generates_with_it(page, cn_data):
    expect = _expect()
    open_controlnet(page)
    page.locator(f"#{U0}_controlnet_type_filter_radio").get_by_text("Canny", exact=True).click()
    expect(page.locator(f"#{U0}_controlnet_preprocessor_dropdown input")).to_have_value("canny")
    expect(page.locator(f"#{U0}_controlnet_model_dropdown input")).to_have_value(
        re.compile(re.escape(CANNY_FILE) + r" \[[0-9a-f]+\]"))
    expect(page.locator(f"#{U0}_controlnet_threshold_A_slider")).to_contain_text("Low Threshold")
    expect(page.locator(f"#{U0}_controlnet_threshold_B_slider")).to_contain_text("High Threshold")
    expect(page.locator(f"#{U0}_controlnet_preprocessor_resolution_slider")).to_be_visible()

    enable = page.locator(f"#{U0}_controlnet_enable_checkbox input")
    expect(enable).not_to_be_checked()
    page.locator(f"#{U0}_input_image input[type=file]").set_input_files(str(cn_data / "square.png"))
    expect(enable).to_be_checked()  # picking a picture enables the unit
    page.click(f"#{U0}_controlnet_trigger_preprocessor")
    preview = page.locator(f"#{U0}_generated_image img").first
    expect(preview).to_be_visible()
    expect(page.locator(f"#{U0}_controlnet_preprocessor_preview_checkbox input")).to_be_checked()
    page.wait_for_function(f"() => document.querySelector('#{U0}_generated_image img').complete")
    got = page.request.get(preview.get_attribute("src"))
    edges = np.asarray(Image.open(io.BytesIO(got.body())).convert("L"))
    assert edges.shape == (512, 512)  # the resolution slider's 512
    white = edges > 127
    assert 0.002 < white.mean() < 0.05, white.mean()  # thin lines: the square's outline, not the filled square
    assert white[256, 256] == False and white[20, 20] == False  # noqa: E712 inside and outside are black

    page.fill("#txt2img_prompt textarea", "a box")
    text = generate(page)
    assert 'ControlNet 0: "Module: canny, Model: ' + CANNY_FILE in text, text
    gallery = page.locator("#txt2img_gallery")
    expect(gallery.locator(".thumbnail-item img, .thumbnails img")).to_have_count(2, timeout=30000)


def _enabled_unit_without_a_model_is_an_error_in_the_page(page):
    expect = _expect()
    open_controlnet(page)
    page.get_by_role("tab", name="ControlNet Unit 1").click()
    page.locator("#txt2img_controlnet_ControlNet-1_controlnet_enable_checkbox input").check()
    page.fill("#txt2img_prompt textarea", "no model")
    generate(page)
    expect(page.locator("#html_info_txt2img .sd-error")).to_contain_text("controlnet[1].model")
    # 💥 without a picture says so in the same place
    page.click("#txt2img_controlnet_ControlNet-1_controlnet_trigger_preprocessor")
    expect(page.locator("#html_info_txt2img .sd-error")).to_contain_text("no input image")


def _paste_restores_the_unit(page):
    """Unit 0 as a fresh page has it (the accordion is already open)."""
    expect = _expect()
    page.get_by_role("tab", name="ControlNet Unit 0").click()
    expect(page.locator(f"#{U0}_controlnet_enable_checkbox input")).not_to_be_checked()
    page.fill("#txt2img_prompt textarea", INFOTEXT)
    page.click("#txt2img_paste")
    expect(page.locator("#txt2img_prompt textarea")).to_have_value("a house")
    expect(page.locator(f"#{U0}_controlnet_enable_checkbox input")).to_be_checked()
    expect(page.locator(f"#{U0}_controlnet_preprocessor_dropdown input")).to_have_value("canny")
    expect(page.locator(f"#{U0}_controlnet_model_dropdown input")).to_have_value(re.compile(re.escape(CANNY_FILE)
                                                                                            + r" \["))
    expect(page.locator(f"#{U0}_controlnet_control_weight_slider input[type=number]")).to_have_value("0.6")
    expect(page.locator(f"#{U0}_controlnet_threshold_A_slider")).to_contain_text("Low Threshold")
    expect(page.locator(f"#{U0}_controlnet_threshold_A_slider input[type=number]")).to_have_value("50")
    expect(page.locator(f"#{U0}_controlnet_preprocessor_resolution_slider input[type=number]")).to_have_value("256")
    expect(page.locator(f"#{U0}_controlnet_control_mode_radio input[value='My prompt is more important']")
           ).to_be_checked()
    expect(page.locator(f"#{U0}_controlnet_resize_mode_radio input[value='Just Resize']")).to_be_checked()


def _img2img_batch_tab_runs_a_folder_with_a_controlnet_batch_unit(page, cn_data, tmp_path):
    """A1111's img2img Batch tab (From directory) with unit 0 in the extension's Batch tab (its own folder): one
    queue job, the gallery shows every picture, the output folder has them under the inputs' names."""

    expect = _expect()
    inp, maps, out = tmp_path / "in", tmp_path / "maps", tmp_path / "out"
    inp.mkdir()
    maps.mkdir()
    for i, name in enumerate(("cat.png", "dog.png")):
        Image.fromarray(np.full((64, 64, 3), 60 + 80 * i, np.uint8)).save(inp / name)
        _square().rotate(90 * i).save(maps / f"{i}.png")
    page.get_by_role("tab", name="img2img", exact=True).click()
    page.locator("#mode_img2img").get_by_role("tab", name="Batch", exact=True).click()
    expect(page.locator("#img2img_batch_input_dir")).to_be_visible()
    expect(page.locator("#img2img_batch_inpaint_mask_dir")).to_be_visible()
    page.fill("#img2img_batch_input_dir textarea, #img2img_batch_input_dir input", str(inp))
    page.fill("#img2img_batch_output_dir textarea, #img2img_batch_output_dir input", str(out))
    open_controlnet(page, "img2img")
    u0 = "img2img_controlnet_ControlNet-0"
    page.locator(f"#{u0}_controlnet_same_img2img_checkbox input").check()
    page.locator(f"#{u0}_input_tabs").get_by_role("tab", name="Batch", exact=True).click()
    page.fill(f"#{u0}_batch_image_dir textarea, #{u0}_batch_image_dir input", str(maps))
    page.locator(f"#{u0}_controlnet_enable_checkbox input").check()
    page.click(f"#{u0}_controlnet_model_dropdown input[role=combobox]")
    page.get_by_role("option").filter(has_text=CANNY_FILE).first.click()
    page.fill("#img2img_prompt textarea", "a batch")
    text = generate(page, "img2img")
    assert 'ControlNet 0: "Module: none, Model: ' + CANNY_FILE in text, text
    expect(page.locator("#img2img_gallery").locator(".thumbnail-item img, .thumbnails img")).to_have_count(2)
    assert sorted(p.name for p in out.iterdir()) == ["cat.png", "dog.png"]
    page.locator("#img2img_settings").first.scroll_into_view_if_needed()
    folder = Path(os.environ.get("SD_TEST_ARTIFACTS") or tmp_path)
    page.screenshot(path=str(folder / "img2img_batch.png"), full_page=True)
    # a folder that does not exist: said in the page, nothing queued
    page.fill("#img2img_batch_input_dir textarea, #img2img_batch_input_dir input", str(tmp_path / "nope"))
    page.click("#img2img_generate")
    expect(page.locator("#html_info_img2img .sd-error")).to_contain_text("Input directory does not exist")


# One page load costs ~3 CPU seconds: parts that leave alone what the other needs share a page. txt2img's and
# img2img's accordions are separate units; the unit-1 error needs unit 0 as loaded, and paste then restores unit 0.


@pytest.mark.slow
def test_canny_unit_generates_with_its_map_and_img2img_batch_runs_a_folder(page, cn_data, tmp_path):
    _canny_unit_previews_its_map_and_generates_with_it(page, cn_data)  # txt2img's unit 0
    _img2img_batch_tab_runs_a_folder_with_a_controlnet_batch_unit(page, cn_data, tmp_path)  # img2img's unit 0


@pytest.mark.slow
def test_unit_without_a_model_is_an_error_and_paste_restores_a_unit(page):
    _enabled_unit_without_a_model_is_an_error_in_the_page(page)  # txt2img's unit 1
    _paste_restores_the_unit(page)  # txt2img's unit 0, untouched so far

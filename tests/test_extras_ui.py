"""The Extras tab in a real browser: upload a picture, pick a model upscaler, Generate, see the result's size."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.test_upscalers import ESRGAN_NAME, INFOTEXT, _picture, _real_esrgan_layout, _tiny_esrgan
from tests.test_webui import CHROMIUM, FLAGS, Server, expect, pick, playwright_api, set_number

pytestmark = pytest.mark.slow  # servers, browsers or full-size parity runs: left out by -m "not slow"


@pytest.fixture(scope="module")
def extras_server(tmp_path_factory, tiny_models):
    data = tmp_path_factory.mktemp("extras-ui")
    (data / "models" / "Stable-diffusion").mkdir(parents=True)
    os.symlink(tiny_models.path("sd1.safetensors"), data / "models" / "Stable-diffusion" / "sd1.safetensors")
    (data / "models" / "ESRGAN").mkdir()
    torch.save(_real_esrgan_layout(_tiny_esrgan().state_dict()), data / "models" / "ESRGAN" / f"{ESRGAN_NAME}.pth")
    (data / "config.json").write_text(json.dumps({"sd_model_checkpoint": "sd1.safetensors"}))
    srv = Server(data, tmp_path_factory.mktemp("logs") / "server.log").start()
    yield srv
    srv.stop()


def test_extras_upscales_with_a_model(extras_server, tmp_path, monkeypatch):
    source = tmp_path / "source.png"
    picture = _picture()
    picture.save(source, pnginfo=_pnginfo(INFOTEXT))
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(60000)
        page.goto(extras_server.url)
        page.get_by_role("tab", name="Extras").click()
        page.locator("#extras_image input[type=file]").set_input_files(str(source))
        expect(page.locator("#extras_image img")).to_be_visible()
        pick(page, "extras_upscaler_1", ESRGAN_NAME)
        set_number(page, "extras_upscaling_resize", 2)
        page.click("#extras_generate")
        info = page.locator("#html_info_extras")
        expect(info).to_contain_text(f"Postprocess upscaler: {ESRGAN_NAME}", timeout=60000)
        expect(info).to_contain_text("Result: 80x56")
        expect(info).to_contain_text("Seed: 42")  # the input's own parameters are kept
        expect(page.locator("#extras_gallery img").first).to_be_visible()
        page.wait_for_timeout(1000)  # images fade in
        page.screenshot(path=str(Path(os.environ.get("SD_TEST_ARTIFACTS") or tmp_path) / "extras.png"),
                        full_page=True)

        # A1111's Real-ESRGAN models are offered before their files are there; offline, the page says what to
        # download and where to put it (here the releases' host is the discard port: refused at once)
        from modules.upscaling import realesrgan

        monkeypatch.setattr(realesrgan, "RELEASES", "http://127.0.0.1:9/releases")
        pick(page, "extras_upscaler_1", "R-ESRGAN 4x+")
        page.click("#extras_generate")
        expect(info).to_contain_text("R-ESRGAN 4x+ needs RealESRGAN_x4plus.pth", timeout=60000)
        expect(info).to_contain_text("models/RealESRGAN")
        pick(page, "extras_upscaler_1", ESRGAN_NAME)

        folder, out = tmp_path / "in", tmp_path / "out"
        folder.mkdir()
        picture.save(folder / "first.png")
        _picture(20, 20).save(folder / "second.png")
        (folder / "notes.txt").write_text("not an image")
        page.get_by_role("tab", name="Batch from Directory").click()
        page.fill("#extras_batch_input_dir textarea", str(folder))
        page.fill("#extras_batch_output_dir textarea", str(out))
        page.get_by_role("tab", name="Scale to").click()
        set_number(page, "extras_upscaling_resize_w", 64)
        set_number(page, "extras_upscaling_resize_h", 64)
        page.click("#extras_generate")
        expect(info).to_contain_text("2 images upscaled", timeout=60000)
        browser.close()
    assert sorted(p.name for p in out.iterdir()) == ["first.png", "second.png"]
    for path in out.iterdir():
        with Image.open(path) as image:
            assert image.size == (64, 64)
    saved = sorted((extras_server.data_dir / "outputs" / "extras-images").glob("*.png"))
    assert [p.name for p in saved] == ["00000.png"]
    with Image.open(saved[0]) as image:
        assert image.size == (80, 56) and image.info["parameters"] == INFOTEXT


def _pnginfo(text: str):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    return info

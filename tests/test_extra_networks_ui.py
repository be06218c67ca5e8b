"""The "Extra networks" panel in a real browser: cards with previews, search, click-to-insert, checkpoint switch."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from tests.test_webui import CHROMIUM, FLAGS, Server, expect, open_ui, playwright_api  # noqa: F401 - skips without chromium
from tests.test_lora import Q, Builder

from webui import extra_networks_panel as panel

pytestmark = pytest.mark.slow  # servers, browsers or full-size parity runs: left out by -m "not slow"


def test_helpers(tmp_path):
    f = tmp_path / "a.safetensors"
    f.write_bytes(b"x")
    assert panel.find_preview(f) is None
    (tmp_path / "a.preview.png").write_bytes(b"png")
    assert panel.find_preview(f) == str(tmp_path / "a.preview.png")
    (tmp_path / "a.png").write_bytes(b"png")
    assert panel.find_preview(f) == str(tmp_path / "a.png")
    items = [("cat", "/x/cat.pt", "cat"), ("dog", "/x/sub/dog.pt", "dog")]
    assert panel.filter_items(items, "DO") == [items[1]]
    assert panel.filter_items(items, "dog.pt") == [items[1]]
    assert panel.filter_items(items, "") == items
    assert panel.insert_text("", " <lora:x:1>") == "<lora:x:1>"
    assert panel.insert_text("a cat ", "<lora:x:1>") == "a cat <lora:x:1>"
    # A1111: a second click takes the network out again, whatever its weight; "Extra networks separator"
    assert panel.insert_text("a cat <lora:x:0.5> dog", "<lora:x:1>") == "a cat dog"
    assert panel.insert_text("a cat", "myemb", ", ") == "a cat, myemb"
    assert panel.insert_text("a cat, myemb", "myemb", ", ") == "a cat"


@pytest.fixture(scope="module")
def en_data(tmp_path_factory, tiny_models, load_tiny) -> Path:
    data = tmp_path_factory.mktemp("en-data")
    ckpt = data / "models" / "Stable-diffusion"
    ckpt.mkdir(parents=True)
    for name in ("sd1.safetensors", "sd1-inpainting.safetensors"):
        shutil.copy(tiny_models.path(name), ckpt / name)
    lora_dir = data / "models" / "Lora"
    lora_dir.mkdir(parents=True)
    b = Builder(load_tiny("sd1.safetensors"))
    b.lora("unet:" + Q)
    save_file({k: v.contiguous() for k, v in b.sd.items()}, str(lora_dir / "catstyle.safetensors"))
    Image.new("RGB", (64, 64), (220, 40, 40)).save(lora_dir / "catstyle.png")
    save_file({k: v.contiguous() for k, v in b.sd.items()}, str(lora_dir / "otherlora.safetensors"))
    emb = data / "embeddings"
    emb.mkdir()
    save_file({"emb_params": torch.randn(2, 64, generator=torch.Generator().manual_seed(0))},
              str(emb / "myemb.safetensors"))
    (data / "ui-config.json").write_text(json.dumps({
        "txt2img/Width/value": 64, "txt2img/Height/value": 64, "txt2img/Sampling steps/value": 3}))
    (data / "config.json").write_text(json.dumps({"sd_model_checkpoint": "sd1.safetensors"}))
    return data


@pytest.fixture(scope="module")
def en_page(en_data, tmp_path_factory):
    srv = Server(en_data, tmp_path_factory.mktemp("logs") / "server.log").start()
    try:
        with playwright_api.sync_playwright() as p:
            b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            yield open_ui(b, srv.url, height=1000)
            b.close()
    finally:
        srv.stop()


def _cards(page, tab, key):
    return page.locator(f"#{tab}_{key}_cards tr.tr-body, #{tab}_{key}_cards button.gallery-item")


def test_panel_search_insert_and_generate(en_page, en_data, tmp_path_factory):
    page = en_page
    page.locator("#txt2img_extra_networks").get_by_text("Extra networks").first.click()
    page.locator("#txt2img_lora_tab-button, #txt2img_extra_tabs button[role=tab]:has-text('Lora')").first.click()
    cards = _cards(page, "txt2img", "lora")
    expect(cards).to_have_count(2)
    expect(cards.first).to_contain_text("catstyle")
    expect(cards.first.locator("img")).to_have_count(1)  # preview (catstyle.png) shown
    shot = Path(tmp_path_factory.getbasetemp()) / "extra_networks_panel.png"
    page.locator("#txt2img_extra_networks").screenshot(path=str(shot))
    print("screenshot:", shot)

    page.locator("#txt2img_extra_search textarea, #txt2img_extra_search input").first.fill("other")
    expect(cards).to_have_count(1)
    expect(cards.first).to_contain_text("otherlora")
    page.locator("#txt2img_extra_search textarea, #txt2img_extra_search input").first.fill("cat")
    expect(cards).to_have_count(1)
    expect(cards.first).to_contain_text("catstyle")

    prompt = page.locator("#txt2img_prompt textarea")
    prompt.fill("a cat")
    cards.first.click()
    expect(prompt).to_have_value("a cat <lora:catstyle:1>")

    page.locator("#txt2img_extra_search textarea, #txt2img_extra_search input").first.fill("")
    page.locator("#txt2img_extra_tabs button[role=tab]:has-text('Textual Inversion')").first.click()
    emb_cards = _cards(page, "txt2img", "textual_inversion")
    expect(emb_cards).to_have_count(1)
    emb_cards.first.click()
    expect(prompt).to_have_value("a cat <lora:catstyle:1> myemb")

    # refresh finds a file added after start-up
    Image.new("RGB", (8, 8)).save(en_data / "models" / "Lora" / "late.png")
    shutil.copy(en_data / "models" / "Lora" / "otherlora.safetensors", en_data / "models" / "Lora" / "late.safetensors")
    page.click("#txt2img_extra_refresh")
    page.locator("#txt2img_extra_tabs button[role=tab]:has-text('Lora')").first.click()
    expect(cards).to_have_count(3)

    page.click("#txt2img_generate")
    info = page.locator("#html_info_txt2img")
    expect(info).to_contain_text("Steps:", timeout=90000)
    text = info.inner_text()
    assert "Lora hashes" in text and "catstyle" in text
    assert "TI hashes" in text and "myemb" in text

    page.locator("#txt2img_extra_tabs button[role=tab]:has-text('Checkpoints')").first.click()
    ck = _cards(page, "txt2img", "checkpoints")
    expect(ck).to_have_count(2)
    ck.filter(has_text="sd1-inpainting").first.click()
    expect(page.locator("#txt2img_extra_message")).to_contain_text("Loaded sd1-inpainting", timeout=90000)

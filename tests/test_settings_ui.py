"""Settings in a real browser (issue 14, items 1, 10, 18): the page shows what is saved, Apply writes only what the
user changed, the checkpoint field is the checkpoint list, A1111's section titles; a corrupt config.json found
at start is backed up and reported once."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from tests.test_webui import Server, artifacts, browser, expect, open_ui, pick  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow  # servers, browsers or full-size parity runs: left out by -m "not slow"


@pytest.fixture(scope="module")
def settings_data(tmp_path_factory, tiny_models) -> Path:
    data = tmp_path_factory.mktemp("settings-ui")
    ckpt = data / "models" / "Stable-diffusion"
    ckpt.mkdir(parents=True)
    for name in ("sd1.safetensors", "sd1-inpainting.safetensors"):
        shutil.copy(tiny_models.path(name), ckpt / name)
    (data / "config.json").write_text('{"samples_format": "png", ')  # corrupt: cut off mid-write
    return data


@pytest.fixture(scope="module")
def settings_server(settings_data, tmp_path_factory):
    srv = Server(settings_data, tmp_path_factory.mktemp("settings-logs") / "server.log").start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def page(browser, settings_server):
    """A page for both browser tests (a page load costs ~3 CPU seconds): the Settings tab fills its fields from
    what is saved each time it is opened, and the memory controls are set by the test that checks them."""
    pg = open_ui(browser, settings_server.url)
    yield pg
    pg.close()


def open_section(page, title: str):
    page.get_by_role("tab", name="Settings", exact=True).click()
    page.get_by_role("tab", name=title, exact=True).click()


def saved(data: Path) -> dict:
    return json.loads((data / "config.json").read_text())


def test_corrupt_config_is_backed_up_and_reported_once_per_start(settings_server, settings_data):
    backups = sorted(p.name for p in settings_data.iterdir() if p.name.startswith("config.json.bad"))
    assert backups == ["config.json.bad"]
    assert settings_server.log.read_text().count("is unusable") == 1


def test_settings_persist_and_apply_writes_only_what_changed(browser, page, settings_server, settings_data,
                                                              artifacts):
    stale = open_ui(browser, settings_server.url)
    try:
        # Two pages of one browser: the one behind gets an animation frame only every ~1.5 s, and Playwright waits
        # for two before each click (~2-4 s a click), so the page acted on is brought to the front first.
        stale.bring_to_front()
        open_section(stale, "Stable Diffusion")  # Settings opened before any change: its fields hold the old values
        page.bring_to_front()
        open_section(page, "Saving images/grids")
        pick(page, "setting_samples_format", "jpg")
        page.click("#settings_submit")
        expect(page.locator("#settings_result")).to_contain_text("samples_format")
        assert saved(settings_data)["samples_format"] == "jpg"

        # A second change on the same page writes only that one (the reload below shows both were kept).
        page.locator("#setting_save_txt input[type=checkbox]").check()
        page.click("#settings_submit")
        expect(page.locator("#settings_result")).to_contain_text("1 settings changed: save_txt")
        assert saved(settings_data)["samples_format"] == "jpg" and saved(settings_data)["save_txt"] is True

        # The stale page still shows the old values; it changes one field: only that one is written.
        stale.bring_to_front()
        stale.get_by_role("tab", name="Saving images/grids", exact=True).click()
        expect(stale.locator("#setting_samples_format input[role=combobox]")).to_have_value("png")
        stale.get_by_role("tab", name="Stable Diffusion", exact=True).click()
        pick(stale, "setting_sd_model_checkpoint_settings_tab", "sd1-inpainting.safetensors")
        stale.click("#settings_submit")
        expect(stale.locator("#settings_result")).to_contain_text("1 settings changed: sd_model_checkpoint")
        cfg = saved(settings_data)
        assert cfg["samples_format"] == "jpg" and cfg["save_txt"] is True
        assert cfg["sd_model_checkpoint"].startswith("sd1-inpainting.safetensors [")

        stale.reload()
        stale.wait_for_selector("#txt2img_prompt textarea")
        open_section(stale, "Saving images/grids")
        expect(stale.locator("#setting_samples_format input[role=combobox]")).to_have_value("jpg")
        expect(stale.locator("#setting_save_txt input[type=checkbox]")).to_be_checked()
        open_section(stale, "Stable Diffusion")
        expect(stale.locator("#setting_sd_model_checkpoint_settings_tab input[role=combobox]")).to_have_value(
            cfg["sd_model_checkpoint"])
        stale.click("#settings_submit")
        expect(stale.locator("#settings_result")).to_contain_text("Nothing changed")
        stale.screenshot(path=str(artifacts / "settings-stable-diffusion.png"), full_page=True)
    finally:
        stale.close()


def test_settings_sections_use_a1111_titles(page, settings_server):
    page.bring_to_front()
    page.get_by_role("tab", name="Settings", exact=True).click()
    titles = page.locator("#settings [role=tab]").all_inner_texts()
    for title in ("Saving images/grids", "Paths for saving", "Stable Diffusion", "Stable Diffusion XL", "VAE",
                  "API"):
        assert title in titles, titles
    assert not {"Sd", "Vae", "Api", "Sdxl"} & set(titles)

    # Forge's memory controls under the checkpoint bar are the settings of the same name, saved at once
    page.get_by_role("tab", name="txt2img", exact=True).click()
    page.locator("#setting_forge_async_loading").get_by_text("Async", exact=True).click()
    page.locator("#setting_forge_pin_shared_memory").get_by_text("Shared", exact=True).click()
    pick(page, "setting_forge_unet_storage_dtype", "float8-e4m3fn")
    expect(page.locator("#setting_forge_unet_storage_dtype input")).to_have_value("float8-e4m3fn")
    engine = settings_server.ctx.engine
    deadline = time.time() + 30
    while engine.settings.get("forge_unet_storage_dtype") != "float8-e4m3fn" and time.time() < deadline:
        time.sleep(0.1)
    assert (engine.settings.get("forge_async_loading"), engine.settings.get("forge_pin_shared_memory"),
            engine.settings.get("forge_unet_storage_dtype")) == ("Async", "Shared", "float8-e4m3fn")
    assert engine.memory.swap() == (True, True)
    for name, value in (("forge_async_loading", "Queue"), ("forge_pin_shared_memory", "CPU"),
                        ("forge_unet_storage_dtype", "Automatic")):
        engine.settings.set(name, value)


def test_defaults_section_writes_the_pages_values_to_ui_config(page, settings_data, artifacts):
    """Settings → Defaults (A1111's): a control changed on the page is listed by "View changes" and written to
    ui-config.json by "Apply", as the default from the next start on."""
    import re

    page.bring_to_front()
    page.get_by_role("tab", name="txt2img", exact=True).click()
    page.fill("#txt2img_neg_prompt textarea", "blurry, lowres")
    page.get_by_role("tab", name="Settings", exact=True).click()
    page.locator("#settings .overflow-menu button").first.click()  # the last sections: behind Gradio's "⋯" menu
    page.locator("#settings .overflow-dropdown button").filter(has_text="Defaults").click()
    page.click("#ui_defaults_view")
    review = page.locator("#ui_defaults_review")
    expect(review).to_contain_text("txt2img/Negative prompt/value")
    expect(review).to_contain_text("blurry, lowres")
    page.locator("#settings_tab_defaults").screenshot(path=str(artifacts / "settings-defaults.png"))
    page.click("#ui_defaults_apply")
    expect(review).to_contain_text(re.compile(r"Wrote \d+ changes"))
    assert json.loads((settings_data / "ui-config.json").read_text())["txt2img/Negative prompt/value"] == \
        "blurry, lowres"

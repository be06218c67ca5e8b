"""Fixture extensions in a real browser: their javascript runs with A1111's page globals, their tab and
always-on controls are on the page, and a selectable script chosen in the Script dropdown runs from the UI."""
from __future__ import annotations

import json
import shutil

import pytest

from modules import extensions
from modules.paths import Paths
from modules import cmd_args
from tests import ext_fixtures
from tests.test_webui import Server, artifacts, generate, pick, set_number  # noqa: F401 (fixture)

playwright_api = pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.slow  # servers, browsers or full-size parity runs: left out by -m "not slow"
expect = playwright_api.expect


@pytest.fixture(scope="module")
def ext_server(tmp_path_factory, tiny_models):
    data = tmp_path_factory.mktemp("ext-ui-data")
    ckpt = data / "models" / "Stable-diffusion"
    ckpt.mkdir(parents=True)
    shutil.copy(tiny_models.path("sd1.safetensors"), ckpt / "sd1.safetensors")
    (data / "ui-config.json").write_text(json.dumps({
        "txt2img/Width/value": 64, "txt2img/Height/value": 64, "txt2img/Sampling steps/value": 2}))
    paths = Paths.from_args(cmd_args.parse_args(["--data-dir", str(data)], env={}))
    paths.ensure_dirs()
    origins = tmp_path_factory.mktemp("origins")
    for name, files in (("prompt-suffix", ext_fixtures.PROMPT_EDITOR), ("callbacks", ext_fixtures.CALLBACKS),
                        ("selectable", ext_fixtures.SELECTABLE), ("broken", ext_fixtures.BROKEN),
                        ("settings-in-init", ext_fixtures.SETTINGS_IN_INIT), ("wildcards", ext_fixtures.WILDCARDS),
                        ("import-time", ext_fixtures.IMPORT_TIME), ("bad-settings", ext_fixtures.BAD_SETTINGS),
                        ("fails-everywhere", ext_fixtures.FAILS_EVERYWHERE)):
        extensions.install_from_url(paths, ext_fixtures.make_repo(origins / name, files), run_installer=False)
    srv = Server(data, tmp_path_factory.mktemp("logs") / "server.log").start("--fixture-flag", "on")
    yield srv
    srv.stop()


@pytest.fixture
def page(ext_server):
    from tests.test_webui import CHROMIUM, FLAGS, open_ui

    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield open_ui(browser, ext_server.url, height=1000)
        browser.close()


def _extension_javascript_tab_and_scripts_in_the_page(page, artifacts):
    assert page.evaluate("window.fixtureExtensionLoaded") == "yes"
    page.wait_for_function("window.fixtureUiLoaded === true")  # onUiLoaded fired with the page built
    assert page.evaluate("typeof opts === 'object' && opts.samples_format === 'png'")
    page.get_by_role("button", name="Prompt suffix").click()  # the always-on script's own accordion
    expect(page.locator("#script_txt2img_prompt_suffix_suffix")).to_be_visible()
    # ↙ paste fills the script's own controls from its infotext key (A1111's infotext_fields)
    page.fill("#txt2img_prompt textarea", "a dog\nSteps: 2, Sampler: Euler, Seed: 3, Prompt suffix: dusk")
    page.click("#txt2img_paste")
    expect(page.locator("#script_txt2img_prompt_suffix_suffix textarea")).to_have_value("dusk")
    expect(page.locator("#script_txt2img_prompt_suffix_enabled input")).to_be_checked()
    page.fill("#txt2img_prompt textarea", "a cat")

    pick(page, "script_list", "Run twice")
    expect(page.locator("#script_txt2img_run_twice_times")).to_be_visible()
    set_number(page, "script_txt2img_run_twice_times", 2)
    generate(page, own="a cat, dusk")  # this run's infotext, not the one before
    expect(page.locator("#txt2img_gallery img")).to_have_count(2, timeout=60000)
    page.screenshot(path=str(artifacts / "extensions-script.png"), full_page=True)

    page.get_by_role("tab", name="Fixture tab").click()
    text = page.locator("#fixture_tab_text")
    expect(text).to_contain_text("Hello from the fixture tab")
    assert "rgb(1, 2, 3)" in text.evaluate("e => getComputedStyle(e).color")


def _every_tab_renders_with_every_fixture_extension_and_the_broken_one_is_red(page, artifacts):
    """All fixture extensions at once (one fails at import, in a hook, a callback, a tab and a setting): every tab
    opens, the extension's own settings component is there, and its row in the Extensions tab is red. A
    generation first: its process hook fails only when one runs."""
    page.fill("#txt2img_prompt textarea", "a {red|blue} cat")
    generate(page, own="cat")  # the page's first generation
    expect(page.locator("#txt2img_gallery img")).to_have_count(1, timeout=60000)
    for tab in ("img2img", "Extras", "PNG Info", "Models", "Train", "Settings", "Extensions", "txt2img"):
        page.get_by_role("tab", name=tab, exact=True).first.click()
        page.wait_for_timeout(300)
        assert page.locator(".toast-body.error").count() == 0, tab
        if tab == "Settings":  # the extension's option is drawn with its own component (a CheckboxGroup)
            kinds = page.evaluate("""async () => (await (await fetch('config')).json()).components
                .filter(c => c.props && c.props.elem_id === 'setting_fixture_checkbox_group').map(c => c.type)""")
            assert kinds == ["checkboxgroup"]
        if tab == "Extensions":
            row = page.locator("tr.sd-ext-failed", has_text="fails-everywhere")
            expect(row).to_be_visible()
            expect(row).to_contain_text("process hook is broken")
            page.screenshot(path=str(artifacts / "extensions-faults.png"), full_page=True)


def test_every_tab_renders_the_broken_extension_is_red_and_extension_scripts_run_in_the_page(page, artifacts):
    """One page (a page load costs ~3 CPU seconds): first a plain generation and every tab, which leave the script
    controls as loaded; then the extensions' javascript, paste, a selectable script and their tab."""
    _every_tab_renders_with_every_fixture_extension_and_the_broken_one_is_red(page, artifacts)
    _extension_javascript_tab_and_scripts_in_the_page(page, artifacts)

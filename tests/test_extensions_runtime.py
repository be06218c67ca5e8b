"""The extension runtime: fixture extensions (local git repositories installed through install-from-URL) hook
into generation the way A1111 extensions do, and a broken one never stops the app or a generation."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from modules import cmd_args, extension_runtime, script_callbacks, scripts
from tests import ext_fixtures

BASE = {"prompt": "a cat", "steps": 3, "width": 64, "height": 64, "seed": 11, "cfg_scale": 5.0,
        "sampler_name": "Euler", "do_not_save_samples": True, "do_not_save_grid": True}


@pytest.fixture(scope="module")
def ext_engine(tiny_models, tmp_path_factory):
    """An engine with the fixture extensions installed from git URLs and loaded (built-in scripts left out)."""
    engine, _ = ext_fixtures.extension_engine(tiny_models, tmp_path_factory.mktemp("extensions-runtime"), {
        "prompt-suffix": ext_fixtures.PROMPT_EDITOR, "callbacks": ext_fixtures.CALLBACKS,
        "broken": ext_fixtures.BROKEN, "ordered": ext_fixtures.ORDERED, "selectable": ext_fixtures.SELECTABLE,
        "sd-webui-signature": ext_fixtures.readme_example(), "imports": ext_fixtures.IMPORTS})
    yield engine
    script_callbacks.clear_callbacks()


def test_scripts_load_in_order_and_broken_ones_are_reported(ext_engine):
    runner = ext_engine.scripts.txt2img
    titles = [scripts._title(s) for s in runner.alwayson_scripts]
    assert titles.index("Order B") < titles.index("Order A")  # metadata.ini: a_first.py After b_second.py
    assert runner.titles == ["Run twice"]
    assert any("broken" in e and "module_that_does_not_exist" in e for e in ext_engine.extension_errors)


def test_always_on_script_edits_prompt_and_infotext_and_a_failing_hook_does_not_stop_it(ext_engine):
    result = ext_engine.txt2img({**BASE, "alwayson_scripts": {"Prompt suffix": {"args": [True, "sunset"]}}})
    assert len(result.images) == 1
    assert result.all_prompts == ["a cat, sunset"]
    assert "a cat, sunset" in result.infotexts[0]
    assert "Prompt suffix: sunset" in result.infotexts[0]
    assert "Order: BA" in result.infotexts[0]
    assert any("raises.py" in e and "this hook always fails" in e for e in script_callbacks.errors)
    plain = ext_engine.txt2img(dict(BASE))  # the script's defaults (unchecked) leave the prompt alone
    assert plain.all_prompts == ["a cat"]


def test_postprocess_image_replaces_the_picture(ext_engine):
    normal = ext_engine.txt2img(dict(BASE)).images[0]
    inverted = ext_engine.txt2img({**BASE, "alwayson_scripts": {"prompt suffix": {"args": [True, "invert"]}}})
    # same seed, a different prompt: the picture differs, and the hook's inversion is what comes back
    assert inverted.images[0].size == normal.size
    assert inverted.images[0].getpixel((0, 0)) != normal.getpixel((0, 0))


def test_inpaint_hooks_run_in_a1111s_order_around_the_overlay(ext_engine):
    """postprocess_image sees the sampled picture (the original then goes back over what was not masked),
    postprocess_maskoverlay may change the mask the original is put back with, postprocess_image_after_composite
    sees the finished picture."""
    import numpy as np

    init = Image.fromarray(np.random.RandomState(3).randint(0, 255, (64, 64, 3)).astype(np.uint8))
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    req = {**BASE, "init_images": [init], "mask": Image.fromarray(mask), "mask_blur": 0, "denoising_strength": 0.9}

    def run(suffix):
        script = {"prompt suffix": {"args": [True, suffix]}}
        return np.asarray(ext_engine.img2img({**req, "alwayson_scripts": script}).images[0].convert("RGB"))

    original, outside = np.asarray(init), mask == 0
    inverted_first = run("invert")
    assert np.array_equal(inverted_first[outside], original[outside])
    assert np.array_equal(run("keep everything"), original)
    assert np.array_equal(run("invert after")[outside], 255 - original[outside])


def test_cfg_callbacks_run_every_step_and_can_change_the_latents(ext_engine):
    seen = _callbacks_module_state()
    before = seen["steps"]
    first = ext_engine.txt2img(dict(BASE)).images[0]
    assert seen["steps"] - before == 3 and seen["denoised"] >= 3 and seen["after_cfg"] >= 3
    ext_engine.settings.set("callbacks_zero_latents", True)  # the option an extension registered
    try:
        zeroed = ext_engine.txt2img(dict(BASE)).images[0]
    finally:
        ext_engine.settings.set("callbacks_zero_latents", False)
    assert list(first.getdata()) != list(zeroed.getdata())


def _callbacks_module_state():
    for c in script_callbacks.callback_map["callbacks_cfg_denoiser"]:
        return c.callback.__globals__["SEEN"]
    raise AssertionError("the cfg_denoiser callback was not registered")


def test_image_saved_callbacks_see_the_file_and_can_add_metadata(ext_engine):
    result = ext_engine.txt2img({**BASE, "do_not_save_samples": False})
    seen = _callbacks_module_state()
    assert seen["saved"] and seen["saved"][-1] == str(result.saved_paths[0])
    with Image.open(result.saved_paths[0]) as im:
        assert im.info.get("fixture") == "callbacks were here"
        assert "a cat" in im.info.get("parameters", "")


@pytest.mark.slow
def test_selectable_script_runs_instead_of_the_plain_generation(ext_engine):
    result = ext_engine.txt2img({**BASE, "script_name": "run twice", "script_args": [3]})
    images = result.images[result.index_of_first_image:]
    assert len(images) == 3
    assert len({tuple(im.getdata()) for im in images}) == 3  # three different seeds


def test_unknown_script_names_are_request_errors(ext_engine):
    from modules.request_types import RequestError

    with pytest.raises(RequestError, match="script 'nope' not found"):
        ext_engine.txt2img({**BASE, "script_name": "nope"})
    with pytest.raises(RequestError, match="always-on script 'nope' not found"):
        ext_engine.txt2img({**BASE, "alwayson_scripts": {"nope": {"args": []}}})


def test_extension_setting_is_registered_before_any_ui(ext_engine):
    from modules.settings import OPTIONS

    assert "callbacks_zero_latents" in OPTIONS
    assert ext_engine.settings.get("callbacks_zero_latents") is False


def test_preload_adds_command_line_flags(ext_engine):
    parser = cmd_args.build_parser()
    extension_runtime.run_preload(parser, ext_engine.paths, ext_engine.settings)
    ns = cmd_args.parse_args(["--fixture-flag", "x"], env={}, parser=parser)
    assert ns.fixture_flag == "x"


def test_shared_facade_points_at_the_engine(ext_engine):
    from modules import shared

    assert shared.opts.samples_format == ext_engine.settings.get("samples_format")
    assert shared.state is ext_engine.state
    assert json.dumps(shared.cmd_opts.data_dir)


# ---------------------------------------------------------------------------------------------------------------
# Through the server: API routing, app_started routes, javascript/css and tabs in the page


@pytest.fixture(scope="module")
def client(ext_engine):
    from fastapi.testclient import TestClient

    from modules.server import AppContext, create_app

    ns = cmd_args.parse_args(["--data-dir", str(ext_engine.paths.data_dir), "--skip-install", "--api"], env={})
    app = create_app(AppContext(args=ns, engine=ext_engine))
    with TestClient(app) as c:
        yield c


@pytest.mark.slow
def test_api_lists_and_routes_scripts(client):
    assert "run twice" in client.get("/sdapi/v1/scripts").json()["txt2img"]
    info = {s["name"]: s for s in client.get("/sdapi/v1/script-info").json() if not s["is_img2img"]}
    assert [a["label"] for a in info["prompt suffix"]["args"]] == ["Add suffix", "Suffix"]
    assert info["prompt suffix"]["is_alwayson"] is True
    r = client.post("/sdapi/v1/txt2img", json={**BASE, "alwayson_scripts": {"Prompt suffix": {"args": [True, "dusk"]}}})
    assert r.status_code == 200, r.text
    assert json.loads(r.json()["info"])["all_prompts"] == ["a cat, dusk"]
    r = client.post("/sdapi/v1/txt2img", json={**BASE, "script_name": "no such script"})
    assert r.status_code == 422 and "no such script" in r.json()["detail"]


def test_app_started_route_and_extension_setting_are_served(client):
    r = client.get("/fixture/seen")  # added in on_app_started: not shadowed by the UI's catch-all mount
    assert r.status_code == 200 and "steps" in r.json()
    assert client.get("/sdapi/v1/options").json()["callbacks_zero_latents"] is False


def test_page_carries_extension_javascript_css_tab_and_script_controls(client):
    page = client.get("/").text + client.get("/config").text  # gradio puts head and css into the config
    assert "window.fixtureExtensionLoaded = 'yes'" in page
    assert "function gradioApp()" in page
    config = page
    assert "file=extensions/callbacks/style.css?" in page  # the extension's style.css, linked with its mtime
    assert "fixture_tab_text" in config and "Fixture tab" in config  # on_ui_tabs
    assert "script_txt2img_prompt_suffix_suffix" in config  # the always-on script's controls
    assert "script_list" in config  # the Script dropdown


def test_the_readme_example_works_as_documented(ext_engine, client):
    result = ext_engine.txt2img({**BASE, "alwayson_scripts": {"signature": {"args": [True, "oil painting"]}}})
    assert result.all_prompts == ["a cat, oil painting"]
    assert "Signature: me" in result.infotexts[0]
    assert client.get("/signature/text").json() == {"text": "me"}


def test_scripts_can_import_the_a1111_module_names_they_use(ext_engine):
    assert not [e for e in ext_engine.extension_errors if "uses_a1111_modules" in e]
    module = next(d.module for d in scripts.scripts_data if d.path.endswith("uses_a1111_modules.py"))
    found = module.FOUND
    assert found["models_path"] == str(ext_engine.paths.models_dir)
    assert found["device"] == "cpu"
    assert any(t.startswith("sd1.safetensors") for t in found["checkpoints"])
    assert found["cmd_opts_data_dir"] == str(ext_engine.paths.data_dir)
    assert found["parsed"] == "5"  # A1111 parses values as text

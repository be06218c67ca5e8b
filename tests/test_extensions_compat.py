"""Community-extension compatibility, one fixture extension per class of failure real extensions hit: A1111's
start-up order, prompts rewritten by scripts, names used at import time, settings with their own components, and
faults that disable only the broken piece (installed through the real install-from-URL path)."""
from __future__ import annotations

import pytest

from modules import extension_faults, extension_runtime, script_callbacks
from modules.settings import OPTIONS
from tests import ext_fixtures

BASE = {"prompt": "a {red|blue} circle", "steps": 2, "width": 64, "height": 64, "seed": 3, "cfg_scale": 5.0,
        "sampler_name": "Euler", "do_not_save_samples": True, "do_not_save_grid": True}


@pytest.fixture(scope="module")
def compat_engine(tiny_models, tmp_path_factory):
    engine, ns = ext_fixtures.extension_engine(tiny_models, tmp_path_factory.mktemp("extensions-compat"), {
        "settings-in-init": ext_fixtures.SETTINGS_IN_INIT, "wildcards": ext_fixtures.WILDCARDS,
        "import-time": ext_fixtures.IMPORT_TIME, "bad-settings": ext_fixtures.BAD_SETTINGS,
        "fails-everywhere": ext_fixtures.FAILS_EVERYWHERE})
    yield engine, ns
    script_callbacks.clear_callbacks()


def _faults(name):
    return [f"{f.where}: {f.message}" for f in extension_faults.faults.for_extension(name)]


def test_settings_registered_from_script_init_exist(compat_engine):
    """A1111 creates the script instances before on_ui_settings runs, for the UI and --nowebui alike."""
    assert OPTIONS["init_registered_option"].default == "from __init__"


def test_names_used_at_import_time_resolve(compat_engine):
    assert not _faults("import-time")


def test_info_prompt_is_the_prompt_as_generated(compat_engine):
    engine, _ = compat_engine
    result = engine.txt2img(dict(BASE))
    assert result.all_prompts == ["a red circle"]
    assert result.js()["prompt"] == "a red circle"  # what /sdapi/v1/txt2img's info.prompt carries


def test_a_broken_extension_fails_piece_by_piece_and_generation_completes(compat_engine):
    engine, _ = compat_engine
    result = engine.txt2img(dict(BASE))
    assert len(result.images) == 1
    faults = _faults("fails-everywhere")
    assert any("could not load does_not_import.py" in f and "module_that_is_not_installed" in f for f in faults)
    assert any("process" in f and "process hook is broken" in f for f in faults)
    assert any("cfg_denoiser" in f and "denoiser callback is broken" in f for f in faults)
    before = {f.where: f.count for f in extension_faults.faults.for_extension("fails-everywhere")}
    engine.txt2img(dict(BASE))
    after = {f.where: f.count for f in extension_faults.faults.for_extension("fails-everywhere")}
    assert len(after) == len(before)  # the same failures again are counted, not listed (or logged) again
    assert all(after[k] >= before[k] for k in before)


def test_settings_tab_builds_extension_components_and_isolates_a_broken_one(compat_engine):
    """The UI builds with an extension's CheckboxGroup option and one whose component raises."""
    import gradio as gr

    from webui import app as webui_app

    engine, ns = compat_engine
    demo = webui_app.create_ui(engine, ns)
    group = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "setting_fixture_checkbox_group"]
    assert group and isinstance(group[0], gr.CheckboxGroup) and group[0].value == []
    assert any("setting fixture_broken_component" in f and "cannot be built" in f for f in _faults("bad-settings"))
    assert any("tab" in f and "the tab cannot be built" in f for f in _faults("fails-everywhere"))


def test_extensions_tab_shows_the_faulty_extension_in_red(compat_engine):
    from webui.extensions_tab import ExtensionsView

    engine, ns = compat_engine
    view = ExtensionsView(engine, ns)
    table = view.table_html(view.installed())
    row = table.split("<b>fails-everywhere</b>")[0].rsplit("<tr", 1)[1]
    assert "sd-ext-failed" in row
    assert "process hook is broken" in table.split("<b>fails-everywhere</b>")[1].split("</tr>")[0]
    ok_row = table.split("<b>wildcards</b>")[0].rsplit("<tr", 1)[1]
    assert "sd-ext-failed" not in ok_row


def test_safe_mode_starts_without_third_party_extensions(compat_engine, tmp_path):
    from modules import cmd_args
    from modules import extensions as manager

    engine, ns = compat_engine
    safe = cmd_args.parse_args(["--data-dir", str(engine.paths.data_dir), "--safe-mode"], env={})
    found = manager.discover_configured(engine.paths, engine.settings, safe)
    assert found and not [e for e in manager.active(found) if not e.is_builtin]


def test_hide_ui_dir_config_hides_and_protects_output_folders(compat_engine, tmp_path):
    """--hide-ui-dir-config: the Settings tab has no output-folder fields and the API refuses changing them."""
    from fastapi.testclient import TestClient

    from modules import cmd_args, server
    from webui import other_tabs
    import gradio as gr

    engine, _ = compat_engine
    hidden = cmd_args.parse_args(["--data-dir", str(tmp_path), "--hide-ui-dir-config", "--nowebui"], env={})
    with gr.Blocks() as demo:
        other_tabs.build_settings(engine, hidden)
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    assert "setting_outdir_samples" not in ids and "setting_samples_format" in ids
    with gr.Blocks() as demo:
        other_tabs.build_settings(engine, None)
    assert "setting_outdir_samples" in {getattr(b, "elem_id", None) for b in demo.blocks.values()}

    app = server.create_app(server.build_context(hidden))
    with TestClient(app) as client:
        refused = client.post("/sdapi/v1/options", json={"outdir_samples": "/etc"})
        assert refused.status_code == 403 and "outdir_samples" in refused.json()["detail"]
        assert client.post("/sdapi/v1/options", json={"samples_format": "jpg"}).status_code == 200
    script_callbacks.clear_callbacks()


def test_installers_that_run_pip_themselves_are_held_to_the_core_versions(tmp_path):
    """install.py files often call pip directly (not launch.run_pip): pip still gets the core pins through
    PIP_CONSTRAINT, so an extension cannot downgrade numpy or transformers under the app."""
    import importlib.metadata as md

    from modules import cmd_args
    from modules import extensions as manager
    from modules.paths import Paths

    seen = tmp_path / "seen.txt"
    files = {"install.py": "import os, pathlib\n"
                           "pins = [pathlib.Path(p).read_text() for p in os.environ['PIP_CONSTRAINT'].split()]\n"
                           f"pathlib.Path({str(seen)!r}).write_text(''.join(pins))\n"}
    paths = Paths.from_args(cmd_args.parse_args(["--data-dir", str(tmp_path / "data")], env={}))
    paths.ensure_dirs()
    manager.install_from_url(paths, ext_fixtures.make_repo(tmp_path / "origin", files))
    pins = seen.read_text().splitlines()
    assert f"numpy=={md.version('numpy')}" in pins and f"transformers=={md.version('transformers')}" in pins

"""Fixture extensions for the extension-runtime tests: each a local git repository, installed through the real
install-from-URL path. One per hook family, plus a broken one."""
from __future__ import annotations

import subprocess
from pathlib import Path

PROMPT_EDITOR = {
    "scripts/prompt_suffix.py": '''
import gradio as gr
from modules import scripts


class PromptSuffix(scripts.Script):
    def title(self):
        return "Prompt suffix"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        with gr.Accordion("Prompt suffix", open=False):
            enabled = gr.Checkbox(False, label="Add suffix", elem_id=self.elem_id("enabled"))
            suffix = gr.Textbox("", label="Suffix", elem_id=self.elem_id("suffix"))
        self.infotext_fields = [(suffix, "Prompt suffix"), (enabled, lambda params: "Prompt suffix" in params)]
        return [enabled, suffix]

    def process(self, p, enabled, suffix):
        if enabled and suffix:
            p.all_prompts = [prompt + ", " + suffix for prompt in p.all_prompts]
            p.extra_generation_params["Prompt suffix"] = suffix

    def postprocess_image(self, p, pp, enabled, suffix):
        if enabled and suffix == "invert":
            from PIL import ImageOps
            pp.image = ImageOps.invert(pp.image.convert("RGB"))

    def postprocess_maskoverlay(self, p, ppmo, enabled, suffix):
        if enabled and suffix == "keep everything":
            from PIL import Image
            ppmo.mask_for_overlay = Image.new("L", ppmo.mask_for_overlay.size, 0)

    def postprocess_image_after_composite(self, p, pp, enabled, suffix):
        if enabled and suffix == "invert after":
            from PIL import ImageOps
            pp.image = ImageOps.invert(pp.image.convert("RGB"))
''',
    "metadata.ini": "[Extension]\nName = prompt-suffix\n",
}

CALLBACKS = {
    "scripts/callbacks.py": '''
import json
from pathlib import Path

from fastapi import FastAPI
import gradio as gr
from modules import script_callbacks, shared

SEEN = {"steps": 0, "saved": [], "denoised": 0, "after_cfg": 0}
LOG = Path(__file__).resolve().parent.parent / "seen.json"


def on_cfg_denoiser(params):
    SEEN["steps"] += 1
    assert params.total_sampling_steps > 0
    if shared.opts.callbacks_zero_latents:
        params.x = params.x * 0


def on_cfg_denoised(params):
    SEEN["denoised"] += 1


def on_after_cfg(params):
    SEEN["after_cfg"] += 1


def on_image_saved(params):
    SEEN["saved"].append(params.filename)
    LOG.write_text(json.dumps(SEEN))


def on_before_image_saved(params):
    params.pnginfo["fixture"] = "callbacks were here"


def on_ui_settings():
    shared.opts.add_option("callbacks_zero_latents", shared.OptionInfo(
        False, "Zero the latents before every model call", section=("callbacks", "Callbacks fixture")))


def on_app_started(demo, app: FastAPI):
    @app.get("/fixture/seen")
    def seen():
        return SEEN


def on_ui_tabs():
    with gr.Blocks(analytics_enabled=False) as tab:
        gr.Markdown("Hello from the fixture tab", elem_id="fixture_tab_text")
    return [(tab, "Fixture tab", "fixture_tab")]


script_callbacks.on_cfg_denoiser(on_cfg_denoiser)
script_callbacks.on_cfg_denoised(on_cfg_denoised)
script_callbacks.on_cfg_after_cfg(on_after_cfg)
script_callbacks.on_image_saved(on_image_saved)
script_callbacks.on_before_image_saved(on_before_image_saved)
script_callbacks.on_ui_settings(on_ui_settings)
script_callbacks.on_app_started(on_app_started)
script_callbacks.on_ui_tabs(on_ui_tabs)
''',
    "javascript/fixture.js": "window.fixtureExtensionLoaded = 'yes';\n"
                             "onUiLoaded(function() { window.fixtureUiLoaded = !!gradioApp().querySelector("
                             "'#txt2img_prompt'); });\n",
    "style.css": "#fixture_tab_text { color: rgb(1, 2, 3); }\n",
    "preload.py": '''
def preload(parser):
    parser.add_argument("--fixture-flag", type=str, default=None, help="added by a fixture extension")
''',
}

BROKEN = {
    "scripts/broken.py": "import module_that_does_not_exist\n",
    "scripts/raises.py": '''
from modules import scripts


class Raises(scripts.Script):
    def title(self):
        return "Raises"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def process(self, p):
        raise RuntimeError("this hook always fails")
''',
}

ORDERED = {
    "scripts/a_first.py": '''
from modules import scripts
ORDER = []


class A(scripts.Script):
    def title(self):
        return "Order A"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def process(self, p):
        p.extra_generation_params["Order"] = p.extra_generation_params.get("Order", "") + "A"
''',
    "scripts/b_second.py": '''
from modules import scripts


class B(scripts.Script):
    def title(self):
        return "Order B"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def process(self, p):
        p.extra_generation_params["Order"] = p.extra_generation_params.get("Order", "") + "B"
''',
    "metadata.ini": "[Extension]\nName = ordered\n\n[scripts/a_first.py]\nAfter = scripts/b_second.py\n",
}

IMPORTS = {
    "scripts/uses_a1111_modules.py": '''
from __future__ import annotations

import dataclasses

from modules import devices, images, paths, scripts, sd_models, shared
from modules.generation_parameters_copypaste import parse_generation_parameters
from modules.infotext_utils import create_infotext
from modules.processing import StableDiffusionProcessingImg2Img, fix_seed, process_images
from modules.ui_components import FormRow, ToolButton

FOUND = {"models_path": paths.models_path, "device": str(devices.device),
         "checkpoints": sorted(sd_models.checkpoints_list), "cmd_opts_data_dir": shared.cmd_opts.data_dir,
         "parsed": parse_generation_parameters("a cat\\nSteps: 3, Sampler: Euler, Seed: 5")["Seed"]}


@dataclasses.dataclass
class Found:
    size: "int" = 1


class Hidden(scripts.Script):
    def title(self):
        return "Hidden"

    def show(self, is_img2img):
        return False
''',
}

SELECTABLE = {
    "scripts/twice.py": '''
import gradio as gr
from modules import scripts
from modules.processing import process_images, Processed
import copy


class Twice(scripts.Script):
    def title(self):
        return "Run twice"

    def ui(self, is_img2img):
        return [gr.Number(2, label="Times", precision=0, elem_id=self.elem_id("times"))]

    def run(self, p, times):
        images, infotexts = [], []
        for i in range(int(times)):
            q = copy.copy(p)
            q.seed = p.seed + i
            res = process_images(q)
            images += res.images
            infotexts += res.infotexts
        return Processed(p, images, p.seed, infotexts[0], infotexts=infotexts)
''',
}


def git(cwd: Path, *args: str) -> str:
    out = subprocess.run(["git", "-c", "user.name=Test", "-c", "user.email=test@example.com", *args], cwd=cwd,
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


def make_repo(path: Path, files: dict[str, str]) -> str:
    """A git repository with `files` committed; returns its file:// URL."""
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text.lstrip("\n"))
    git(path, "init", "-q", "-b", "main")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "first")
    return path.as_uri()


def readme_example() -> dict[str, str]:
    """The complete example in extensions/README.md, so the documentation is tested as written."""
    text = (Path(__file__).resolve().parent.parent / "extensions" / "README.md").read_text(encoding="utf-8")
    code = text.split("`extensions/sd-webui-signature/scripts/signature.py`:", 1)[1].split("```python", 1)[1]
    return {"scripts/signature.py": code.split("```", 1)[0]}


def extension_engine(tiny_models, tmp: Path, extensions: dict[str, dict[str, str]], builtin: bool = False):
    """An engine over a data folder with the tiny SD1 model, `extensions` (name → files) installed from local git
    repositories through install-from-URL, loaded as the server loads them, with the scripts' argument defaults
    laid out. `builtin`: also load the program's extensions-builtin folder."""
    import dataclasses
    import os

    from modules import cmd_args, extension_runtime
    from modules import extensions as manager
    from modules.engine import Engine
    from modules.paths import Paths
    from webui import a1111 as ui_a1111
    from webui import gradio_compat, script_ui

    data = tmp / "data"
    (data / "models" / "Stable-diffusion").mkdir(parents=True)
    os.symlink(tiny_models.path("sd1.safetensors"), data / "models" / "Stable-diffusion" / "sd1.safetensors")
    ns = cmd_args.parse_args(["--data-dir", str(data), "--skip-install"], env={})
    paths = Paths.from_args(ns)
    if not builtin:
        paths = dataclasses.replace(paths, extensions_builtin_dir=tmp / "no-builtin")
    paths.ensure_dirs()
    for name, files in extensions.items():
        manager.install_from_url(paths, make_repo(tmp / "origins" / name, files), run_installer=False)
    engine = Engine.create(paths)
    gradio_compat.install()  # as the server does before extensions load
    ui_a1111.install()
    extension_runtime.start(engine, ns)
    script_ui.compute_defaults(engine.scripts)
    return engine, ns


# One fixture per class of failure real community extensions hit (issue 13), written for these tests.

SETTINGS_IN_INIT = {
    "scripts/settings_in_init.py": '''
from modules import script_callbacks, scripts, shared


def add_settings():
    shared.opts.add_option("init_registered_option", shared.OptionInfo(
        "from __init__", "Registered by a callback that Script.__init__ set up", section=("init", "Init fixture")))


class SettingsInInit(scripts.Script):
    def __init__(self):
        script_callbacks.on_ui_settings(add_settings)

    def title(self):
        return "Settings in init"

    def show(self, is_img2img):
        return scripts.AlwaysVisible
''',
}

WILDCARDS = {
    "scripts/expand.py": '''
import re

from modules import scripts


class Expand(scripts.Script):
    """Rewrites every prompt after the request arrived (as wildcard / dynamic-prompt extensions do)."""

    def title(self):
        return "Expand braces"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def process(self, p):
        p.all_prompts = [re.sub(r"\\{([^|}]*)\\|[^}]*\\}", r"\\1", x) for x in p.all_prompts]
''',
}

IMPORT_TIME = {
    "scripts/import_time.py": '''
from pathlib import Path

import gradio as gr
from modules import call_queue, errors, lowvram, scripts, sd_samplers, sd_vae, shared
from modules.api.api import encode_pil_to_base64, decode_base64_to_image
from modules.sd_hijack import model_hijack
from modules.ui import create_refresh_button
from modules.ui_components import InputAccordion

EMBEDDINGS = Path(shared.cmd_opts.embeddings_dir)   # A1111's flags are strings at import time
SAMPLERS = [s.name for s in sd_samplers.samplers]
''',
}

BAD_SETTINGS = {
    "scripts/bad_settings.py": '''
import gradio as gr
from modules import script_callbacks, shared


def broken_component(**kwargs):
    raise RuntimeError("this component cannot be built")


def on_ui_settings():
    section = ("bad-settings", "Bad settings fixture")
    shared.opts.add_option("fixture_checkbox_group", shared.OptionInfo(
        [], "Pick some", gr.CheckboxGroup, {"choices": ["red", "green", "blue"]}, section=section))
    shared.opts.add_option("fixture_broken_component", shared.OptionInfo(
        "x", "Cannot be drawn", broken_component, section=section))


script_callbacks.on_ui_settings(on_ui_settings)
''',
}

FAILS_EVERYWHERE = {
    "scripts/fails_everywhere.py": '''
import gradio as gr
from modules import script_callbacks, scripts


class FailsEverywhere(scripts.Script):
    def title(self):
        return "Fails everywhere"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def process(self, p, *args):
        raise RuntimeError("process hook is broken")

    def postprocess_image(self, p, pp, *args):
        raise RuntimeError("postprocess hook is broken")


def on_ui_tabs():
    raise RuntimeError("the tab cannot be built")


def on_cfg_denoiser(params):
    raise RuntimeError("denoiser callback is broken")


script_callbacks.on_ui_tabs(on_ui_tabs)
script_callbacks.on_cfg_denoiser(on_cfg_denoiser)
''',
    "scripts/does_not_import.py": "import module_that_is_not_installed\n",
}

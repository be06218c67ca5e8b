"""The scripts' UI: always-on scripts' controls, the "Script" dropdown with each selectable script's controls, and
the flat argument list (item 0 = selected script index + 1) that reaches `engine.generate(req, script_args)`."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from modules import script_callbacks, scripts

log = logging.getLogger(__name__)


@dataclass
class ScriptControls:
    inputs: list = field(default_factory=list)  # [dropdown, *every script's components]
    paste_fields: list = field(default_factory=list)  # (component, infotext key or fn(params) → value)

    def paste_updates(self, params: dict) -> list:
        """Values for the scripts' own controls from pasted generation parameters (A1111's infotext_fields)."""
        updates = []
        for component, key in self.paste_fields:
            try:
                value = key(params) if callable(key) else params.get(key)
            except Exception:  # noqa: BLE001 - a script's paste function must not break pasting
                value = None
            updates.append(gr.update(value=value) if value is not None else gr.update())
        return updates

    def split(self, values) -> list:
        return list(values[-len(self.inputs):]) if self.inputs else []


def _controls(script: scripts.Script, is_img2img: bool) -> list:
    try:
        result = script.ui(is_img2img)
    except Exception as e:  # noqa: BLE001 - a broken extension UI must not stop the page from building
        script_callbacks.report_error("ui()", script.filename or type(script).__name__, e)
        return []
    if result is None:
        return []
    items = list(result.values()) if isinstance(result, dict) else list(result)
    controls = [c for c in items if isinstance(c, gr.components.Component)]
    for control in controls:  # its ui-config keys: customscript/<file>/<tab>/<label>/… (A1111's)
        control.custom_script_source = os.path.basename(script.filename) if script.filename else None
    return controls


def build(runner: scripts.ScriptRunner, is_img2img: bool) -> ScriptControls:
    """Create every script's controls in the current Blocks and lay out the runner's argument slices."""
    tab = "img2img" if is_img2img else "txt2img"
    previous, scripts.scripts_current = scripts.scripts_current, runner
    try:
        per_script: dict[int, list] = {}
        for script in runner.alwayson_scripts:
            with gr.Group(visible=True, elem_classes=["sd-alwayson-script"]) if script.create_group else _nothing():
                per_script[id(script)] = _controls(script, is_img2img)
        choices = ["None", *runner.titles]
        dropdown = gr.Dropdown(choices, value="None", type="index", label="Script", elem_id="script_list",
                               elem_classes=[f"{tab}_script_list"])
        groups = []
        for script in runner.selectable_scripts:
            with gr.Group(visible=False, elem_id=f"{tab}_script_{len(groups) + 1}") as group:
                per_script[id(script)] = _controls(script, is_img2img)
            groups.append(group)
    finally:
        scripts.scripts_current = previous

    def show(index):
        index = index if isinstance(index, int) else 0
        return [gr.update(visible=(i + 1 == index)) for i in range(len(groups))]

    if groups:
        dropdown.change(show, dropdown, groups, queue=False, show_progress="hidden")
    controls = [per_script.get(id(s), []) for s in runner.scripts]
    for script, group in zip(runner.scripts, controls):
        script.controls = group
    update_defaults(runner)
    inputs = [dropdown] + [c for group in controls for c in group]
    runner.inputs = inputs
    paste = [(comp, key) for script in runner.scripts for comp, key in (getattr(script, "infotext_fields", None) or [])
             if isinstance(comp, gr.components.Component)]
    return ScriptControls(inputs, paste)


def update_defaults(runner: scripts.ScriptRunner) -> None:
    """Each script's slice of the args list and its controls' values now: the defaults of an API request that
    leaves a script's arguments out (ui-config.json's values, once applied)."""
    controls = [getattr(s, "controls", None) or [] for s in runner.scripts]
    runner.layout([len(c) for c in controls], [[_default(x) for x in c] for c in controls])


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _default(component) -> Any:
    value = getattr(component, "value", None)
    if isinstance(component, gr.Dropdown) and getattr(component, "type", "value") == "index":
        labels = [c[0] if isinstance(c, (list, tuple)) else c for c in component.choices]
        return labels.index(value) if value in labels else value
    return value


def compute_defaults(runners: scripts.ScriptRunners) -> None:
    """Without the web UI (--nowebui) the API still needs each script's argument slice and default values:
    build the controls once in a throwaway Blocks, as A1111 does."""
    from webui import gradio_compat

    gradio_compat.install()
    with gr.Blocks(analytics_enabled=False):
        build(runners.txt2img, False)
        build(runners.img2img, True)


def ui_values_to_args(controls: ScriptControls, values: list) -> list:
    """The UI's values → the flat args list (the dropdown sends its index, 0 for "None")."""
    args = list(values)
    if args:
        args[0] = args[0] if isinstance(args[0], int) else 0
    return args

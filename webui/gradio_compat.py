"""What A1111 extension UIs expect from Gradio, installed once before the UI is built:

- component creation hooks: `script_callbacks.on_before_component/on_after_component` and the scripts'
  `before_component/after_component` (how extensions find `txt2img_prompt` and friends by elem_id);
- Gradio 3 calls that Gradio 6 removed: `_js=` on events (→ `js=`), `gr.Box` (→ `gr.Group`), `component.style()`
  (accepted, ignored), `gr.Dropdown.update(...)` and the other `Component.update` (→ `gr.update`);
- `modules.ui_components` (FormRow, ToolButton, …), a module A1111 extensions import, served from here because
  `modules/` holds no UI code.
"""
from __future__ import annotations

import functools
import sys
import types

import gradio as gr
from gradio.components import Component

from modules import script_callbacks, scripts

_installed = False


def _script_hooks(kind: str, component, kwargs: dict) -> None:
    runner = scripts.scripts_current
    elem_id = kwargs.get("elem_id")
    for runner in (r for r in (scripts.scripts_txt2img, scripts.scripts_img2img) if r is not None):
        for script in runner.scripts:
            try:
                if runner is scripts.scripts_current:
                    getattr(script, kind)(component, **kwargs)
                hooks = getattr(script, f"on_{kind}_elem_id", None) or []
                for wanted, callback in hooks:
                    if wanted == elem_id:
                        callback(scripts.OnComponent(component=component))
            except Exception as e:  # noqa: BLE001
                script_callbacks.report_error(kind, script.filename or type(script).__name__, e)


def _hooked_init(original):
    @functools.wraps(original)
    def __init__(self, *args, **kwargs):
        outermost = not getattr(self, "_sd_hooked", False)
        if outermost:
            object.__setattr__(self, "_sd_hooked", True)
            script_callbacks.before_component_callback(self, **kwargs)
            _script_hooks("before_component", self, kwargs)
        original(self, *args, **kwargs)
        if outermost:
            script_callbacks.after_component_callback(self, **kwargs)
            _script_hooks("after_component", self, kwargs)
    return __init__


def _accept_js(method):
    @functools.wraps(method)
    def listener(*args, **kwargs):
        if "_js" in kwargs:
            kwargs["js"] = kwargs.pop("_js")
        return method(*args, **kwargs)
    return listener


def _all_subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_subclasses(sub)


def _event_names(cls) -> list[str]:
    names = []
    for event in getattr(cls, "EVENTS", []) or []:
        names.append(event if isinstance(event, str) else getattr(event, "event_name", None))
    return [n for n in names if n]


def _ui_components_module() -> types.ModuleType:
    module = types.ModuleType("modules.ui_components")

    class FormComponent:
        def get_expected_parent(self):
            return gr.components.Form

    class ToolButton(gr.Button):
        def __init__(self, *args, **kwargs):
            classes = kwargs.pop("elem_classes", [])
            kwargs.setdefault("size", "sm")
            kwargs.setdefault("min_width", 40)
            super().__init__(*args, elem_classes=["tool", *classes], **kwargs)

    class FormRow(gr.Row):
        pass

    class FormColumn(gr.Column):
        pass

    class FormGroup(gr.Group):
        pass

    class DropdownMulti(gr.Dropdown):
        def __init__(self, **kwargs):
            super().__init__(multiselect=True, **kwargs)

    class InputAccordion(gr.Checkbox):
        """A1111's accordion whose open state is a checkbox value; here an accordion holding a checkbox."""

        def __init__(self, value, **kwargs):
            label = kwargs.pop("label", "")
            self.accordion = gr.Accordion(label, open=bool(value), elem_id=f"{kwargs.get('elem_id', '')}-accordion")
            super().__init__(value, label=label, **kwargs)

        def __enter__(self):
            self.accordion.__enter__()
            return self

        def __exit__(self, *exc):
            return self.accordion.__exit__(*exc)

    for obj in (FormComponent, ToolButton, FormRow, FormColumn, FormGroup, DropdownMulti, InputAccordion):
        setattr(module, obj.__name__, obj)
    module.FormHTML = gr.HTML
    module.FormTextbox = gr.Textbox
    module.ResizeHandleRow = gr.Row
    return module


def install() -> None:
    """Patch gradio once per process (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    Component.__init__ = _hooked_init(Component.__init__)
    for cls in [gr.blocks.Block, *_all_subclasses(gr.blocks.Block)]:
        for name in _event_names(cls):
            method = cls.__dict__.get(name)
            if callable(method):
                setattr(cls, name, _accept_js(method))
        if issubclass(cls, Component) and "style" not in cls.__dict__:
            cls.style = lambda self, *a, **k: self
        if "update" not in cls.__dict__:
            cls.update = staticmethod(lambda *a, **k: gr.update(*a, **k))
    if not hasattr(gr, "Box"):
        gr.Box = gr.Group
    sys.modules.setdefault("modules.ui_components", _ui_components_module())
    import modules

    modules.ui_components = sys.modules["modules.ui_components"]

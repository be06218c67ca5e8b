"""`ui-config.json` as A1111 has it: `tab/Label/value` (and `/visible`, and a slider's `/minimum`, `/maximum`,
`/step`) keys that let a user change the controls' defaults, a script's under `customscript/<file>/`; keys for new
controls are added with their built-in values."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

import gradio as gr

from modules.fileio import atomic_write_json

log = logging.getLogger(__name__)


class UiConfig:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.data: dict[str, Any] = {}
        self.dirty = False
        self.components: dict[str, Any] = {}  # `…/value` key → the control it was applied to (the first one)
        self.unreadable = False  # a file that could not be read is never written over (A1111's rule)
        if self.path.is_file():
            try:
                self.data = json.loads(self.path.read_text(encoding="utf-8"))
                if not isinstance(self.data, dict):
                    raise ValueError("not a JSON object")
            except (OSError, ValueError) as e:
                log.warning("ignoring unreadable %s (left as it is): %s", self.path, e)
                self.data, self.unreadable = {}, True

    def value(self, key: str, default: Any) -> Any:
        full = f"{key}/value"
        if full not in self.data:
            self.data[full] = default
            self.dirty = True
            return default
        stored = self.data[full]
        if default is not None and stored is not None and not isinstance(stored, type(default)):
            try:
                return type(default)(stored)
            except (TypeError, ValueError):
                log.warning("%s: %s is %r, which this control cannot take: %r is used", self.path, full, stored,
                            default)
                return default
        return stored

    def slider(self, key: str, minimum: float, maximum: float, default: float, step: float) -> dict[str, float]:
        """A slider's `minimum`, `maximum`, `step` and `value` (gr.Slider's keyword arguments): A1111 keeps all four
        in ui-config.json, so raising "Sampling steps/maximum" there allows more steps. A value outside the range
        (a hand-edited file) is brought into it: Gradio would refuse every click of Generate otherwise."""
        bounds = {}
        for name, built_in in (("minimum", minimum), ("maximum", maximum), ("step", step)):
            full = f"{key}/{name}"
            stored = self.data.get(full)
            if full not in self.data:
                self.data[full], self.dirty = built_in, True
            ok = isinstance(stored, (int, float)) and not isinstance(stored, bool)
            if stored is not None and not ok:
                log.warning("%s: %s is %r, not a number: %r is used", self.path, full, stored, built_in)
            bounds[name] = stored if ok else built_in
        if bounds["minimum"] > bounds["maximum"] or bounds["step"] <= 0:
            log.warning("%s: %s has minimum %r, maximum %r, step %r: the built-in %r to %r by %r is used", self.path,
                        key, bounds["minimum"], bounds["maximum"], bounds["step"], minimum, maximum, step)
            bounds = {"minimum": minimum, "maximum": maximum, "step": step}
        value = self.value(key, default)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            value = default
        clamped = min(max(value, bounds["minimum"]), bounds["maximum"])
        if clamped != value:
            log.warning("%s: %s/value %r is outside %r to %r: %r is used", self.path, key, value,
                        bounds["minimum"], bounds["maximum"], clamped)
        return {**bounds, "value": clamped}

    def apply_block(self, block, path: str) -> None:
        """A1111's walk over a tab (ui_loadsave.add_block): every labelled control in `block` gets the stored values
        of its `path/Label/…` keys (a script's controls: `customscript/<file>/path/Label/…`), checked against what
        the control can take; a key not in the file is added with the control's built-in value."""
        children = getattr(block, "children", None)
        if children is not None and not isinstance(block, gr.components.Component):
            if isinstance(block, gr.Tabs) and block.elem_id:
                self._apply_selected(block, path)
            for child in children:
                self.apply_block(child, path)
            return
        label = getattr(block, "ui_config_label", None) or getattr(block, "label", None)
        if label:
            self._apply(f"{path}/{label}", block)
        elif isinstance(block, gr.Button) and isinstance(block.value, str) and block.value:
            self._apply(f"{path}/{block.value}", block)

    def apply_tabs(self, tabs: gr.Tabs) -> None:
        """`webui/Tabs@tabs/selected`: the tab the page opens on (by its id)."""
        ids = [getattr(item, "id", None) for item in tabs.children if isinstance(item, gr.Tab)]
        tabs.selected = self._field(f"webui/Tabs@{tabs.elem_id}/selected", tabs.selected, lambda v: v in ids)

    def _apply_selected(self, tabs: gr.Tabs, path: str) -> None:
        """A1111's `path/Tabs@<elem_id>/selected` for tabs inside a tab (img2img's sub-tabs): the one shown first,
        by its id or by A1111's id for it (`tabs.ui_config_aliases`); `tabs.on_ui_config_selected(id)` lets the
        page's state follow (img2img's mode)."""
        ids = [getattr(item, "id", None) for item in tabs.children if isinstance(item, gr.Tab)]
        aliases = getattr(tabs, "ui_config_aliases", {})
        chosen = self._field(f"{path}/Tabs@{tabs.elem_id}/selected", tabs.selected or (ids[0] if ids else None),
                             lambda v: v in ids or v in aliases, lambda v: aliases.get(v, v))
        if chosen is not None and chosen != tabs.selected and chosen in ids:
            tabs.selected = chosen
            follow = getattr(tabs, "on_ui_config_selected", None)
            if follow is not None:
                follow(chosen)

    def _apply(self, path: str, x) -> None:
        if getattr(x, "do_not_save_to_config", False):
            return
        source = getattr(x, "custom_script_source", None)
        key = f"customscript/{source}/{path}" if source else path
        accordion = getattr(x, "accordion", None)  # A1111's InputAccordion: a checkbox that opens its accordion
        if isinstance(x, _VISIBLE) and accordion is None and x.visible is True:
            x.visible = self._field(f"{key}/visible", True, lambda v: isinstance(v, bool))
        elif accordion is not None and accordion.visible is True:  # A1111 hides the whole accordion
            accordion.visible = self._field(f"{key}/visible", True, lambda v: isinstance(v, bool))
        if callable(getattr(x, "value", None)):
            return  # a value Gradio computes on each page load
        if isinstance(x, _VALUED):
            self.components.setdefault(f"{key}/value", x)
        if isinstance(x, gr.Slider):
            if isinstance(x.value, (int, float)):
                for name, value in self.slider(key, x.minimum, x.maximum, x.value, x.step).items():
                    setattr(x, name, value)
        elif isinstance(x, gr.Checkbox):
            x.value = self._field(f"{key}/value", x.value, lambda v: isinstance(v, bool))
            if accordion is not None:
                accordion.open = x.value
        elif isinstance(x, (gr.Radio, gr.Dropdown)):
            x.value = self._field(f"{key}/value", x.value, _choice_check(x))
        elif isinstance(x, gr.Textbox):
            text = x.value if x.value is not None else ""  # Gradio 3's empty textbox, which A1111 writes
            x.value = self._field(f"{key}/value", text, lambda v: isinstance(v, (str, int, float)), str)
        elif isinstance(x, gr.Number):
            x.value = self._field(f"{key}/value", x.value, lambda v: isinstance(v, (int, float, str)), float)

    def _field(self, key: str, current: Any, valid: Callable[[Any], bool], convert: Callable = lambda v: v) -> Any:
        """The stored value of `key` where the control can take it (warning where it cannot); a missing key is
        written with `current` (A1111: a null one too)."""
        if self.data.get(key) is None:
            if current is not None:
                self.data[key], self.dirty = current, True
            return current
        stored = self.data[key]
        try:
            if valid(stored):
                return convert(stored)
        except (TypeError, ValueError):
            pass
        if stored not in ("", []):  # empty: written by another control of the same label (X/Y/Z's "X values")
            log.warning("%s: %s is %r, which this control cannot take: %r is used", self.path, key, stored, current)
        return current

    def changes(self, values: list) -> list[tuple[str, Any, Any]]:
        """(key, value in the file, value on the page) for each control whose value on the page (`values`, in the
        order of `components`) differs from the file's: Settings → Defaults' "View changes" (A1111's)."""
        saved = self._saved()
        found = []
        for (key, component), value in zip(self.components.items(), values):
            names = [c[0] if isinstance(c, (list, tuple)) else c for c in (getattr(component, "choices", None) or [])]
            if isinstance(value, int) and not isinstance(value, bool) and names and \
                    getattr(component, "type", None) == "index":
                if not 0 <= value < len(names):
                    continue
                value = names[value]  # an index-typed radio or dropdown sends its position
            old = saved.get(key)
            if value == old or (old is None and value in ("", [])):
                continue
            found.append((key, old, value))
        return found

    def write_changes(self, values: list) -> int:
        """Writes the page's changed values into the file (Defaults' "Apply"); they are the defaults from the next
        start on. Returns how many changed."""
        found = self.changes(values)
        if found and self.unreadable:
            raise OSError(f"{self.path} could not be read at start; fix or remove it first")
        if found:
            saved = self._saved()  # as the file is now: edits made to it since the start stay
            for key, _, value in found:
                saved[key] = self.data[key] = value
            atomic_write_json(self.path, saved)
        return len(found)

    def _saved(self) -> dict[str, Any]:
        try:
            saved = json.loads(self.path.read_text(encoding="utf-8")) if self.path.is_file() else {}
        except (OSError, ValueError):
            return {}
        return saved if isinstance(saved, dict) else {}

    def save(self) -> None:
        if self.dirty and not self.unreadable:
            try:
                atomic_write_json(self.path, self.data)
                self.dirty = False
            except OSError as e:
                log.warning("could not write %s: %s", self.path, e)


_VISIBLE = (gr.Slider, gr.Radio, gr.Checkbox, gr.Textbox, gr.Number, gr.Dropdown, gr.Button)  # A1111's `/visible`
_VALUED = (gr.Slider, gr.Radio, gr.Checkbox, gr.Textbox, gr.Number, gr.Dropdown)  # and those with a `/value`


def _choice_check(x) -> Callable[[Any], bool]:
    """A value a dropdown or radio offers (by its shown name or its value; each of a multiselect's), or any text
    where it takes custom values."""
    offered = {item for c in (getattr(x, "choices", None) or [])
               for item in (c if isinstance(c, (list, tuple)) else (c,)) if isinstance(item, (str, int, float))}

    def check(value) -> bool:
        if getattr(x, "allow_custom_value", False):
            return True
        if getattr(x, "multiselect", False):
            return isinstance(value, list) and all(v in offered for v in value)
        return isinstance(value, (str, int, float)) and value in offered

    return check

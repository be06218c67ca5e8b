"""Compatibility shim: A1111's `modules.infotext_utils` (formerly `generation_parameters_copypaste`) names for
extensions; the infotext code itself is modules/infotext.py."""
from __future__ import annotations

from modules.infotext import create_infotext, parse_generation_parameters, quote, unquote  # noqa: F401

registered_param_bindings: list = []


class ParamBinding:
    """A1111's "send to" binding; our UI wires its own send-to buttons, so bindings are recorded, not used."""

    def __init__(self, paste_button, tabname, source_text_component=None, source_image_component=None,
                 source_tabname=None, override_settings_component=None, paste_field_names=None):
        self.paste_button = paste_button
        self.tabname = tabname
        self.source_text_component = source_text_component
        self.source_image_component = source_image_component
        self.source_tabname = source_tabname
        self.override_settings_component = override_settings_component
        self.paste_field_names = paste_field_names or []


def register_paste_params_button(binding: ParamBinding) -> None:
    registered_param_bindings.append(binding)


def create_override_settings_dict(text_pairs) -> dict:
    """A1111: "Key: value" infotext pairs (e.g. from the Override settings box) → {option name: value}."""
    from modules.settings import OPTIONS, infotext_to_option

    res = {}
    params = {}
    for pair in text_pairs or []:
        k, _, v = str(pair).partition(":")
        params[k.strip()] = v.strip()
    for key, value in params.items():
        name = infotext_to_option(key)
        if name is None or value == "":
            continue
        default = OPTIONS[name].default if name in OPTIONS else None
        try:
            if isinstance(default, bool):
                res[name] = value.lower() in ("true", "1", "yes")
            else:
                res[name] = type(default)(value) if default is not None else value
        except (TypeError, ValueError):
            res[name] = value
    return res

"""Start the extension system for a running server: bind the A1111 shims, import the enabled extensions'
scripts, register their settings, and give the engine its script runners.

Kept apart from `Engine.create` so the engine stays usable without extensions (tests, the CLI)."""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path

from modules import extension_faults, extensions, script_callbacks, scripts, shared

log = logging.getLogger(__name__)
PRELOAD_FAILED = "preload.py failed"


@dataclass
class ExtensionRuntime:
    """What the UI needs besides the runners: the loaded extensions (for their javascript and style.css)."""

    extensions: list = field(default_factory=list)

    def javascript_files(self) -> list[Path]:
        return [f for ext in self.extensions for f in ext.javascript_files()]

    def css_files(self) -> list[Path]:
        return [ext.style_css for ext in self.extensions if ext.style_css is not None]


def start(engine, args: argparse.Namespace | None = None) -> ExtensionRuntime:
    """Load every enabled extension once; failures are collected in `engine.extension_errors`, never raised."""
    shared.bind(engine, args)
    script_callbacks.clear_callbacks()
    extension_faults.faults.clear(keep=(PRELOAD_FAILED,))  # preload ran before this, while flags were parsed
    extension_faults.faults.roots = [Path(engine.paths.extensions_dir).resolve(),
                                     Path(engine.paths.extensions_builtin_dir).resolve()]
    found = extensions.discover_configured(engine.paths, engine.settings, args)
    for ext in found:
        for warning in getattr(ext, "warnings", []) or []:
            log.warning("%s", warning)
    active = extensions.active(found)
    from modules import a1111
    from modules.a1111 import extensions_names

    extensions_names.set_discovered(found)
    a1111.import_loaded_names()
    # A1111's order: import every script, instantiate them (runners), then the settings callbacks — a script's
    # __init__ may register settings or callbacks that on_ui_settings expects.
    scripts.load_scripts(active)
    runners = scripts.ScriptRunners()
    runners.initialize()
    engine.scripts = runners
    script_callbacks.ui_settings_callback()  # extension options exist before the first generation, UI or not
    if script_callbacks.model_loaded_callback not in engine.models.on_loaded:
        engine.models.on_loaded.append(script_callbacks.model_loaded_callback)
    engine.extension_errors = extension_faults.faults.messages  # live: later failures show up too
    names = ", ".join(e.name for e in active) or "none"
    log.info("Extensions loaded: %s", names)
    return ExtensionRuntime(active)


def errors(engine=None) -> list[str]:
    """Every extension failure so far, one line each (newest last)."""
    return list(extension_faults.faults.messages)


def run_preload(parser: argparse.ArgumentParser, paths, settings=None, args=None) -> None:
    """Each enabled extension's `preload.py`: `preload(parser)` adds its command-line flags before argv is parsed."""
    from modules.settings import Settings

    settings = settings if settings is not None else Settings.load(paths.config_file)
    for ext in extensions.active(extensions.discover_configured(paths, settings, args)):
        if ext.preload_file is None:
            continue
        try:
            module = scripts.load_module(ext.preload_file)
            preload = getattr(module, "preload", None)
            if preload is not None:
                preload(parser)
        except Exception as e:  # noqa: BLE001 - a broken preload must not stop the app
            extension_faults.faults.record(PRELOAD_FAILED, e, source=ext.preload_file, extension=ext.name)

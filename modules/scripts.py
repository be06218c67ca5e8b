"""Scripts: A1111's `Script` API, the per-tab runners, and the loader for extensions' `scripts/*.py`.

Extensions subclass `Script` exactly as for A1111. A script whose `show()` returns `AlwaysVisible` runs on every
generation through the hooks (`process`, `process_batch`, `postprocess_image`, …); one that returns True appears
in the "Script" dropdown and takes over the generation with `run(p, *args)`. Values of the components a script's
`ui()` returns reach its hooks as `*args`, sliced from one flat list whose item 0 is the selected script's index+1.

A hook that raises is reported (log + `script_callbacks.errors`, with the script's file name) and skipped; the
generation goes on. Runners live on the engine (`engine.scripts`); `scripts_txt2img`/`scripts_img2img` are the
module-level names A1111 extensions reach for.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modules import extension_faults, script_callbacks
from modules.paths import REPO_ROOT

log = logging.getLogger(__name__)

AlwaysVisible = object()


class PostprocessImageArgs:
    def __init__(self, image):
        self.image = image


class PostProcessMaskOverlayArgs:
    def __init__(self, index, mask_for_overlay, overlay_image):
        self.index = index
        self.mask_for_overlay = mask_for_overlay
        self.overlay_image = overlay_image


class PostSampleArgs:
    def __init__(self, samples):
        self.samples = samples


class PostprocessBatchListArgs:
    def __init__(self, images):
        self.images = images


@dataclass
class OnComponent:
    component: Any


class Script:
    """Base class of every script (A1111's attributes and hooks; all hooks are optional)."""

    name = None
    section = None
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    tabname = None
    group = None
    create_group = True
    infotext_fields = None
    paste_field_names = None
    api_info = None
    on_before_component_elem_id = None
    on_after_component_elem_id = None
    setup_for_ui_only = False
    controls = None

    def title(self):
        raise NotImplementedError()

    def ui(self, is_img2img):
        pass

    def show(self, is_img2img):
        return True

    def run(self, p, *args):
        pass

    def setup(self, p, *args):
        pass

    def before_process(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def before_process_batch(self, p, *args, **kwargs):
        pass

    def after_extra_networks_activate(self, p, *args, **kwargs):
        pass

    def process_before_every_sampling(self, p, *args, **kwargs):
        pass

    def process_batch(self, p, *args, **kwargs):
        pass

    def post_sample(self, p, ps: PostSampleArgs, *args):
        pass

    def postprocess_batch(self, p, *args, **kwargs):
        pass

    def postprocess_batch_list(self, p, pp: PostprocessBatchListArgs, *args, **kwargs):
        pass

    def on_mask_blend(self, p, mba, *args):
        pass

    def postprocess_image(self, p, pp: PostprocessImageArgs, *args):
        pass

    def postprocess_maskoverlay(self, p, ppmo: PostProcessMaskOverlayArgs, *args):
        pass

    def postprocess_image_after_composite(self, p, pp: PostprocessImageArgs, *args):
        pass

    def postprocess(self, p, processed, *args):
        pass

    def before_component(self, component, **kwargs):
        pass

    def after_component(self, component, **kwargs):
        pass

    def on_before_component(self, callback, *, elem_id):
        if self.on_before_component_elem_id is None:
            self.on_before_component_elem_id = []
        self.on_before_component_elem_id.append((elem_id, callback))

    def on_after_component(self, callback, *, elem_id):
        if self.on_after_component_elem_id is None:
            self.on_after_component_elem_id = []
        self.on_after_component_elem_id.append((elem_id, callback))

    def describe(self):
        return ""

    def elem_id(self, item_id):
        """A1111's element id for one of this script's components: script_[tab_]title_item."""
        need_tabname = self.show(True) == self.show(False)
        tabkind = "img2img" if self.is_img2img else "txt2img"
        tabname = f"{tabkind}_" if need_tabname else ""
        title = re.sub(r"[^a-z_0-9]", "", re.sub(r"\s", "_", self.title().lower()))
        return f"script_{tabname}{title}_{item_id}"

    def before_hr(self, p, *args):
        pass


class ScriptBuiltinUI(Script):
    setup_for_ui_only = True

    def elem_id(self, item_id):
        return f"{self.tabname}{item_id}"


current_basedir = str(REPO_ROOT)


def basedir():
    """The folder of the extension whose script is being loaded (A1111: used to find files beside it)."""
    return current_basedir


@dataclass
class ScriptClassData:
    script_class: type
    path: str
    basedir: str
    module: Any
    extension: str = ""


scripts_data: list[ScriptClassData] = []
postprocessing_scripts_data: list[ScriptClassData] = []
load_errors: list[str] = script_callbacks.errors  # "extension: what failed" (shown in the Extensions tab)


# ---------------------------------------------------------------------------------------------------------------
# Runner


class ScriptRunner:
    """The scripts of one tab (txt2img or img2img) and the hooks they run at."""

    def __init__(self, is_img2img: bool = False):
        self.is_img2img = is_img2img
        self.scripts: list[Script] = []
        self.selectable_scripts: list[Script] = []
        self.alwayson_scripts: list[Script] = []
        self.titles: list[str] = []
        self.title_map: dict[str, Script] = {}
        self.infotext_fields: list = []
        self.paste_field_names: list = []
        self.inputs: list = [None]
        self.defaults: list = [None]  # the args list a request without script arguments gets (item 0: no script)

    def initialize_scripts(self, is_img2img: bool, data: list[ScriptClassData] | None = None) -> None:
        self.is_img2img = is_img2img
        self.scripts.clear()
        self.selectable_scripts.clear()
        self.alwayson_scripts.clear()
        for entry in data if data is not None else scripts_data:
            try:
                script = entry.script_class()
                script.filename = entry.path
                script.is_txt2img = not is_img2img
                script.is_img2img = is_img2img
                script.tabname = "img2img" if is_img2img else "txt2img"
                visibility = script.show(is_img2img)
            except Exception as e:  # noqa: BLE001
                script_callbacks.report_error("creating the script", entry.path, e)
                continue
            if visibility == AlwaysVisible:
                script.alwayson = True
                self.scripts.append(script)
                self.alwayson_scripts.append(script)
            elif visibility:
                self.scripts.append(script)
                self.selectable_scripts.append(script)
        self.titles = [_title(s) for s in self.selectable_scripts]
        self.title_map = {_title(s).lower(): s for s in self.scripts}
        self.layout([0] * len(self.scripts))

    def layout(self, counts: list[int], defaults: list[list] | None = None) -> None:
        """Give each script its slice of the flat args list: `counts[i]` components for `self.scripts[i]`."""
        pos = 1
        self.defaults = [None]
        for i, (script, n) in enumerate(zip(self.scripts, counts)):
            script.args_from, script.args_to = pos, pos + n
            pos += n
            values = defaults[i] if defaults is not None else [None] * n
            self.defaults.extend(values)

    def script(self, title: str) -> Script | None:
        return self.title_map.get((title or "").lower())

    def selectable_index(self, title: str) -> int:
        """1-based index of a selectable script by title (case-insensitive); 0 if not found."""
        for i, s in enumerate(self.selectable_scripts):
            if _title(s).lower() == (title or "").lower():
                return i + 1
        return 0

    def args_for_request(self, script_name: str | None, script_args: list, alwayson: dict) -> list:
        """The flat args list for an API request: defaults, with the selected script's and the always-on scripts'
        given args laid over them (A1111's `init_script_args`). Raises LookupError naming what is unknown."""
        args = list(self.defaults)
        if script_name:
            index = self.selectable_index(script_name)
            if not index:
                raise LookupError(f"script {script_name!r} not found")
            script = self.selectable_scripts[index - 1]
            args[0] = index
            given = list(script_args or [])
            args[script.args_from:script.args_from + len(given)] = given[:script.args_to - script.args_from]
        for title, payload in (alwayson or {}).items():
            script = self.script(title)
            if script is None or not script.alwayson:
                raise LookupError(f"always-on script {title!r} not found")
            given = list((payload or {}).get("args", []) if isinstance(payload, dict) else payload or [])
            n = script.args_to - script.args_from
            args[script.args_from:script.args_from + min(n, len(given))] = given[:n]
        return args

    # -- running -----------------------------------------------------------------------------------------------

    def run(self, p, *args):
        """The selected script's `run`, or None (then the normal generation runs)."""
        index = args[0] if args else 0
        if not index:
            return None
        try:
            script = self.selectable_scripts[int(index) - 1]
        except (IndexError, ValueError, TypeError):
            return None
        script_args = args[script.args_from:script.args_to]
        return script.run(p, *script_args)

    def _each(self, hook: str, p, *extra, **kwargs):
        for script in self.alwayson_scripts:
            try:
                script_args = p.script_args[script.args_from:script.args_to]
                getattr(script, hook)(p, *extra, *script_args, **kwargs)
            except Exception as e:  # noqa: BLE001 - an extension's bug must not stop the generation
                script_callbacks.report_error(f"{hook}", script.filename or _title(script), e)

    def setup_scrips(self, p, *, is_ui=True):
        for script in self.alwayson_scripts:
            if not is_ui and script.setup_for_ui_only:
                continue
            try:
                script.setup(p, *p.script_args[script.args_from:script.args_to])
            except Exception as e:  # noqa: BLE001
                script_callbacks.report_error("setup", script.filename or _title(script), e)

    setup_scripts = setup_scrips

    def before_process(self, p):
        self._each("before_process", p)

    def process(self, p):
        self._each("process", p)

    def before_process_batch(self, p, **kwargs):
        self._each("before_process_batch", p, **kwargs)

    def after_extra_networks_activate(self, p, **kwargs):
        self._each("after_extra_networks_activate", p, **kwargs)

    def process_batch(self, p, **kwargs):
        self._each("process_batch", p, **kwargs)

    def process_before_every_sampling(self, p, **kwargs):
        self._each("process_before_every_sampling", p, **kwargs)

    def postprocess(self, p, processed):
        self._each("postprocess", p, processed)

    def postprocess_batch(self, p, images, **kwargs):
        self._each("postprocess_batch", p, images=images, **kwargs)

    def postprocess_batch_list(self, p, pp: PostprocessBatchListArgs, **kwargs):
        self._each("postprocess_batch_list", p, pp, **kwargs)

    def post_sample(self, p, ps: PostSampleArgs):
        self._each("post_sample", p, ps)

    def postprocess_image(self, p, pp: PostprocessImageArgs):
        self._each("postprocess_image", p, pp)

    def postprocess_maskoverlay(self, p, ppmo: PostProcessMaskOverlayArgs):
        self._each("postprocess_maskoverlay", p, ppmo)

    def postprocess_image_after_composite(self, p, pp: PostprocessImageArgs):
        self._each("postprocess_image_after_composite", p, pp)

    def before_hr(self, p):
        self._each("before_hr", p)

    def overrides(self, hook: str) -> bool:
        """Whether any always-on script defines `hook` itself (so costly argument conversions can be skipped)."""
        return any(getattr(type(s), hook, None) is not getattr(Script, hook) for s in self.alwayson_scripts)


def _title(script: Script) -> str:
    try:
        return str(script.title())
    except Exception:  # noqa: BLE001
        return type(script).__name__


scripts_txt2img = ScriptRunner(False)
scripts_img2img = ScriptRunner(True)
scripts_current: ScriptRunner | None = None


@dataclass
class ScriptRunners:
    """The engine's scripts: one runner per tab, created after the extensions' scripts are loaded."""

    txt2img: ScriptRunner = field(default_factory=lambda: scripts_txt2img)
    img2img: ScriptRunner = field(default_factory=lambda: scripts_img2img)

    def for_mode(self, mode: str) -> ScriptRunner:
        return self.img2img if mode in ("img2img", "inpaint") else self.txt2img

    def initialize(self) -> None:
        self.txt2img.initialize_scripts(False)
        self.img2img.initialize_scripts(True)


# ---------------------------------------------------------------------------------------------------------------
# Loading


def load_module(path: str | os.PathLike):
    """Import one script file under its file name, as A1111 does. It is also put in sys.modules while it runs
    (dataclasses and typing look their module up there), and stays there until a file of the same name loads."""
    path = str(path)
    name = os.path.basename(path)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _register_classes(module, path: str, base: str, extension: str) -> None:
    from modules import scripts_postprocessing

    for obj in list(vars(module).values()):
        if not isinstance(obj, type):
            continue
        if issubclass(obj, Script) and obj not in (Script, ScriptBuiltinUI):
            scripts_data.append(ScriptClassData(obj, path, base, module, extension))
        elif issubclass(obj, scripts_postprocessing.ScriptPostprocessing) and \
                obj is not scripts_postprocessing.ScriptPostprocessing:
            postprocessing_scripts_data.append(ScriptClassData(obj, path, base, module, extension))


def load_scripts(extensions) -> None:
    """Import every enabled extension's scripts in order; a script that fails to import is reported and skipped.

    The extension's folder goes on sys.path (so `from scripts import helper` and imports of its own modules work)
    and `basedir()` returns it while its files load."""
    global current_basedir
    scripts_data.clear()
    postprocessing_scripts_data.clear()
    for ext in extensions:
        if not ext.enabled:
            continue
        root = str(ext.path)
        if root not in sys.path:
            sys.path.append(root)
        for path in _ordered_files(ext):
            current_basedir = root
            script_callbacks.current_script = str(path)
            try:
                module = load_module(path)
                _register_classes(module, str(path), root, ext.name)
            except Exception as e:  # noqa: BLE001 - a broken extension must not stop the app
                extension_faults.faults.record(f"could not load {path.name}", e, source=path, extension=ext.name)
            finally:
                script_callbacks.current_script = None
                current_basedir = str(REPO_ROOT)


def _ordered_files(ext) -> list[Path]:
    """The extension's script files, honouring metadata.ini Before/After between its own scripts."""
    files = list(ext.script_files())
    order = getattr(ext, "script_order", {}) or {}
    if not order:
        return files
    names = [f"scripts/{f.name}" for f in files]
    by_name = dict(zip(names, files))
    after: dict[str, set[str]] = {n: set() for n in names}
    for name, rule in order.items():
        if name not in after:
            continue
        for other in getattr(rule, "after", []) or []:
            other = other if other.startswith("scripts/") else f"scripts/{other}"
            if other in after:
                after[name].add(other)
        for other in getattr(rule, "before", []) or []:
            other = other if other.startswith("scripts/") else f"scripts/{other}"
            if other in after:
                after[other].add(name)
    out: list[str] = []
    pending = list(names)
    while pending:
        ready = [n for n in pending if after[n] <= set(out)] or pending[:1]  # a cycle: keep alphabetical order
        out.append(ready[0])
        pending.remove(ready[0])
    return [by_name[n] for n in out]

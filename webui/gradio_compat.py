"""What A1111 extension UIs expect from Gradio, installed once (`install()`) before extension scripts load.

- component creation hooks: `script_callbacks.on_before_component/on_after_component` and the scripts'
  `before_component/after_component` (how extensions find `txt2img_prompt` and friends by elem_id);
- Gradio 3 calls that Gradio 4+ rejects, mapped to what they mean in Gradio 6, so extensions run unchanged:
  `_js=` on every listener (also `.then()`, `demo.load`, `gr.on`) → `js=`; `gr.X.update(...)` → `gr.update`;
  `.style(...)` → the matching constructor argument where one exists; `gr.Box` → `gr.Group`;
  `gr.Image(source=, tool=, shape=, brush_*)` (a sketch tool becomes an ImageEditor whose value keeps Gradio 3's
  `{"image", "mask"}` shape); `gr.Video/Audio(source=)`; `gr.File(type="file")`; `gr.Dataframe(max_rows=)`;
  float `scale=`; `gr.Button(variant="tool")`; `gradio.components.IOComponent`; the `gr.inputs`/`gr.outputs`
  modules. Any other argument a Gradio 6 constructor or listener would reject is dropped, with one warning per
  extension naming it, instead of the TypeError that would stop the extension's UI;
- subclasses an extension (or `modules.ui_components`) makes of a Gradio component render as that component;
- `modules.ui_components` (FormRow, ToolButton, …), a module A1111 extensions import, served from here because
  `modules/` holds no UI code.
"""
from __future__ import annotations

import functools
import inspect
import logging
import os
import sys
import types
from pathlib import Path

import gradio as gr
import numpy as np
import PIL.Image
import PIL.ImageColor
import PIL.ImageOps
from gradio import component_meta, events, image_utils
from gradio.blocks import Block
from gradio.components import Component
from gradio.component_meta import ComponentMeta

from modules import script_callbacks, scripts

log = logging.getLogger(__name__)

_installed = False
_GRADIO_DIR = os.path.dirname(os.path.abspath(gr.__file__))
_THIS_FILE = os.path.abspath(__file__)
_EXTENSION_PARENTS = ("extensions", "extensions-builtin")


# --- component creation hooks --------------------------------------------------------------------------------------

def _script_hooks(kind: str, component, kwargs: dict) -> None:
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


# --- who is calling: the extension a dropped argument is reported against ------------------------------------------

def _extension_of_file(filename: str) -> str | None:
    """The extension a source file belongs to: a loaded script's folder, else a folder inside `extensions/` or
    `extensions-builtin/` (where the manager puts them, also under a custom data dir)."""
    path = os.path.abspath(filename)
    for data in (*scripts.scripts_data, *scripts.postprocessing_scripts_data):
        if data.basedir and data.extension and path.startswith(os.path.abspath(data.basedir) + os.sep):
            return data.extension
    parts = Path(path).parts
    for i in range(len(parts) - 2, 0, -1):
        if parts[i - 1] in _EXTENSION_PARENTS:
            return parts[i]
    return None


def calling_extension() -> str | None:
    """The innermost extension on the call stack, else the one whose scripts are being loaded."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith(_GRADIO_DIR) and os.path.abspath(filename) != _THIS_FILE:
            name = _extension_of_file(filename)
            if name:
                return name
        frame = frame.f_back
    base = scripts.current_basedir
    if base and Path(base).resolve() != scripts.REPO_ROOT.resolve():
        return Path(base).name
    return None


_warned: set[str] = set()


def _dropped(where: str, names) -> None:
    """One warning per extension (the first thing it passes that Gradio 6 lacks); the rest at debug level."""
    extension = calling_extension()
    who = f"extension {extension}" if extension else "UI code outside extensions"
    message = f"{who}: Gradio 6 has no {', '.join(f'{n}=' for n in names)} on {where}; ignored"
    if who in _warned:
        log.debug("%s", message)
    else:
        _warned.add(who)
        log.warning("%s (later Gradio 3 arguments from it are logged at debug level)", message)


# --- constructor arguments -----------------------------------------------------------------------------------------

def _as_sources(source):
    if source is None:
        return None
    return list(source) if isinstance(source, (list, tuple)) else [source]


def _int_scale(kwargs: dict) -> None:
    """Gradio 3 took relative float scales; Gradio 6 wants ints (0 = don't grow)."""
    scale = kwargs.get("scale")
    if isinstance(scale, float):
        kwargs["scale"] = max(1, round(scale)) if scale > 0 else 0


def _webcam(kwargs: dict) -> None:
    if "mirror_webcam" in kwargs:
        mirror = kwargs.pop("mirror_webcam")
        kwargs.setdefault("webcam_options", gr.WebcamOptions(mirror=bool(mirror)))


def _image_rule(kwargs: dict, update: bool = False) -> None:
    if "source" in kwargs:
        kwargs.setdefault("sources", _as_sources(kwargs.pop("source")))
    if kwargs.get("type") == "file":
        kwargs["type"] = "filepath"
    if update:
        return
    _webcam(kwargs)
    tool = kwargs.pop("tool", None)
    if tool in ("sketch", "color-sketch"):
        _dropped(f"a subclass of gr.Image (tool={tool!r} needs gr.Image itself)", ["tool"])
    for name in ("shape", "brush_color", "brush_radius", "mask_opacity", "invert_colors"):
        kwargs.pop(name, None)  # no Gradio 6 meaning on a plain image: Gradio 3 only used them with a tool
    if kwargs.get("sources") and "canvas" in kwargs["sources"]:
        kwargs["sources"] = [s for s in kwargs["sources"] if s != "canvas"] or None


def _video_rule(kwargs: dict, update: bool = False) -> None:
    if "source" in kwargs:
        kwargs.setdefault("sources", _as_sources(kwargs.pop("source")))
    if not update:
        _webcam(kwargs)


def _file_rule(kwargs: dict, update: bool = False) -> None:
    kind = kwargs.get("type")
    if kind == "file":
        kwargs["type"] = "filepath"  # values are NamedString: a str path with `.name` (and `.orig_name`, below)
    elif kind == "bytes":
        kwargs["type"] = "binary"


def _dataframe_rule(kwargs: dict, update: bool = False) -> None:
    for name in ("max_rows", "max_cols", "overflow_row_behaviour"):
        kwargs.pop(name, None)  # Gradio 6 scrolls instead of paging
    if "col_width" in kwargs:
        kwargs.setdefault("column_widths", kwargs.pop("col_width"))


_BUTTON_VARIANTS = ("primary", "secondary", "stop", "huggingface")


def _button_rule(kwargs: dict, update: bool = False) -> None:
    variant = kwargs.get("variant")
    if variant is None or variant in _BUTTON_VARIANTS:
        return
    kwargs["variant"] = "secondary"
    if variant == "tool" and not update:  # A1111's small square icon button
        kwargs.setdefault("size", "sm")
        kwargs.setdefault("min_width", 40)
        classes = kwargs.get("elem_classes") or []
        classes = [classes] if isinstance(classes, str) else list(classes)
        kwargs["elem_classes"] = ["tool", *[c for c in classes if c != "tool"]]


_RULES = {
    gr.Image: _image_rule,
    gr.Video: _video_rule,
    gr.Audio: _video_rule,
    gr.File: _file_rule,
    gr.UploadButton: _file_rule,
    gr.Dataframe: _dataframe_rule,
    gr.Button: _button_rule,
}


def _accepted(function) -> tuple[set[str], bool]:
    params = inspect.signature(function).parameters.values()
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return named, any(p.kind is p.VAR_KEYWORD for p in params)


def _translating_init(cls, init):
    """`cls.__init__` that turns Gradio 3 arguments into Gradio 6 ones and drops what Gradio 6 would reject.

    It wraps gradio's own wrapper (which records the arguments for rebuilding the component on `gr.update`), so what
    gets recorded is already translated."""
    if getattr(init, "_g3_translating", False):
        return init
    accepted, open_kwargs = _accepted(init)
    rule = _RULES.get(cls)
    takes_varargs = any(p.kind is p.VAR_POSITIONAL for p in inspect.signature(init).parameters.values())

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        if takes_varargs and len(args) == 1 and "value" not in kwargs:
            # gradio's wrapper drops positional arguments a `*args` signature can't name: ToolButton("🔄") would
            # lose its label. Gradio 6 components take only `value` positionally.
            kwargs["value"], args = args[0], ()
        if rule is not None:
            rule(kwargs)
        _int_scale(kwargs)
        if not open_kwargs:
            unknown = [k for k in kwargs if k not in accepted]
            if unknown:
                for name in unknown:
                    kwargs.pop(name)
                _dropped(f"gr.{cls.__name__}()", unknown)
        return init(self, *args, **kwargs)

    __init__._g3_translating = True
    return __init__


# --- event listeners -----------------------------------------------------------------------------------------------

def _legacy_listener(method):
    """A listener (`click`, `then`, `load`, `gr.on`, …) that also takes Gradio 3's arguments.

    An event nobody named (`api_name`) stays callable but is left out of the API description, as Gradio 3 left it:
    Gradio 6 names every event after its function (`/lambda_7`), and describing our ~270 UI events put 2 MB of API
    description into every page and cost the server ~0.2 CPU-s per page load. The HTTP API is /sdapi/v1 (/docs)."""
    if getattr(method, "_g3_listener", False):
        return method
    accepted, open_kwargs = _accepted(method)
    positional = [p.name for p in inspect.signature(method).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    api_name_at = positional.index("api_name") if "api_name" in positional else None

    @functools.wraps(method)
    def listener(*args, **kwargs):
        if "api_visibility" in accepted and "api_visibility" not in kwargs and "show_api" not in kwargs:
            named = kwargs.get("api_name") or (api_name_at is not None and len(args) > api_name_at
                                               and args[api_name_at])
            if not named:
                kwargs["api_visibility"] = "undocumented"
        if "_js" in kwargs:
            js = kwargs.pop("_js")
            kwargs.setdefault("js", js)
        if isinstance(kwargs.get("show_progress"), bool):
            kwargs["show_progress"] = "full" if kwargs["show_progress"] else "hidden"
        if "show_api" in kwargs and kwargs.pop("show_api") is False and "api_visibility" in accepted:
            kwargs.setdefault("api_visibility", "undocumented")
        if not open_kwargs:
            unknown = [k for k in kwargs if k not in accepted]
            if unknown:
                for name in unknown:
                    kwargs.pop(name)
                _dropped(f"the .{getattr(method, 'event_name', method.__name__)}() listener", unknown)
        return method(*args, **kwargs)

    listener._g3_listener = True
    return listener


def _patch_listeners(cls) -> None:
    for name, value in list(vars(cls).items()):
        if callable(value) and hasattr(value, "event_name") and hasattr(value, "has_trigger"):
            setattr(cls, name, _legacy_listener(value))


# --- .style(), .update() -------------------------------------------------------------------------------------------

def _style(self, *args, **kwargs):
    """Gradio 3's `.style(...)`: each option that is a Gradio 6 constructor argument is applied, the rest ignored."""
    params, _ = _accepted(_config_class(type(self)).__init__)
    changes = {}
    for name, value in kwargs.items():
        if name == "full_width":
            name, value = "scale", 1 if value else 0
        elif name == "grid":
            name, value = "columns", max(value) if isinstance(value, (list, tuple)) else value
        elif name == "show_copy_button":
            if not value or "buttons" not in params:
                continue
            name, value = "buttons", [*(getattr(self, "buttons", None) or []), "copy"]
        if name in params and name != "value":
            changes[name] = value
    for name, value in changes.items():
        setattr(self, name, value)
        if getattr(self, "_constructor_args", None):
            self._constructor_args[0][name] = value  # kept when an update rebuilds the component
    return self


def _class_update(cls):
    rule = next((_RULES[k] for k in cls.__mro__ if k in _RULES), None)

    def update(*args, **kwargs):
        """Gradio 3's `gr.X.update(value, ...)`: the same as `gr.update(...)`."""
        if args:
            kwargs.setdefault("value", args[0])
        if rule is not None:
            rule(kwargs, update=True)
        _int_scale(kwargs)
        return gr.update(**kwargs)

    return staticmethod(update)


# --- classes: rendering subclasses, Gradio 3 component subclasses ---------------------------------------------------

def _is_gradio_class(cls) -> bool:
    return cls.__module__.split(".")[0] == "gradio"


def _nearest_gradio_class(cls):
    return next(k for k in cls.__mro__ if _is_gradio_class(k))


@functools.lru_cache(maxsize=None)
def _config_class(cls):
    """Whose constructor arguments describe `cls` to the page: a subclass taking `**kwargs` (ToolButton, an
    extension's own button class) has none of its own, so its Gradio base's are used."""
    if _is_gradio_class(cls):
        return cls
    _, open_kwargs = _accepted(cls.__init__)
    return _nearest_gradio_class(cls) if open_kwargs else cls


_block_get_config = Block.get_config


def _get_config(self, cls=None):
    cls = cls if cls is not None else _config_class(type(self))
    _keep_signature(cls.__init__)
    return _block_get_config(self, cls)


def _keep_signature(function) -> None:
    """Gradio reads a component's constructor signature each time it describes the component: for every one of the
    page's ~1,300 components five times while the app is built, and again for each new browser session. A
    function's signature does not change, so it is kept on the function, where `inspect.signature` looks first
    (measured: ~0.15 CPU-s less per app start, ~0.03 per page load)."""
    if not hasattr(function, "__dict__") or "__signature__" in function.__dict__:
        return  # a built-in (nothing to keep it on), or kept already
    try:
        function.__signature__ = inspect.signature(function)
    except (TypeError, ValueError):  # no signature to read: Gradio's own call meets the same
        pass


def _gradio_block_name(self) -> str:
    base = _nearest_gradio_class(type(self))
    return base.__base__.__name__.lower() if hasattr(base, "is_template") else base.__name__.lower()


def _identity(self, value):
    return value


def _is_extension_class(cls) -> bool:
    try:
        filename = inspect.getfile(cls)
    except (OSError, TypeError):
        return False
    return os.path.abspath(filename) == _THIS_FILE or _extension_of_file(filename) is not None


def _adapt_class(cls) -> None:
    if "__init__" in vars(cls):
        cls.__init__ = _translating_init(cls, vars(cls)["__init__"])
    _patch_listeners(cls)
    if "update" not in vars(cls):
        cls.update = _class_update(cls)
    if _is_gradio_class(cls):
        return
    owner = next(k for k in cls.__mro__ if "get_block_name" in vars(k))
    if _is_gradio_class(owner) and not hasattr(cls, "is_template") and _is_extension_class(cls):
        cls.get_block_name = _gradio_block_name  # a Gradio 3 subclass that forgot it would not render
    missing = set(getattr(cls, "__abstractmethods__", ())) & {"preprocess", "postprocess"}
    if missing:  # Gradio 3's IOComponent had pass-through defaults
        for name in missing:
            setattr(cls, name, _identity)
        cls.__abstractmethods__ = frozenset(cls.__abstractmethods__ - missing)
        if cls.api_info is Component.api_info:
            cls.api_info = lambda self: {"type": {}, "description": "any"}
        for name in ("example_payload", "example_value"):
            if getattr(cls, name) is getattr(Component, name):
                setattr(cls, name, lambda self: None)


def _all_subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_subclasses(sub)


# --- gr.Image with a Gradio 3 tool / shape --------------------------------------------------------------------------

_EDIT_TOOLS = ("sketch", "color-sketch", "editor")


def _resize_and_crop(image: PIL.Image.Image, shape) -> PIL.Image.Image:
    """Gradio 3's `shape=(w, h)`: scale to cover and centre-crop; a None side keeps the aspect ratio."""
    width, height = shape
    if width is None and height is None:
        return image
    if width is None:
        width = max(1, round(image.width * height / image.height))
    elif height is None:
        height = max(1, round(image.height * width / image.width))
    return PIL.ImageOps.fit(image, (int(width), int(height)), PIL.Image.LANCZOS)


def _to_pil(value) -> PIL.Image.Image | None:
    if value is None or isinstance(value, PIL.Image.Image):
        return value
    if isinstance(value, np.ndarray):
        return PIL.Image.fromarray(value)
    return PIL.Image.open(value)


def _in_mode(image: PIL.Image.Image, mode: str) -> PIL.Image.Image:
    """Convert to Gradio 3's `image_mode`; transparent areas become white when the mode has no alpha."""
    if image.mode == mode:
        return image
    if "A" in image.getbands() and "A" not in mode:
        image = PIL.Image.alpha_composite(PIL.Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
    return image.convert(mode)


class ShapedImage(gr.Image):
    """`gr.Image(shape=(w, h))`: inputs are resized and centre-cropped to `shape`, as Gradio 3 did."""

    is_template = True

    def __init__(self, value=None, *, shape=None, **kwargs):
        self.shape = tuple(shape) if shape else None
        super().__init__(value, **kwargs)

    def preprocess(self, payload):
        value = super().preprocess(payload)
        if value is None or not self.shape:
            return value
        image = _resize_and_crop(_to_pil(value), self.shape)
        return image_utils.format_image(image, self.type, self.GRADIO_CACHE, format=self.format)


class Gradio3ImageEditor(gr.ImageEditor):
    """`gr.Image(tool=...)` / `gr.Image(source="canvas")`: an ImageEditor whose values keep Gradio 3's shape.

    tool="sketch" (upload/webcam): the callback gets `{"image": picture, "mask": white where painted}`;
    "color-sketch", "editor" and a canvas: the edited picture. Either in the `type` and `image_mode` asked for."""

    is_template = True

    def __init__(self, value=None, *, tool=None, source="upload", sources=None, type="numpy", image_mode="RGB",
                 shape=None, brush_color=None, brush_radius=None, mask_opacity=None, invert_colors=None,
                 mirror_webcam=None, **kwargs):
        source = source or "upload"
        self.g3_tool = tool or ("sketch" if source == "canvas" else "editor")
        self.g3_source = source
        self.g3_type = "filepath" if type == "file" else type
        self.g3_image_mode = image_mode or "RGB"
        self.g3_shape = tuple(shape) if shape else None
        colour = brush_color or "#000000"
        radius = max(1, round(brush_radius)) if brush_radius else "auto"
        if self.g3_tool == "editor":
            kwargs.setdefault("brush", False)
            kwargs.setdefault("eraser", False)
            kwargs.setdefault("transforms", ("crop",))
        elif self.g3_tool == "sketch":
            kwargs.setdefault("brush", gr.Brush(default_size=radius, colors=[colour],
                                                default_color=colour, color_mode="fixed"))
        else:
            kwargs.setdefault("brush", gr.Brush(default_size=radius, default_color=colour,
                                                colors=[colour, "#ffffff", "#cc3232", "#32cc70", "#3270cc"]))
        kwargs.setdefault("layers", False)
        if source == "canvas":
            sources = []
            if self.g3_shape and all(self.g3_shape):
                kwargs.setdefault("canvas_size", tuple(int(s) for s in self.g3_shape))
        elif sources is None:
            sources = _as_sources(source)
        if mirror_webcam is not None:
            kwargs.setdefault("webcam_options", gr.WebcamOptions(mirror=bool(mirror_webcam)))
        _int_scale(kwargs)
        accepted, _ = _accepted(gr.ImageEditor.__init__)
        unknown = [k for k in kwargs if k not in accepted]
        if unknown:
            for name in unknown:
                kwargs.pop(name)
            _dropped("gr.Image(tool=...)", unknown)
        # Layers must keep their alpha (it is the mask), so the editor itself works in RGBA PIL images.
        super().__init__(value, sources=sources, type="pil", image_mode="RGBA", **kwargs)

    def _format(self, image: PIL.Image.Image | None):
        if image is None:
            return None
        if self.g3_shape:
            image = _resize_and_crop(image, self.g3_shape)
        image = _in_mode(image, self.g3_image_mode)
        return image_utils.format_image(image, self.g3_type, self.GRADIO_CACHE, format="png")

    def preprocess(self, payload):
        value = super().preprocess(payload)
        if value is None:
            return None
        background, layers, composite = value["background"], value["layers"], value["composite"]
        if self.g3_tool != "sketch" or self.g3_source == "canvas":
            return self._format(composite if composite is not None else background)
        image = background if background is not None else composite
        if image is None:
            return None
        mask = PIL.Image.new("L", image.size, 0)
        for layer in layers:
            alpha = layer.convert("RGBA").getchannel("A").point(lambda a: 255 if a else 0)
            if alpha.size != image.size:
                alpha = alpha.resize(image.size, PIL.Image.NEAREST)
            mask = PIL.Image.fromarray(np.maximum(np.asarray(mask), np.asarray(alpha)))
        return {"image": self._format(image), "mask": self._format(PIL.Image.merge("RGB", [mask] * 3))}

    def postprocess(self, value):
        """Also takes Gradio 3's `{"image", "mask"}`: the mask is shown painted over the picture."""
        if isinstance(value, dict) and "background" not in value and ("image" in value or "mask" in value):
            image, mask = _to_pil(value.get("image")), _to_pil(value.get("mask"))
            layers = []
            if mask is not None:
                alpha = mask.convert("L")
                layer = PIL.Image.new("RGBA", alpha.size, self._brush_rgb())
                layer.putalpha(alpha)
                layers.append(layer)
            value = {"background": image, "layers": layers, "composite": image}
        return super().postprocess(value)

    def _brush_rgb(self):
        colour = getattr(self.brush, "default_color", None) if self.brush else None
        try:
            return PIL.ImageColor.getrgb(colour if isinstance(colour, str) else "#000000")
        except ValueError:
            return (0, 0, 0)


def _image_new(cls, *args, **kwargs):
    """`gr.Image(tool="sketch")` and friends become a `Gradio3ImageEditor`, `gr.Image(shape=)` a `ShapedImage`."""
    if cls is gr.Image:
        if kwargs.get("tool") in _EDIT_TOOLS or kwargs.get("source") == "canvas":
            return Gradio3ImageEditor(*args, **kwargs)
        if kwargs.get("shape"):
            return object.__new__(ShapedImage)
    return object.__new__(cls)


# --- gr.File values with Gradio 3's attributes ----------------------------------------------------------------------

def _patch_file(cls) -> None:
    process_single = cls._process_single_file
    postprocess = cls.postprocess

    @functools.wraps(process_single)
    def _process_single_file(self, f):
        value = process_single(self, f)
        if isinstance(value, str):
            value.orig_name = f.orig_name or os.path.basename(value)  # Gradio 3's tempfile wrapper had both
        return value

    @functools.wraps(postprocess)
    def _postprocess(self, value):
        """Gradio 3 callbacks return file objects (tempfile, open()) to File outputs; Gradio 6 wants paths."""
        def path(v):
            return v if isinstance(v, (str, os.PathLike)) or not hasattr(v, "name") else v.name
        value = [path(v) for v in value] if isinstance(value, (list, tuple)) else path(value)
        return postprocess(self, value)

    cls._process_single_file = _process_single_file
    cls.postprocess = _postprocess


# --- gr.inputs / gr.outputs (Gradio 2's interface API, still in Gradio 3) -------------------------------------------

def _legacy_factory(component, positional: tuple, types=None, drop=()):
    def build(*args, **kwargs):
        named = dict(zip(positional, args))
        named.update(kwargs)
        if "default" in named:
            named["value"] = named.pop("default")
        for name in ("optional", *drop):
            named.pop(name, None)
        if "type" in named and (types is None or named["type"] not in types):
            named.pop("type")
        return component(**named)

    build.__name__ = build.__qualname__ = component.__name__
    build.__doc__ = f"Gradio 2/3's legacy constructor, building a `gr.{component.__name__}`."
    return build


def _inputs_module() -> types.ModuleType:
    module = types.ModuleType("gradio.inputs", "Gradio 3's deprecated input components, mapped to components.")
    specs = {
        "Textbox": (gr.Textbox, ("lines", "placeholder", "default", "numeric", "type", "label"), (), ("numeric",)),
        "Number": (gr.Number, ("default", "label"), (), ()),
        "Slider": (gr.Slider, ("minimum", "maximum", "step", "default", "label"), (), ()),
        "Checkbox": (gr.Checkbox, ("default", "label"), (), ()),
        "CheckboxGroup": (gr.CheckboxGroup, ("choices", "default", "type", "label"), ("value", "index"), ()),
        "Radio": (gr.Radio, ("choices", "type", "default", "label"), ("value", "index"), ()),
        "Dropdown": (gr.Dropdown, ("choices", "type", "default", "label"), ("value", "index"), ()),
        "Image": (gr.Image, ("shape", "image_mode", "invert_colors", "source", "tool", "type", "label"),
                  ("numpy", "pil", "filepath", "file"), ("invert_colors",)),
        "Video": (gr.Video, ("type", "source", "label"), (), ()),
        "Audio": (gr.Audio, ("source", "type", "label"), ("numpy", "filepath"), ()),
        "File": (gr.File, ("file_count", "type", "label", "keep_filename"), ("file", "binary", "bytes", "filepath"),
                 ("keep_filename",)),
        "Dataframe": (gr.Dataframe, ("headers", "row_count", "col_count", "datatype", "col_width", "default", "type",
                                     "label"), ("pandas", "numpy", "array"), ()),
        "State": (gr.State, ("label", "default"), (), ("label",)),
        "Model3D": (gr.Model3D, ("label",), (), ()),
    }
    for name, (component, positional, kinds, drop) in specs.items():
        setattr(module, name, _legacy_factory(component, positional, kinds, drop))
    module.Image3D = module.Model3D
    return module


def _outputs_module() -> types.ModuleType:
    module = types.ModuleType("gradio.outputs", "Gradio 3's deprecated output components, mapped to components.")
    specs = {
        "Textbox": (gr.Textbox, ("type", "label"), (), ()),
        "Image": (gr.Image, ("type", "labeled_segments", "label"), ("numpy", "pil", "filepath"), ("labeled_segments",)),
        "Video": (gr.Video, ("type", "label"), (), ()),
        "Audio": (gr.Audio, ("type", "label"), ("numpy", "filepath"), ()),
        "File": (gr.File, ("label",), (), ()),
        "Dataframe": (gr.Dataframe, ("headers", "max_rows", "max_cols", "overflow_row_behaviour", "type", "label"),
                      ("pandas", "numpy", "array"), ()),
        "Label": (gr.Label, ("num_top_classes", "type", "label"), (), ()),
        "HighlightedText": (gr.HighlightedText, ("color_map", "label", "show_legend"), (), ()),
        "JSON": (gr.JSON, ("label",), (), ()),
        "HTML": (gr.HTML, ("label",), (), ()),
        "Chatbot": (gr.Chatbot, ("label",), (), ()),
        "State": (gr.State, ("label",), (), ("label",)),
        "Model3D": (gr.Model3D, ("clear_color", "label"), (), ()),
    }
    for name, (component, positional, kinds, drop) in specs.items():
        setattr(module, name, _legacy_factory(component, positional, kinds, drop))
    module.Image3D = module.Model3D
    return module


# --- modules.ui_components -----------------------------------------------------------------------------------------

def _ui_components_module() -> types.ModuleType:
    module = types.ModuleType("modules.ui_components")

    class FormComponent:
        def get_expected_parent(self):
            return gr.components.Form

    class ToolButton(gr.Button):
        is_template = True

        def __init__(self, *args, **kwargs):
            classes = kwargs.pop("elem_classes", [])
            kwargs.setdefault("size", "sm")
            kwargs.setdefault("min_width", 40)
            super().__init__(*args, elem_classes=["tool", *classes], **kwargs)

    class FormRow(gr.Row):
        is_template = True

    class FormColumn(gr.Column):
        is_template = True

    class FormGroup(gr.Group):
        is_template = True

    class DropdownMulti(gr.Dropdown):
        is_template = True

        def __init__(self, **kwargs):
            super().__init__(multiselect=True, **kwargs)

    class InputAccordion(gr.Checkbox):
        """A1111's accordion whose open state is a checkbox value; here an accordion holding a checkbox."""

        is_template = True

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


# --- install -------------------------------------------------------------------------------------------------------

def install() -> None:
    """Patch gradio once per process (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    Component.__init__ = _hooked_init(Component.__init__)

    setup = events.EventListener._setup
    events.EventListener._setup = staticmethod(lambda *a, **k: _legacy_listener(setup(*a, **k)))
    events.on = gr.on = _legacy_listener(events.on)

    write_stub = component_meta.create_or_modify_pyi

    def create_or_modify_pyi(component_class, class_name, events):
        """Gradio writes a .pyi beside every component class's file: not into extension folders (their git
        checkouts), and a class whose source can't be read (exec'd, made with type()) must still be created."""
        if _is_gradio_class(component_class):
            write_stub(component_class, class_name, events)

    component_meta.create_or_modify_pyi = create_or_modify_pyi
    meta_new = ComponentMeta.__new__

    def __new__(mcs, name, bases, attrs):
        cls = meta_new(mcs, name, bases, attrs)
        _adapt_class(cls)
        return cls

    ComponentMeta.__new__ = staticmethod(__new__)
    gr.Image.__new__ = staticmethod(_image_new)
    for cls in [Block, *_all_subclasses(Block)]:
        if isinstance(cls, ComponentMeta):
            _adapt_class(cls)
        else:
            _patch_listeners(cls)
    Block.style = _style
    Block.get_config = _get_config
    _patch_file(gr.File)
    _patch_file(gr.UploadButton)

    gr.components.IOComponent = Component
    if not hasattr(gr, "Box"):
        gr.Box = gr.Group
    for name, build in (("inputs", _inputs_module), ("outputs", _outputs_module)):
        module = sys.modules.setdefault(f"gradio.{name}", build())
        setattr(gr, name, module)
    sys.modules.setdefault("modules.ui_components", _ui_components_module())
    import modules

    modules.ui_components = sys.modules["modules.ui_components"]

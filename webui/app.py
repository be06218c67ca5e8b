"""The Gradio app: quick-settings bar, the tabs, and mounting on the server's FastAPI app.

UI code only: every action calls the engine (`modules/`), which holds all generation logic.
"""
from __future__ import annotations

import html
import json
import logging
import os
import re
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from modules import script_callbacks, scripts  # noqa: E402
from modules.engine import Engine  # noqa: E402
from webui import gradio_compat, extensions_tab, generation_tabs, history_tab, models_tab, other_tabs, train_tab  # noqa: E402,E501
from webui import deferred_app, script_ui  # noqa: E402
from webui import frontend_fixes  # noqa: E402
from webui.runner import USER_ERRORS, error_html  # noqa: E402
from webui.ui_config import UiConfig  # noqa: E402

log = logging.getLogger(__name__)
ASSETS = Path(__file__).parent / "assets"

CTRL_ENTER_JS = """
<script>
document.addEventListener('keydown', (e) => {
  if (!(e.key === 'Enter' && (e.ctrlKey || e.metaKey))) return;
  const tabs = ['txt2img', 'img2img'];
  for (const t of tabs) {
    const btn = document.getElementById(t + '_generate');
    if (btn && btn.offsetParent !== null) { e.preventDefault(); btn.click(); return; }
  }
});
</script>
"""


def _quicksettings(engine: Engine):
    with gr.Row(elem_id="quicksettings", equal_height=True):
        current = engine.settings.get("sd_model_checkpoint", None)
        titles = engine.registry.titles()
        value = current if current in titles else _default_title(engine, titles)
        ckpt = gr.Dropdown(titles, value=value, label="Stable Diffusion checkpoint",
                           elem_id="setting_sd_model_checkpoint", scale=4)
        refresh = gr.Button("🔄", elem_id="refresh_sd_model_checkpoint", size="sm", min_width=40, scale=0)
        vae = gr.Dropdown(engine.models.vae_choices(), value=engine.settings.get("sd_vae", "Automatic"),
                          label="SD VAE", elem_id="setting_sd_vae", scale=2)
        parts = gr.Dropdown(engine.models.part_choices(), value=_picked_parts(engine), multiselect=True,
                            label="VAE / Text Encoder", elem_id="setting_forge_additional_modules", scale=3,
                            info="Flux/SD3: the parts a checkpoint lacks (none: found in models/text_encoder, "
                                 "models/VAE)")
        clip = gr.Slider(1, 12, value=engine.settings.get("CLIP_stop_at_last_layers", 1), step=1, label="Clip skip",
                         elem_id="setting_CLIP_stop_at_last_layers", scale=2)
    listed = _listed_quicksettings(engine)
    memory = _memory_quicksettings(engine)
    status = gr.HTML(elem_id="quicksettings_status")

    def switch(title, progress=gr.Progress()):
        if not title:
            return gr.update(), ""
        progress(0.1, desc=f"Loading {title}")
        try:
            with engine.queue.turn():  # never swap the model under a running generation
                model = engine.models.select(title)
        except USER_ERRORS as e:
            return gr.update(), error_html(f"Could not load {title}: {e}")
        # a file hashed for the first time by this load has a new title ("name [hash]"): the choices change too
        return (gr.update(choices=engine.registry.titles(), value=model.title),
                f"<div class='sd-note'>Loaded {html.escape(model.title)}</div>")

    def set_option(name):
        def apply(value):
            try:
                engine.settings.set(name, other_tabs.stored_value(name, value))
                engine.settings.save()
            except (ValueError, OSError) as e:
                return error_html(str(e))
            return ""
        return apply

    def do_refresh():
        engine.registry.refresh()
        return (gr.update(choices=engine.registry.titles()), gr.update(choices=engine.models.vae_choices()),
                gr.update(choices=engine.models.part_choices()))

    # the engine's job queue orders model work; a limit in Gradio's "generate" group would hold back every click
    ckpt.input(switch, ckpt, [ckpt, status], concurrency_id="generate", concurrency_limit=None, show_progress="full")
    vae.input(set_option("sd_vae"), vae, status, queue=False)
    clip.release(set_option("CLIP_stop_at_last_layers"), clip, status, queue=False)
    parts.input(set_option("forge_additional_modules"), parts, status, queue=False)
    refresh.click(do_refresh, None, [ckpt, vae, parts], queue=False)
    for name, control in {**memory, **listed}.items():
        event = control.release if isinstance(control, gr.Slider) else control.input
        event(set_option(name), control, status, queue=False)
    return ckpt


def _listed_quicksettings(engine: Engine) -> dict:
    """The fields for the other settings A1111's "Quicksettings list" names (e.g. `sd_vae_decode_method`,
    `img2img_color_correction`), in a row of their own under the bar, each saved as soon as it changes, as A1111's
    bar does."""
    names = other_tabs.quick_settings(engine.settings)[len(other_tabs.FIXED_QUICK_SETTINGS):]
    fields = {}
    if not names:
        return fields
    with gr.Row(elem_id="quicksettings_listed", equal_height=True):
        for name in names:
            try:
                field = other_tabs.quick_setting_component(engine, name)
            except Exception as e:  # noqa: BLE001 - one extension's bad setting must not stop the page
                log.warning("quicksettings: %s: %s", name, e)
                continue
            if field is not None:
                fields[name] = field
    return fields


def _memory_quicksettings(engine: Engine) -> dict:
    """Forge's memory controls under the checkpoint bar: Diffusion in Low Bits, Swap Method, Swap Location and
    GPU Weights, each the setting of the same name (the next job plans with them)."""
    from modules.settings import OPTIONS

    def choices(name):
        return list(OPTIONS[name].get_choices() or [])

    total_mb = 16384
    if engine.memory is not None and engine.memory.on_gpu:
        import torch

        total_mb = int(torch.cuda.get_device_properties(engine.memory.device).total_memory >> 20)
    get = engine.settings.get
    with gr.Row(elem_id="quicksettings_memory", equal_height=True):
        controls = {
            "forge_unet_storage_dtype": gr.Dropdown(
                choices("forge_unet_storage_dtype"), value=get("forge_unet_storage_dtype", "Automatic"),
                label="Diffusion in Low Bits", elem_id="setting_forge_unet_storage_dtype", scale=2),
            "forge_async_loading": gr.Radio(
                choices("forge_async_loading"), value=get("forge_async_loading", "Queue"), label="Swap Method",
                elem_id="setting_forge_async_loading", scale=1),
            "forge_pin_shared_memory": gr.Radio(
                choices("forge_pin_shared_memory"), value=get("forge_pin_shared_memory", "CPU"),
                label="Swap Location", elem_id="setting_forge_pin_shared_memory", scale=1),
            "gpu_weights_mb": gr.Slider(
                0, total_mb, value=min(int(get("gpu_weights_mb", 0) or 0), total_mb), step=64,
                label="GPU Weights (MB, 0: automatic)", elem_id="setting_gpu_weights_mb", scale=3),
        }
    return controls


def _picked_parts(engine: Engine) -> list[str]:
    choices = set(engine.models.part_choices())
    return [p for p in engine.settings.get("forge_additional_modules", []) or [] if p in choices]


def _default_title(engine: Engine, titles: list[str]) -> str | None:
    """The checkpoint a generation would use now (a real one before the bundled demo model)."""
    try:
        return engine.models.resolve().title
    except LookupError:
        return titles[0] if titles else None


def _demo_note_html(note: dict | None) -> str:
    if not note:
        return ""
    return f"<div class='sd-note' id='demo_model_note'>ℹ️ {html.escape(note.get('description', 'demo model'))}</div>"


def _family_cfg(engine: Engine, title: str | None) -> float | None:
    """The CFG scale a family runs at when it is not the UI's (Flux: 1, guidance is distilled into the model)."""
    try:
        info = engine.models.resolve(title or None)
    except LookupError:
        return None
    return 1.0 if (info.family or "").startswith("Flux") else None


def _wire_demo_defaults(engine: Engine, cfg: UiConfig, ckpt, note, t2i, i2i, demo: gr.Blocks) -> None:
    """With the bundled demo model selected, say what it is and use its native size and CFG; back to the UI
    defaults when a real checkpoint replaces it at the demo's size. A Flux checkpoint sets CFG Scale 1 (as Forge's
    Flux preset does; its guidance is the Distilled CFG Scale), and leaving Flux at 1 brings the UI's CFG back."""
    tabs = [(dict(c.fields), c.tab) for c in (t2i, i2i)]
    inputs = [fields[k] for fields, _ in tabs for k in ("width", "height", "cfg_scale")]
    outputs = [note] + inputs

    demo_sizes, family_scales = set(), set()

    def apply(title, *current):
        info = engine.models.demo_note(title or None)
        if info:
            size, scale = int(info.get("default_size", 64)), float(info.get("default_cfg", 5.0))
            demo_sizes.add(size)
            return [_demo_note_html(info)] + [size, size, scale] * len(tabs)
        family_scale = _family_cfg(engine, title)
        if family_scale is not None:
            family_scales.add(family_scale)
        updates = [_demo_note_html(None)]
        for i, (_, tab) in enumerate(tabs):
            w, h, scale = current[3 * i], current[3 * i + 1], current[3 * i + 2]
            at_demo_size = w == h and w in demo_sizes
            if family_scale is not None:
                new_scale = family_scale
            elif scale in family_scales:
                new_scale = cfg.value(f"{tab}/CFG Scale", 7.0)
            else:
                new_scale = gr.update()
            updates += [cfg.value(f"{tab}/Width", 512) if at_demo_size else gr.update(),
                        cfg.value(f"{tab}/Height", 512) if at_demo_size else gr.update(), new_scale]
        return updates

    ckpt.change(apply, [ckpt] + inputs, outputs, queue=False, show_progress="hidden")
    demo.load(apply, [ckpt] + inputs, outputs, queue=False, show_progress="hidden")


def _wire_model_sliders(engine: Engine, ckpt, t2i, i2i, demo: gr.Blocks) -> None:
    """Sliders that only mean something for some checkpoints follow the one selected: img2img's Image CFG Scale for
    InstructPix2Pix (A1111's rule), Distilled CFG Scale for Flux.1 models with built-in guidance (Forge's; not
    schnell; a checkpoint whose family is unknown keeps it)."""
    image_cfg = dict(i2i.fields)["image_cfg_scale"]
    distilled = [dict(c.fields)["distilled_cfg_scale"] for c in (t2i, i2i)]

    def show(title):
        try:
            family = engine.models.resolve(title or None).family
        except LookupError:
            family = None
        guided = family is None or (family.startswith("Flux") and "schnell" not in family)
        return [gr.update(visible="InstructPix2Pix" in (family or ""))] + [gr.update(visible=guided)] * 2

    outputs = [image_cfg, *distilled]
    ckpt.change(show, ckpt, outputs, queue=False, show_progress="hidden")
    demo.load(show, ckpt, outputs, queue=False, show_progress="hidden")


def create_ui(engine: Engine, args=None) -> gr.Blocks:
    """The page, built without the throwaway apps Gradio would make on the way (webui/deferred_app.py): the app
    that serves it is made when `mount` mounts it."""
    with deferred_app.app_made_at_mount():
        return _build_page(engine, args)


def _build_page(engine: Engine, args) -> gr.Blocks:
    cfg = UiConfig(engine.paths.ui_config_file)
    gradio_compat.install()
    script_callbacks.before_ui_callback()
    extension_tabs = script_callbacks.ui_tabs_with_sources()
    with gr.Blocks(title="Stable Diffusion", analytics_enabled=False, fill_width=True) as demo:
        demo.queue(default_concurrency_limit=1, max_size=64)
        ckpt = _quicksettings(engine)
        note = gr.HTML(_demo_note_html(engine.models.demo_note()), elem_id="quicksettings_demo_note")
        with gr.Tabs(elem_id="tabs") as tabs:
            built, items = _build_tabs(engine, args, ckpt, extension_tabs)
        t2i, i2i, extras, png = built["txt2img"], built["img2img"], built["extras"], built["pnginfo"]
        history, settings = built.get("history"), built["settings"]
        gr.HTML(footer_html(args), elem_id="footer")
        _wire_sending(engine, t2i, i2i, extras, png, tabs)
        _wire_saving(engine, t2i, i2i)
        if history is not None:
            _wire_history_sending(engine, history, t2i, i2i, extras, tabs)
        _wire_demo_defaults(engine, cfg, ckpt, note, t2i, i2i, demo)
        _wire_model_sliders(engine, ckpt, t2i, i2i, demo)
        for controls in (t2i, i2i):
            generation_tabs.wire_reattach(controls, engine, demo)
        demo.load(lambda: _current_checkpoint(engine), None, ckpt, queue=False, show_progress="hidden")
        _apply_ui_config(cfg, engine, tabs, [(items[i], i) for i in items if i not in _NO_UI_CONFIG_TABS])
        other_tabs.wire_defaults(settings["defaults"], cfg)
    return demo


def _apply_ui_config(cfg: UiConfig, engine: Engine, tabs: gr.Tabs, tab_items: list) -> None:
    """ui-config.json over the built page, as A1111 applies it: each tab's controls under the tab's id (not the
    Settings and Extensions tabs', as in A1111), and the tab the page opens on; then the scripts' defaults for API
    requests follow the values applied. The file gets the keys it lacks."""
    for item, path in tab_items:
        cfg.apply_block(item, path)
    cfg.apply_tabs(tabs)
    if engine.scripts is not None:
        for runner in (engine.scripts.txt2img, engine.scripts.img2img):
            script_ui.update_defaults(runner)
    cfg.save()


def footer_html(args) -> str:
    """A1111's footer: "API" opens the HTTP API's documentation (/docs, with --api; else the flag to start with),
    then the versions in use. Gradio's own "Use via API" page is not shown: it describes only events someone named,
    and the UI's are not meant as an API."""
    from webui.a1111.ui import versions_html

    if getattr(args, "api", False) or getattr(args, "nowebui", False):
        api = '<a href="./docs" target="_blank">API</a>'
    else:
        api = '<span title="start with --api to serve /sdapi/v1 and its documentation at /docs">API: off</span>'
    return f'<div class="sd-footer">{api}</div><div class="versions">{versions_html()}</div>'


@contextmanager
def _current_scripts(engine: Engine, mode: str):
    """While a generation tab is built, its scripts get the component hooks (A1111's scripts_current)."""
    previous = scripts.scripts_current
    scripts.scripts_current = engine.scripts.for_mode(mode) if engine.scripts is not None else None
    try:
        yield
    finally:
        scripts.scripts_current = previous


# ui-config.json keys are not applied under these tabs' ids (A1111 keeps settings and extensions out of it)
_NO_UI_CONFIG_TABS = ("pnginfo", "history", "models", "settings", "extensions")


def _build_tabs(engine: Engine, args, ckpt, extension_tabs: list) -> tuple[dict, dict]:
    """The page's tabs in A1111's "UI tab order" (listed ones first, the rest as built), those in "Hidden UI
    tabs" left hidden (built all the same: the send-to buttons and ui-config.json still reach their controls;
    Settings is never hidden, so the setting can be taken back). Returns (what each tab's builder gave, the tab
    items), both by tab id."""
    hide_dirs = bool(getattr(args, "hide_ui_dir_config", False))  # A1111: no folder boxes for other computers

    def generation(mode, build):
        def tab(_item):
            with _current_scripts(engine, mode), gr.Column(elem_id=mode):
                return build(engine, hide_dirs)
        return tab

    def history(item):
        built = history_tab.build_history(engine)
        _, filters, outs = built["load"]
        item.select(lambda *a: history_tab.page(engine, *a, 0), filters, outs, show_progress="hidden")
        return built

    specs = [("txt2img", "txt2img", generation("txt2img", generation_tabs.build_txt2img), None),
             ("img2img", "img2img", generation("img2img", generation_tabs.build_img2img), None),
             ("Extras", "extras", lambda _: other_tabs.build_extras(engine), None),
             ("PNG Info", "pnginfo", lambda _: other_tabs.build_pnginfo(), None)]
    if engine.history is not None:
        specs.append(("History", "history", history, None))
    specs += [("Models", "models", lambda _: models_tab.build_models(engine, ckpt), None),
              ("Train", "train", lambda _: train_tab.build_train(engine), None)]
    for item, source in extension_tabs:  # ((blocks, title, elem_id), the file that registered it)
        if isinstance(item, (list, tuple)) and len(item) > 2:
            specs.append((str(item[1]), str(item[2]), lambda _, blocks=item[0]: blocks.render(), source))
        else:
            script_callbacks.report_error(f"tab {item!r}", source, ValueError("on_ui_tabs must give "
                                                                              "(blocks, title, elem_id)"))
    specs += [("Settings", "settings", lambda item: other_tabs.build_settings(engine, args, item), None),
              ("Extensions", "extensions", lambda item: extensions_tab.build_extensions(engine, args, item), None)]

    order = {label: i for i, label in enumerate(engine.settings.get("ui_tab_order", []) or [])}
    hidden = set(engine.settings.get("hidden_tabs", []) or []) - {"Settings"}
    built, items = {}, {}
    for label, tab_id, build, source in sorted(specs, key=lambda spec: order.get(spec[0], len(order))):
        try:
            with gr.Tab(label, id=tab_id, elem_id=f"tab_{tab_id}", visible=label not in hidden) as item:
                built[tab_id] = build(item)
            items[tab_id] = item
        except Exception as e:  # noqa: BLE001 - a broken extension tab must not stop the page
            if source is None:
                raise
            script_callbacks.report_error(f"tab {label!r}", source, e)
    return built, items


def _current_checkpoint(engine: Engine):
    """A page opened later shows the checkpoint in use now, not the one at start-up."""
    model = engine.models.current
    titles = engine.registry.titles()
    title = model.title if model else engine.settings.get("sd_model_checkpoint", None)
    info = engine.registry.get(title) if title else None
    return gr.update(choices=titles, value=info.title if info else (titles[0] if titles else None))


def _selected_image(images, index):
    if not images:
        return None
    index = index if isinstance(index, int) and 0 <= index < len(images) else 0
    item = images[index]
    path = item[0] if isinstance(item, (list, tuple)) else item
    if isinstance(path, dict):
        path = path.get("image", {}).get("path") if isinstance(path.get("image"), dict) else path.get("image")
    from PIL import Image

    if isinstance(path, Image.Image):
        return path
    with Image.open(path) as im:
        im.load()
        return im.copy()


def sent_updates(settings, target, text: str, image) -> list:
    """What a "send to" button puts into the target tab's controls: the picture's parameters, with A1111's
    settings "Send seed when sending prompt or image to other interface" (off: the target keeps its seeds) and
    "Send size when sending prompt or image to another interface" (on: width and height become the sent
    picture's own, a hires picture's full size; off: the target keeps its size)."""
    updates = generation_tabs.paste_updates(target, text)
    send_seed, send_size = settings.get("send_seed", True), settings.get("send_size", True)
    for i, (name, _) in enumerate(target.fields):
        if name in ("seed", "subseed") and not send_seed:
            updates[i] = gr.update()
        elif name in ("width", "height"):
            if not send_size:
                updates[i] = gr.update()
            elif image is not None:
                updates[i] = gr.update(value=image.width if name == "width" else image.height)
    return updates


def _wire_sending(engine: Engine, t2i, i2i, extras, png, tabs):
    """The "send to" buttons: the selected image (and its parameters) go to another tab, which is then shown."""

    def params_updates(target, infotexts, index, image):
        text = infotexts[index] if infotexts and index < len(infotexts) else ""
        return sent_updates(engine.settings, target, text, image)

    def to_img2img(images, infotexts, index):
        image = _selected_image(images, index)
        return [image, gr.Tabs(selected="img2img"), gr.Tabs(selected="img2img_tab"),
                "img2img"] + params_updates(i2i, infotexts, index, image)

    def to_inpaint(images, infotexts, index):
        image = _selected_image(images, index)
        editor = {"background": image, "layers": [], "composite": None} if image is not None else None
        return [editor, gr.Tabs(selected="img2img"), gr.Tabs(selected="inpaint_tab"),
                "inpaint"] + params_updates(i2i, infotexts, index, image)

    def to_extras(images, index):
        return _selected_image(images, index), gr.Tabs(selected="extras")

    subtabs, mode = i2i.extra["subtabs"], i2i.extra["mode"]
    for src in (t2i, i2i):
        ins = [src.gallery, src.infotexts, src.selected]
        src.extra["send_img2img"].click(to_img2img, ins, [i2i.extra["init"], tabs, subtabs, mode] + i2i.components)
        src.extra["send_inpaint"].click(to_inpaint, ins, [i2i.extra["inpaint"], tabs, subtabs, mode] + i2i.components)
        src.extra["send_extras"].click(to_extras, [src.gallery, src.selected], [extras["image"], tabs])

    png["to_txt2img"].click(lambda text: [gr.Tabs(selected="txt2img")] + generation_tabs.paste_updates(t2i, text),
                            png["text"], [tabs] + t2i.components)
    png["to_img2img"].click(lambda image, text: [gr.Tabs(selected="img2img"), image.convert("RGB") if image else None]
                            + generation_tabs.paste_updates(i2i, text),
                            [png["image"], png["text"]], [tabs, i2i.extra["init"]] + i2i.components)


def _wire_saving(engine: Engine, *tabs) -> None:
    """💾 Save and 🗃️ Zip under each gallery (modules/save_button.py): the files offered for download beside the
    gallery, "Saved: NAME" under the parameters (A1111's html_log)."""
    from modules import save_button

    def run(make_zip):
        def click(gallery, infotexts, index):
            pictures = [_selected_image(gallery, i) for i in range(len(gallery or []))]
            try:
                saved = save_button.save(pictures, list(infotexts or []), index if isinstance(index, int) else -1,
                                         getattr(infotexts, "first_image", 0), engine.settings, engine.paths,
                                         make_zip)
            except (ValueError, OSError) as e:
                return gr.update(), error_html(str(e))
            return (gr.update(value=[str(p) for p in saved.files], visible=True),
                    f"<div class='sd-note'>Saved: {html.escape(saved.names[0])}</div>")
        return click

    for c in tabs:
        for button, make_zip in ((c.extra["save"], False), (c.extra["zip"], True)):
            button.click(run(make_zip), [c.gallery, c.infotexts, c.selected], [c.extra["download"], c.extra["log"]],
                         queue=False, show_progress="hidden")


def _wire_history_sending(engine: Engine, history: dict, t2i, i2i, extras, tabs) -> None:
    """History's "send to": the picked picture's parameters (and the picture, for img2img, inpaint and Extras)
    into that tab, as the generation tabs' own buttons do."""
    subtabs, mode = i2i.extra["subtabs"], i2i.extra["mode"]
    ins = [history["nav"], history["text"]]

    def to_img2img(nav, text):
        picture = history["picture"](nav)
        return [picture, gr.Tabs(selected="img2img"), gr.Tabs(selected="img2img_tab"),
                "img2img"] + sent_updates(engine.settings, i2i, text, picture)

    def to_inpaint(nav, text):
        picture = history["picture"](nav)
        editor = {"background": picture, "layers": [], "composite": None} if picture is not None else None
        return [editor, gr.Tabs(selected="img2img"), gr.Tabs(selected="inpaint_tab"),
                "inpaint"] + sent_updates(engine.settings, i2i, text, picture)

    history["to_txt2img"].click(lambda text: [gr.Tabs(selected="txt2img")] + sent_updates(engine.settings, t2i, text,
                                                                                           None),
                                history["text"], [tabs] + t2i.components)
    history["to_img2img"].click(to_img2img, ins, [i2i.extra["init"], tabs, subtabs, mode] + i2i.components)
    history["to_inpaint"].click(to_inpaint, ins, [i2i.extra["inpaint"], tabs, subtabs, mode] + i2i.components)
    history["to_extras"].click(lambda nav: (history["picture"](nav), gr.Tabs(selected="extras")), history["nav"],
                               [extras["image"], tabs])

    def reuse_seed(nav):  # A1111's ♻️: the picked picture's seed into txt2img, which is then shown
        seed = history["seed"](nav)
        if seed is None:
            return gr.update(), gr.update(), "<div class='sd-note'>Pick a picture (with a seed) first.</div>"
        return seed, gr.Tabs(selected="txt2img"), ""

    history["reuse_seed"].click(reuse_seed, history["nav"], [t2i.seed, tabs, history["status"]], **history_tab.LANE)


def auth_pairs(args) -> list[tuple[str, str]] | None:
    """The UI's logins as Gradio takes them, [(user, pass), ...], from --gradio-auth, --gradio-auth-path, --auth and
    --auth-path (modules/auth.py reads all of them); a plain `user:pass,...` string is accepted too."""
    from modules import auth

    if args is None or isinstance(args, str):
        return auth.parse_logins(args or "") or None
    return list(auth.ui_logins(args).items()) or None


def mount(app, engine: Engine, args, runtime=None) -> None:
    """Mount the UI at `/` of the server's FastAPI app (after the API routes, which must come first).

    Extensions' `on_app_started(demo, app)` run before the mount, so the routes they add are matched before the
    UI's catch-all; so is A1111's `/file=` route (webui/file_route.py). The page's head (our globals, the
    extensions' javascript inline in load order, their style.css linked as `file=<path>?<mtime>`) is rebuilt on
    every page load, so an edited extension file or a changed setting shows after a reload, as in A1111."""
    from webui import file_route, internal_routes, queue_polling

    demo = create_ui(engine, args)
    script_callbacks.app_started_callback(demo, app)
    mounted = {}
    file_route.add(app, engine.paths, engine.settings, gradio_app=lambda: mounted.get("ui"))
    internal_routes.add(app, engine, gradio_app=lambda: mounted.get("ui"))

    def head() -> str:
        scripts = runtime.javascript_files() if runtime is not None else []
        text = (CTRL_ENTER_JS + page_globals(engine, len(scripts)) + _asset_script("queue.js")
                + _asset_script("history_keys.js"))
        if runtime is not None:
            text += "".join(f'\n<link rel="stylesheet" href="{html.escape(file_route.web_path(path, engine.paths))}">'
                            for path in runtime.css_files())
        text += "".join(f"\n<script>/* {html.escape(path.name)} */\n{_script_text(_read(path))}\n</script>"
                        for path in scripts)
        return text

    logins = auth_pairs(args)
    gr.mount_gradio_app(app, demo, path="/", auth=logins,
                        css=(ASSETS / "style.css").read_text(encoding="utf-8"), head=head(),
                        footer_links=["settings"], run_history=False, show_error=True)
    queue_polling.calm_when_idle(demo)
    mounted["ui"] = next((r.app for r in reversed(app.routes) if getattr(r, "app", None) is not None
                          and getattr(r.app, "get_blocks", None) is not None), None)
    app.add_middleware(_FreshHead, demo=demo, head=head)
    app.add_middleware(_ImmutableAssets)
    if logins:
        app.add_middleware(_LoggedOutPage, gradio_app=lambda: mounted.get("ui"))


class _FreshHead:
    """ASGI middleware: before Gradio answers the page (`/`) or its config (`/config`), the page's head is rebuilt
    (Gradio keeps the config it computed at start-up and puts its `head` into every page)."""

    def __init__(self, app, demo: gr.Blocks, head):
        self.app, self.demo, self.head = app, demo, head

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope.get("method") in ("GET", "HEAD"):
            path = _app_path(scope)
            if path in ("/", "", "/config", "/config/") and isinstance(getattr(self.demo, "config", None), dict):
                try:
                    self.demo.head = self.demo.config["head"] = self.head()
                except Exception:  # noqa: BLE001 - an unreadable extension file must not stop the page
                    log.exception("could not rebuild the page head")
        await self.app(scope, receive, send)


def _app_path(scope) -> str:
    """The request's path inside the app (without the `root_path` a proxy or `--subpath` puts before it)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


class _ImmutableAssets:
    """ASGI middleware: Gradio's front-end bundles (`/assets/<name>-<hash>.js|css`) carry their content hash in their
    name, so a browser may keep them for good; Gradio sends no Cache-Control, and every page load re-validated
    ~120 scripts through Python (about a fifth of a page load's CPU on 2 cores). A bundle with a known bug is
    answered with its fixed text (webui/frontend_fixes.py)."""

    _HASHED = re.compile(r"^/assets/([^/]+-[A-Za-z0-9_-]{8}\.(?:js|css))$")
    _FOREVER = (b"cache-control", b"public, max-age=31536000, immutable")

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        match = self._HASHED.match(_app_path(scope)) if scope["type"] == "http" else None
        if scope.get("method") not in ("GET", "HEAD") or not match:
            await self.app(scope, receive, send)
            return
        fixed = frontend_fixes.fixed_asset(match.group(1))
        if fixed is not None:
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/javascript; charset=utf-8"), (b"content-length", str(len(fixed)).encode()),
                self._FOREVER]})
            await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else fixed})
            return

        async def cached(message):
            if message["type"] == "http.response.start" and message.get("status") == 200:
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"cache-control"]
                message = {**message, "headers": headers + [self._FOREVER]}
            await send(message)

        await self.app(scope, receive, cached)


_API_INFO = re.compile(rb"window\.gradio_api_info = .*?;</script>", re.S)
_NO_API_INFO = b'window.gradio_api_info = {"named_endpoints":{},"unnamed_endpoints":{}};</script>'


def logged_in(ui, scope_or_request) -> bool:
    """Whether the request holds one of the mounted Gradio app's login tokens (always true without UI auth)."""
    if ui is None or getattr(ui, "auth", None) is None:
        return True
    cookies = getattr(scope_or_request, "cookies", None)
    if cookies is None:
        from starlette.requests import HTTPConnection

        cookies = HTTPConnection(scope_or_request).cookies
    cookie_id = getattr(ui, "cookie_id", "")
    token = cookies.get(f"access-token-{cookie_id}") or cookies.get(f"access-token-unsecure-{cookie_id}")
    return token is not None and token in getattr(ui, "tokens", {})


class _LoggedOutPage:
    """ASGI middleware: with a UI login, the page a logged-out client gets (Gradio's login form) carries no API
    description. Gradio 6 leaves the config out of that page but still embeds `window.gradio_api_info`, which
    lists every event's parameters with their defaults: checkpoint titles, option values, output folders."""

    def __init__(self, app, gradio_app):
        self.app, self.gradio_app = app, gradio_app

    async def __call__(self, scope, receive, send):
        if (scope["type"] != "http" or scope.get("method") not in ("GET", "HEAD")
                or scope.get("path", "") not in ("/", "") or logged_in(self.gradio_app(), scope)):
            await self.app(scope, receive, send)
            return
        # an uncompressed answer, so that it can be edited
        scope = dict(scope, headers=[(k, v) for k, v in scope.get("headers", []) if k.lower() != b"accept-encoding"])
        start, body = {}, bytearray()

        async def capture(message):
            if message["type"] == "http.response.start":
                start.update(message)
                return
            if message["type"] != "http.response.body":
                await send(message)
                return
            body.extend(message.get("body", b""))
            if message.get("more_body", False):
                return
            data = _API_INFO.sub(lambda m: _NO_API_INFO, bytes(body))
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            if scope.get("method") == "GET":
                headers.append((b"content-length", str(len(data)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": data})

        await self.app(scope, receive, capture)


def _script_text(text: str) -> str:
    """An inline script's text that cannot end its own <script> element early."""
    return text.replace("</script", "<\\/script")


def _read(path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        log.error("could not read %s: %s", path, e)
        return ""


def _asset_script(name: str) -> str:
    """One of our own scripts in webui/assets/, inline in the page's head."""
    return f"\n<script>/* {name} */\n{_script_text(_read(ASSETS / name))}\n</script>"


def page_globals(engine: Engine, extension_scripts: int = 0) -> str:
    """A1111's page-side globals extension scripts call: gradioApp(), onUiLoaded/onUiUpdate/…, opts.
    `extension_scripts`: how many extension scripts the page carries (with none, the tabs A1111 builds at load are
    left to be built when shown)."""
    options = {}
    for name, value in engine.settings.as_dict().items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        options[name] = value
    script = (ASSETS / "a1111_globals.js").read_text(encoding="utf-8")
    script = script.replace("__OPTS__", json.dumps(options).replace("</", "<\\/"))
    script = script.replace("__EXTENSION_SCRIPTS__", str(int(extension_scripts)))
    return f"\n<script>\n{script}\n</script>"

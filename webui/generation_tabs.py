"""The txt2img and img2img tabs: A1111's controls and elem_ids, wired to the engine's typed requests.

Every control that maps to a request field is listed in `Controls.fields` as (A1111 field name, component), so
building a request, pasting an infotext (↙) and sending parameters between tabs all use one table.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import gradio as gr
from PIL import Image

from modules import infotext as infotext_mod
from modules import masking, outpaint, prompt_comments, script_callbacks
from modules.models.tokenizer import build_clip_tokenizer
from modules.processing import LATENT_UPSCALE_MODES
from modules.request_types import RequestError
from modules.resize import RESIZE_MODES
from modules.sampling import samplers
from webui import controlnet_panel, extra_networks_panel, queue_panel
from webui import script_ui
from webui.runner import guard_image_input, reattach, run_batch_streaming, run_streaming

MASKED_CONTENT = ["fill", "original", "latent noise", "latent nothing"]
INPAINT_AREAS = ["Whole picture", "Only masked"]
MASK_MODES = ["Inpaint masked", "Inpaint not masked"]
# img2img sub-tabs that show the inpaint options (Batch: for its mask folder)
INPAINT_MODES = ("inpaint", "inpaint_sketch", "inpaint_upload", "batch")
_tokenizer = None


def token_count(text: str, strip_comments: bool = False) -> str:
    """A1111's counter: tokens used / capacity of the 75-token chunks needed (comments not counted where the
    setting leaves them out of the generation)."""
    global _tokenizer
    if _tokenizer is None:
        _tokenizer = build_clip_tokenizer()
    if strip_comments:
        text = prompt_comments.strip_comments(text or "")
    n = max(0, len(_tokenizer(text or "", truncation=False).input_ids) - 2)
    return f"{n}/{max(1, math.ceil(n / 75)) * 75}"


@dataclass
class Controls:
    tab: str
    prompt: Any = None
    negative: Any = None
    fields: list[tuple[str, Any]] = field(default_factory=list)
    seed: Any = None
    gallery: Any = None
    infotexts: Any = None
    info: Any = None
    progress: Any = None
    preview: Any = None
    generate: Any = None
    selected: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, component):
        self.fields.append((name, component))
        return component

    @property
    def components(self) -> list:
        return [c for _, c in self.fields]

    def values_to_dict(self, values) -> dict[str, Any]:
        return {name: value for (name, _), value in zip(self.fields, values)}


def _prompt_row(c: Controls, engine):
    tab = c.tab
    with gr.Row(elem_id=f"{tab}_toprow"):
        with gr.Column(scale=6):
            c.prompt = c.add("prompt", gr.Textbox(label="Prompt", lines=3, placeholder="Prompt (Ctrl+Enter to generate)",
                                                  elem_id=f"{tab}_prompt", show_label=False))
            counters = not engine.settings.get("disable_token_counters", False)  # A1111's setting
            counter = gr.HTML(token_count(""), elem_id=f"{tab}_token_counter", elem_classes=["token-counter"],
                              visible=counters)
            c.negative = c.add("negative_prompt", gr.Textbox(label="Negative prompt", lines=2,
                                                             placeholder="Negative prompt", show_label=False,
                                                             elem_id=f"{tab}_neg_prompt"))
            neg_counter = gr.HTML(token_count(""), elem_id=f"{tab}_negative_token_counter",
                                  elem_classes=["token-counter"], visible=counters)
        with gr.Column(scale=1, min_width=180):
            c.generate = gr.Button("Generate", variant="primary", elem_id=f"{tab}_generate")
            with gr.Row():
                c.extra["interrupt"] = gr.Button("Interrupt", elem_id=f"{tab}_interrupt", size="sm")
                c.extra["skip"] = gr.Button("Skip", elem_id=f"{tab}_skip", size="sm")
            with gr.Row():
                c.extra["paste"] = gr.Button("↙️", elem_id=f"{tab}_paste", size="sm")
            c.extra["forever"] = queue_panel.forever_checkbox(tab)
    _styles_row(c, engine)
    def count(text: str) -> str:
        return token_count(text, prompt_comments.enabled(engine.settings.get))

    if counters:  # hidden counters are not kept up to date (A1111's setting saves that work too)
        c.prompt.change(count, c.prompt, counter, show_progress="hidden", queue=False)
        c.negative.change(count, c.negative, neg_counter, show_progress="hidden", queue=False)


def _styles_row(c: Controls, engine):
    """A1111's styles: chosen styles are applied at generation; 📋 writes them into the prompt; 💾 saves one."""
    from modules.styles import PromptStyle

    tab = c.tab
    db = engine.styles
    with gr.Row(elem_id=f"{tab}_styles_row"):
        styles = c.add("styles", gr.Dropdown(db.names(), value=[], multiselect=True, label="Styles",
                                             elem_id=f"{tab}_styles", scale=4))
        apply = gr.Button("📋 Apply", elem_id=f"{tab}_style_apply", size="sm", scale=0, min_width=80)
        name = gr.Textbox(label="New style name", elem_id=f"{tab}_style_name", scale=2, max_lines=1)
        save = gr.Button("💾 Save", elem_id=f"{tab}_style_create", size="sm", scale=0, min_width=80)

    def do_apply(prompt, negative, chosen):
        new_prompt, new_negative = db.apply(prompt or "", negative or "", chosen or [])
        return new_prompt, new_negative, []

    def do_save(title, prompt, negative):
        title = (title or "").strip()
        if not title:
            return gr.update(), gr.update()
        db.save_style(PromptStyle(title, prompt or "", negative or ""))
        return gr.update(choices=db.names()), ""

    apply.click(do_apply, [c.prompt, c.negative, styles], [c.prompt, c.negative, styles], queue=False)
    save.click(do_save, [name, c.prompt, c.negative], [styles, name], queue=False)


def shown_samplers(engine) -> list[str]:
    """The samplers the dropdowns offer: all but those the setting "Hide samplers in user interface" names (A1111's
    `hide_samplers`; the API and pasted infotexts still take them). Hiding every one hides none."""
    hidden = set(engine.settings.get("hide_samplers", []) or [])
    return [n for n in samplers.sampler_names() if n not in hidden] or samplers.sampler_names()


def _sampling_params(c: Controls, engine, is_img2img: bool):
    tab = c.tab
    names = shown_samplers(engine)
    default = samplers.UI_DEFAULT_SAMPLER if samplers.UI_DEFAULT_SAMPLER in names else names[0]
    with gr.Row():
        c.add("sampler_name", gr.Dropdown(names, value=default, label="Sampling method",
                                          elem_id=f"{tab}_sampling"))
        c.add("scheduler", gr.Dropdown(samplers.schedule_type_labels(), value="Automatic", label="Schedule type",
                                       elem_id=f"{tab}_scheduler"))
        c.add("steps", gr.Slider(minimum=1, maximum=150, value=20, step=1,
                                 label="Sampling steps", elem_id=f"{tab}_steps"))
    with gr.Row():
        with gr.Column(scale=4):
            width = c.add("width", gr.Slider(minimum=64, maximum=2048, value=512, step=8, label="Width",
                                             elem_id=f"{tab}_width"))
            height = c.add("height", gr.Slider(minimum=64, maximum=2048, value=512, step=8,
                                               label="Height", elem_id=f"{tab}_height"))
        swap = gr.Button("⇅", elem_id=f"{tab}_res_switch_btn", size="sm", min_width=40, scale=0)
        with gr.Column(scale=2):
            c.add("n_iter", gr.Slider(minimum=1, maximum=100, value=1, step=1, label="Batch count",
                                      elem_id=f"{tab}_batch_count"))
            c.add("batch_size", gr.Slider(minimum=1, maximum=8, value=1, step=1, label="Batch size",
                                          elem_id=f"{tab}_batch_size"))
    swap.click(lambda w, h: (h, w), [width, height], [width, height], queue=False, show_progress="hidden")
    c.add("cfg_scale", gr.Slider(minimum=1.0, maximum=30.0, value=7.0, step=0.5, label="CFG Scale",
                                 elem_id=f"{tab}_cfg_scale"))
    c.add("distilled_cfg_scale", gr.Slider(
        minimum=0.0, maximum=30.0, value=3.5, step=0.1, label="Distilled CFG Scale",
        info="Flux dev only: its built-in guidance. Flux runs real CFG only above CFG Scale 1 (then the negative "
             "prompt is used, at twice the time per step)", elem_id=f"{tab}_distilled_cfg_scale",
        visible=False))  # shown while a Flux checkpoint is selected (webui/app.py)
    if is_img2img:  # A1111 shows it only while an InstructPix2Pix checkpoint is selected (webui/app.py)
        c.add("image_cfg_scale", gr.Slider(minimum=0.0, maximum=3.0, value=1.5, step=0.05,
                                           label="Image CFG Scale", elem_id=f"{tab}_image_cfg_scale", visible=False))
        c.add("denoising_strength", gr.Slider(minimum=0.0, maximum=1.0, value=0.75, step=0.01,
                                              label="Denoising strength", elem_id=f"{tab}_denoising_strength"))
    with gr.Row():
        c.seed = c.add("seed", gr.Number(value=-1, label="Seed", precision=0, elem_id=f"{tab}_seed", scale=4))
        rnd = gr.Button("🎲️", elem_id=f"{tab}_random_seed", size="sm", min_width=40, scale=0)
        reuse = gr.Button("♻️", elem_id=f"{tab}_reuse_seed", size="sm", min_width=40, scale=0)
    rnd.click(lambda: -1, None, c.seed, queue=False, show_progress="hidden")
    c.extra["reuse_seed"] = reuse
    with gr.Accordion("Extra", open=False, elem_id=f"{tab}_subseed_show"):
        with gr.Row():
            c.add("subseed", gr.Number(value=-1, label="Variation seed", precision=0, elem_id=f"{tab}_subseed"))
            c.add("subseed_strength", gr.Slider(minimum=0.0, maximum=1.0, value=0.0, step=0.01,
                                                label="Variation strength",
                                                elem_id=f"{tab}_subseed_strength"))
        with gr.Row():
            c.add("seed_resize_from_w", gr.Slider(minimum=0, maximum=2048, value=0, step=8,
                                                  label="Resize seed from width",
                                                  elem_id=f"{tab}_seed_resize_from_w"))
            c.add("seed_resize_from_h", gr.Slider(minimum=0, maximum=2048, value=0, step=8,
                                                  label="Resize seed from height",
                                                  elem_id=f"{tab}_seed_resize_from_h"))


def _hires(c: Controls, engine):
    tab = c.tab
    upscalers = list(LATENT_UPSCALE_MODES) + [u for u in engine.upscalers.names() if u != "None"]
    with gr.Accordion("Hires. fix", open=False, elem_id=f"{tab}_hr") as accordion:
        enable = c.add("enable_hr", gr.Checkbox(label="Enable hires. fix", value=False, elem_id=f"{tab}_enable_hr"))
        # A1111's ui-config keys: its accordion is the checkbox (`Hires. fix/value` opens it, `/visible` hides it)
        enable.ui_config_label, enable.accordion = "Hires. fix", accordion
        with gr.Row():
            c.add("hr_upscaler", gr.Dropdown(upscalers, value="Latent", label="Upscaler", elem_id=f"{tab}_hr_upscaler"))
            c.add("hr_second_pass_steps", gr.Slider(minimum=0, maximum=150, value=0, step=1,
                                                    label="Hires steps", elem_id=f"{tab}_hires_steps"))
            c.add("denoising_strength", gr.Slider(minimum=0.0, maximum=1.0, value=0.7, step=0.01,
                                                  label="Denoising strength",
                                                  elem_id=f"{tab}_denoising_strength"))
        with gr.Row():
            c.add("hr_scale", gr.Slider(minimum=1.0, maximum=4.0, value=2.0, step=0.05, label="Upscale by",
                                        elem_id=f"{tab}_hr_scale"))
            c.add("hr_resize_x", gr.Slider(minimum=0, maximum=2048, value=0, step=8,
                                           label="Resize width to", elem_id=f"{tab}_hr_resize_x"))
            c.add("hr_resize_y", gr.Slider(minimum=0, maximum=2048, value=0, step=8,
                                           label="Resize height to", elem_id=f"{tab}_hr_resize_y"))
        # A1111's row 3, shown with the setting "Hires fix: show hires checkpoint and sampler selection"
        show = bool(engine.settings.get("hires_fix_show_sampler", False))
        with gr.Row(elem_id=f"{tab}_hires_fix_row3", visible=show):
            checkpoint = c.add("hr_checkpoint_name", gr.Dropdown(
                _hr_checkpoint_choices(engine), value=SAME_CHECKPOINT, label="Hires checkpoint",
                elem_id="hr_checkpoint"))
            refresh = gr.Button("🔄", elem_id="hr_checkpoint_refresh", size="sm", min_width=40, scale=0)
            c.add("hr_sampler_name", gr.Dropdown([SAME_SAMPLER, *shown_samplers(engine)], value=SAME_SAMPLER,
                                                 label="Hires sampling method", elem_id="hr_sampler"))
            c.add("hr_scheduler", gr.Dropdown([SAME_SCHEDULER, *samplers.schedule_type_labels()],
                                              value=SAME_SCHEDULER, label="Hires schedule type",
                                              elem_id="hr_scheduler"))
        # row 4, with the setting "Hires fix: show hires prompt and negative prompt"
        with gr.Row(elem_id=f"{tab}_hires_fix_row4", visible=bool(engine.settings.get("hires_fix_show_prompts",
                                                                                       False))):
            c.add("hr_prompt", gr.Textbox(label="Hires prompt", elem_id="hires_prompt", lines=3,
                                          placeholder="Prompt for hires fix pass.\nLeave empty to use the same "
                                                      "prompt as in first pass."))
            c.add("hr_negative_prompt", gr.Textbox(label="Hires negative prompt", elem_id="hires_neg_prompt",
                                                   lines=3, placeholder="Negative prompt for hires fix pass.\n"
                                                   "Leave empty to use the same negative prompt as in first pass."))

    def refreshed():
        engine.registry.refresh()
        return gr.update(choices=_hr_checkpoint_choices(engine))

    refresh.click(refreshed, None, checkpoint, queue=False, show_progress="hidden")


SAME_CHECKPOINT = "Use same checkpoint"
SAME_SAMPLER, SAME_SCHEDULER = "Use same sampler", "Use same scheduler"  # A1111's first entries


def _hr_checkpoint_choices(engine) -> list[str]:
    """A1111's: "Use same checkpoint", then the checkpoints' short titles (`name [hash]`)."""
    return [SAME_CHECKPOINT, *(i.short_title for i in engine.registry.list())]


def _hr_checkpoint_paste(c: Controls, fields: dict) -> None:
    """"Hires checkpoint" picks that checkpoint's entry (its short title); absent: "Use same checkpoint" (and the
    hires sampler / schedule type: "Use same …")."""
    if not any(name == "hr_checkpoint_name" for name, _ in c.fields):
        return
    fields.setdefault("hr_sampler_name", SAME_SAMPLER)  # absent from the infotext: the first pass's
    fields.setdefault("hr_scheduler", SAME_SCHEDULER)
    if "hr_checkpoint_name" not in fields:
        fields["hr_checkpoint_name"] = SAME_CHECKPOINT
        return
    info = c.extra["engine"].registry.get(str(fields["hr_checkpoint_name"]))
    if info is not None:
        fields["hr_checkpoint_name"] = info.short_title


def _refiner(c: Controls, engine):
    """A1111's Refiner accordion (its elem_ids: `<tab>_enable`, `_checkpoint`, `_checkpoint_refresh`,
    `_switch_at`): from "Switch at" (fraction of the sampling) on, the refiner checkpoint samples the rest."""
    tab = c.tab
    with gr.Group(elem_id=f"{tab}_refiner"):
        with gr.Accordion("Refiner", open=False, elem_id=f"{tab}_enable"):
            enable = c.add("refiner_enable", gr.Checkbox(label="Enable refiner", value=False,
                                                         elem_id=f"{tab}_enable-checkbox"))
            with gr.Row():
                checkpoint = c.add("refiner_checkpoint", gr.Dropdown(
                    ["", *engine.registry.titles()], value="", label="Checkpoint", elem_id=f"{tab}_checkpoint",
                    info="switch to another model in the middle of generation"))
                refresh = gr.Button("🔄", elem_id=f"{tab}_checkpoint_refresh", size="sm", min_width=40, scale=0)
                switch = c.add("refiner_switch_at", gr.Slider(
                    minimum=0.01, maximum=1.0, value=0.8, step=0.01, label="Switch at",
                    elem_id=f"{tab}_switch_at",
                    info="fraction of sampling steps when the switch to refiner model should happen; 1=never, "
                         "0.5=switch in the middle of generation"))

    def refreshed():
        engine.registry.refresh()
        return gr.update(choices=["", *engine.registry.titles()])

    refresh.click(refreshed, None, checkpoint, queue=False, show_progress="hidden")
    # A1111's refiner is a script (its ui-config keys carry its file name) whose accordion is the checkbox
    for component in (enable, checkpoint, switch):
        component.custom_script_source = "refiner.py"
    enable.ui_config_label = "Refiner"


def _refiner_paste(c: Controls, fields: dict) -> None:
    """A1111's paste: "Refiner" turns the accordion on and picks the checkpoint of that name (its title)."""
    if "refiner_checkpoint" not in fields or not any(name == "refiner_enable" for name, _ in c.fields):
        return
    info = c.extra["engine"].registry.get(str(fields["refiner_checkpoint"]))
    fields["refiner_enable"] = True
    fields["refiner_checkpoint"] = info.title if info is not None else fields["refiner_checkpoint"]


def _results(c: Controls):
    tab = c.tab
    c.progress = gr.HTML("", elem_id=f"{tab}_progress", elem_classes=["sd-progress-wrap"])
    c.preview = gr.Image(label="Live preview", visible=False, interactive=False, elem_id=f"{tab}_live_preview",
                         format="png", height=160)
    c.gallery = gr.Gallery(label="Output", columns=4, format="png", elem_id=f"{tab}_gallery",
                           height=_setting(c.extra["engine"], "gallery_height", "") or 480,  # A1111: a CSS height
                           interactive=False,
                           object_fit="contain", preview=True)
    c.infotexts = gr.State([])
    c.selected = gr.State(0)
    with gr.Row():
        c.extra["send_img2img"] = gr.Button("🖼️ img2img", elem_id=f"{tab}_send_to_img2img", size="sm")
        c.extra["send_inpaint"] = gr.Button("🎨️ inpaint", elem_id=f"{tab}_send_to_inpaint", size="sm")
        c.extra["send_extras"] = gr.Button("📐 extras", elem_id=f"{tab}_send_to_extras", size="sm")
        c.extra["save"] = gr.Button("💾", elem_id=f"save_{tab}", size="sm", min_width=40,
                                    elem_classes=["tool"])
        c.extra["zip"] = gr.Button("🗃️", elem_id=f"zip_{tab}", size="sm", min_width=40, elem_classes=["tool"])
    c.extra["download"] = gr.File(None, file_count="multiple", interactive=False, show_label=False, visible=False,
                                  elem_id=f"download_files_{tab}")
    c.info = gr.HTML("", elem_id=f"html_info_{tab}")
    c.extra["log"] = gr.HTML("", elem_id=f"html_log_{tab}")  # A1111's: what 💾 / 🗃️ saved
    c.extra["queue"] = queue_panel.build(tab, c.extra["engine"], c.extra["forever"])

    def on_select(infotexts, evt: gr.SelectData):
        index = evt.index if isinstance(evt.index, int) else 0
        text = infotexts[index] if infotexts and index < len(infotexts) else ""
        from webui.runner import info_html

        return index, info_html(text) if text else gr.update()

    c.gallery.select(on_select, [c.infotexts], [c.selected, c.info], queue=False, show_progress="hidden")


def interrupt_click(engine) -> str:
    """The Interrupt button, as A1111's: with "Don't Interrupt in the middle" (on by default) and more than one
    batch to make, the first click lets the batch being made finish and stops after it, a second click stops at
    once; returns which ("stopping" or "interrupted")."""
    state = engine.state
    if engine.settings.get("interrupt_after_current", True) and state.job_count > 1 and not state.stopping_generation:
        engine.stop_after_current()
        gr.Info("Generation will stop after finishing this image, click again to stop immediately.")
        return "stopping"
    engine.interrupt()
    return "interrupted"


def _common_wiring(c: Controls, engine, run_fn, extra_inputs: list):
    """Generate (the click and Enter in the prompt) with the fields, then the browser's id and "Generate forever",
    then the tab's own inputs; interrupt, skip, reuse seed and paste."""
    outputs = [c.gallery, c.infotexts, c.info, c.progress, c.preview, c.extra["last_seed"]]
    panel = c.extra["queue"]
    inputs = c.components + [panel.client, panel.forever] + extra_inputs
    # "multiple": a click while a run is going is queued behind it (Gradio's default "once" drops it).
    event = c.generate.click(run_fn, inputs, outputs, concurrency_id="generate",
                             concurrency_limit=None, show_progress="hidden", trigger_mode="multiple")
    c.prompt.submit(run_fn, inputs, outputs, concurrency_id="generate",
                    concurrency_limit=None, show_progress="hidden", trigger_mode="multiple")
    def interrupt() -> None:  # the page shows the outcome in the run's own result
        interrupt_click(engine)

    c.extra["interrupt"].click(interrupt, None, None, queue=False)
    c.extra["skip"].click(lambda: engine.skip(), None, None, queue=False)
    c.extra["reuse_seed"].click(lambda s: s if s is not None else -1, c.extra["last_seed"], c.seed, queue=False,
                                show_progress="hidden")
    scripts = c.extra.get("scripts")
    script_outputs = [comp for comp, _ in scripts.paste_fields] if scripts is not None else []

    def paste(text):
        updates = paste_updates(c, text)
        if script_outputs:
            params = infotext_mod.parse_generation_parameters(text) if text and text.strip() else {}
            updates += scripts.paste_updates(params)
        return updates

    c.extra["paste"].click(paste, c.prompt, c.components + script_outputs, queue=False, show_progress="hidden")
    return event


def wire_reattach(c: Controls, engine, demo) -> None:
    """On page load: the browser's id (localStorage) into the tab, then its jobs no page has shown yet followed
    here (a reload or a second tab finds a running job's progress and result)."""
    outputs = [c.gallery, c.infotexts, c.info, c.progress, c.preview, c.extra["last_seed"]]
    client = c.extra["queue"].client

    def follow(client_id: str, request: gr.Request):
        yield gr.update(), gr.update(), gr.update(), gr.update(), gr.update(), gr.update()
        yield from reattach(engine, client_id, c.tab, request)

    demo.load(None, None, client, js=queue_panel.CLIENT_JS).then(
        follow, client, outputs, concurrency_id="generate", concurrency_limit=None, show_progress="hidden")


def paste_updates(c: Controls, text: str) -> list:
    """A1111's ↙: infotext in the prompt box → every control it names (others left alone)."""
    if not text or not text.strip():
        return [gr.update() for _ in c.fields]
    params = infotext_mod.parse_generation_parameters(text)
    script_callbacks.infotext_pasted_callback(text, params)  # extensions may add or change parameters
    engine = c.extra.get("engine")
    settings = getattr(engine, "settings", None)
    for key in (settings.get("infotext_skip_pasting", []) if settings is not None else []) or []:
        params.pop(key, None)  # A1111's "Disregard fields from pasted infotext"
    fields = infotext_mod.infotext_to_request_fields(params)
    _paste_styles(engine, params, fields)
    _refiner_paste(c, fields)
    _hr_checkpoint_paste(c, fields)
    if c.extra.get("controlnet") is not None:  # "ControlNet N" → unit N's controls (gr.update dicts)
        fields.update(c.extra["controlnet"].paste_fields(params))
    return [(fields[name] if _is_update(fields[name]) else gr.update(value=_ui_value(comp, fields[name])))
            if name in fields else gr.update() for name, comp in c.fields]


def _paste_styles(engine, params: dict, fields: dict) -> None:
    """A1111's "Infer styles from prompts of pasted infotext": Apply takes the styles' texts out of the prompts
    and picks those styles (none found: none picked), Apply if any picks them only when some were found, Discard
    takes the texts out and leaves the Styles box, Ignore leaves both."""
    settings, db = getattr(engine, "settings", None), getattr(engine, "styles", None)
    mode = settings.get("infotext_styles", "Apply if any") if settings is not None else "Ignore"
    if mode == "Ignore" or db is None or "prompt" not in fields:
        return
    found, prompt, negative = db.extract_styles_from_prompt(fields.get("prompt", ""),
                                                            fields.get("negative_prompt", ""))
    fields["prompt"], fields["negative_prompt"] = prompt, negative
    if mode == "Apply" or (mode == "Apply if any" and found):
        fields["styles"] = found


def _is_update(value) -> bool:
    return isinstance(value, dict) and value.get("__type__") == "update"


def _ui_value(component, value):
    """Request values → what the control shows: index radios (resize mode, masked content...) take their label."""
    if isinstance(component, gr.Radio) and getattr(component, "type", None) == "index" and not isinstance(value, str):
        labels = [choice[0] if isinstance(choice, (list, tuple)) else choice for choice in component.choices]
        index = int(value)
        return labels[index] if 0 <= index < len(labels) else labels[0]
    return value


def _clean(values: dict[str, Any]) -> dict[str, Any]:
    out = dict(values)
    for key in ("seed", "subseed"):
        if out.get(key) is None:
            out[key] = -1
    for key in ("steps", "n_iter", "batch_size", "width", "height", "hr_second_pass_steps", "hr_resize_x",
                "hr_resize_y", "seed_resize_from_w", "seed_resize_from_h"):
        if isinstance(out.get(key), float):
            out[key] = int(out[key])
    if not out.pop("refiner_enable", True) or out.get("refiner_checkpoint") in ("", "None"):
        out["refiner_checkpoint"] = out["refiner_switch_at"] = None  # A1111's setup: off → no refiner
    if out.get("hr_checkpoint_name") in ("", SAME_CHECKPOINT):
        out["hr_checkpoint_name"] = None
    for key in ("hr_prompt", "hr_negative_prompt"):  # a hidden row's textboxes send nothing
        if out.get(key) is None:
            out[key] = ""
    if out.get("hr_sampler_name") in ("", SAME_SAMPLER):
        out["hr_sampler_name"] = None
    if out.get("hr_scheduler") in ("", SAME_SCHEDULER):
        out["hr_scheduler"] = None
    if out.get("scheduler") in (None, ""):
        out["scheduler"] = "Automatic"
    return out


# ---------------------------------------------------------------------------------------------------------------


def build_txt2img(engine, hide_dirs: bool = False) -> Controls:
    c = Controls(tab="txt2img")
    c.extra["hide_dirs"] = hide_dirs
    c.extra["last_seed"] = gr.State(None)
    c.extra["engine"] = engine
    _prompt_row(c, engine)
    extra_networks_panel.build_extra_networks(engine, c.tab, c.prompt)
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, elem_id="txt2img_settings"):
            _sampling_params(c, engine, is_img2img=False)
            _hires(c, engine)
            _refiner(c, engine)
            controlnet = controlnet_panel.build(c, engine, is_img2img=False)
            script_controls = _scripts(engine, is_img2img=False)
        with gr.Column(scale=1, elem_id="txt2img_results"):
            _results(c)
    controlnet.wire(c)

    def run(request: gr.Request, *values):
        n = len(c.fields)
        data = _clean(c.values_to_dict(values[:n]))
        client, forever = values[n], bool(values[n + 1])
        yield from run_streaming(engine, lambda: controlnet.put_units(data), "txt2img",
                                 _script_args(script_controls, values[n + 2:]), request, client, forever)

    c.extra["scripts"] = script_controls
    _common_wiring(c, engine, run, script_controls.inputs if script_controls else [])
    return c


def _scripts(engine, is_img2img: bool):
    """The tab's always-on scripts and the "Script" dropdown (when extensions are loaded)."""
    if engine.scripts is None:
        return None
    return script_ui.build(engine.scripts.for_mode("img2img" if is_img2img else "txt2img"), is_img2img)


def _script_args(controls, values) -> list | None:
    return script_ui.ui_values_to_args(controls, list(values)) if controls is not None else None


def build_img2img(engine, hide_dirs: bool = False) -> Controls:
    """`hide_dirs` (--hide-ui-dir-config): the Batch tab's folder boxes are hidden and refused, as in A1111."""
    c = Controls(tab="img2img")
    c.extra["hide_dirs"] = hide_dirs
    c.extra["last_seed"] = gr.State(None)
    c.extra["engine"] = engine
    mode = gr.State("img2img")
    _prompt_row(c, engine)
    extra_networks_panel.build_extra_networks(engine, c.tab, c.prompt)
    editor_height = _editor_height(engine)
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, elem_id="img2img_settings"):
            copies: dict[str, Any] = {"buttons": [], "to": {}}
            with gr.Tabs(elem_id="mode_img2img") as subtabs:
                with gr.Tab("img2img", id="img2img_tab", elem_id="img2img_img2img_tab") as t1:
                    init = gr.Image(label="Image for img2img", type="pil", format="png", elem_id="img2img_image",
                                    sources=["upload", "clipboard"], height=editor_height, image_mode="RGBA")
                    _copy_row("img2img", init, copies)
                with gr.Tab("Sketch", id="sketch_tab", elem_id="img2img_img2img_sketch_tab") as t2:
                    sketch = gr.ImageEditor(label="Sketch", type="pil", format="png", elem_id="img2img_sketch",
                                            sources=["upload", "clipboard"], height=editor_height, layers=False,
                                            brush=gr.Brush(default_size=12, color_mode="defaults",
                                                           colors=_sketch_colors(
                                                               engine, "img2img_sketch_default_brush_color")))
                    _copy_row("sketch", sketch, copies)
                with gr.Tab("Inpaint", id="inpaint_tab", elem_id="img2img_inpaint_tab") as t3:
                    inpaint = gr.ImageEditor(label="Image for inpainting with mask", type="pil", format="png",
                                             elem_id="img2maskimg", sources=["upload", "clipboard"],
                                             height=editor_height, layers=False, transforms=(),
                                             brush=gr.Brush(default_size=24, color_mode="fixed", colors=[
                                                 _setting(engine, "img2img_inpaint_mask_brush_color", "#ffffff")]))
                    _copy_row("inpaint", inpaint, copies)
                with gr.Tab("Inpaint sketch", id="inpaint_sketch_tab", elem_id="img2img_inpaint_sketch_tab") as t3s:
                    # A1111's colour-sketch inpainting: the painted area is the mask, its colours the starting point
                    inpaint_sketch = gr.ImageEditor(label="Color sketch inpainting", type="pil", format="png",
                                                    elem_id="inpaint_sketch", sources=["upload", "clipboard"],
                                                    height=editor_height, layers=False, transforms=(),
                                                    brush=gr.Brush(default_size=12, colors=_sketch_colors(engine),
                                                                   color_mode="defaults"))
                    _copy_row("inpaint_sketch", inpaint_sketch, copies)
                with gr.Tab("Inpaint upload", id="inpaint_upload_tab", elem_id="img2img_inpaint_upload_tab") as t4:
                    upload_image = gr.Image(label="Image", type="pil", format="png", elem_id="img_inpaint_base",
                                            sources=["upload", "clipboard"], height=240)
                    upload_mask = gr.Image(label="Mask", type="pil", format="png", elem_id="img_inpaint_mask",
                                           sources=["upload", "clipboard"], height=240)
                with gr.Tab("Batch", id="batch_tab", elem_id="img2img_batch_tab") as t5:
                    batch = _batch_tab(hide_dirs)
            c.add("resize_mode", gr.Radio(list(RESIZE_MODES), value=RESIZE_MODES[0], type="index",
                                          label="Resize mode", elem_id="resize_mode"))
            with gr.Accordion("Inpaint options", open=True, elem_id="img2img_inpaint_controls",
                              visible=False) as inpaint_controls:
                with gr.Row():
                    c.add("mask_blur", gr.Slider(minimum=0, maximum=64, value=4, step=1, label="Mask blur",
                                                 elem_id="img2img_mask_blur"))
                    # Inpaint sketch only (A1111 shows it there): not a request field, it dims the sketch's mask
                    mask_alpha = gr.Slider(minimum=0, maximum=100, value=0, step=1,
                                           label="Mask transparency", visible=False, elem_id="img2img_mask_alpha")
                c.add("inpainting_mask_invert", gr.Radio(MASK_MODES, value=MASK_MODES[0], type="index",
                                                         label="Mask mode", elem_id="img2img_mask_mode"))
                c.add("inpainting_fill", gr.Radio(MASKED_CONTENT, value="original", type="index",
                                                  label="Masked content", elem_id="img2img_inpainting_fill"))
                with gr.Row():
                    c.add("inpaint_full_res", gr.Radio(INPAINT_AREAS, value=INPAINT_AREAS[0], type="index",
                                                       label="Inpaint area", elem_id="img2img_inpaint_full_res"))
                    c.add("inpaint_full_res_padding", gr.Slider(0, 256, value=32, step=4,
                                                                label="Only masked padding, pixels",
                                                                elem_id="img2img_inpaint_full_res_padding"))
            # Only the inpaint sub-tabs use these (as in A1111). A sub-tab click sets both; "send to inpaint"
            # sets the mode, whose change shows them.
            modes = ((t1, "img2img"), (t2, "sketch"), (t3, "inpaint"), (t3s, "inpaint_sketch"),
                     (t4, "inpaint_upload"), (t5, "batch"))
            for tab, name in modes:
                tab.select(lambda n=name: (n,) + _inpaint_visibility(n), None, [mode, inpaint_controls, mask_alpha],
                           queue=False, show_progress="hidden")
            by_id = {tab.id: name for tab, name in modes}

            def opens_on(tab_id):
                """ui-config.json's `img2img/Tabs@mode_img2img/selected`: the mode and the inpaint controls
                follow the sub-tab the page opens on."""
                mode.value = by_id[tab_id]
                inpaint_controls.visible = by_id[tab_id] in INPAINT_MODES
                mask_alpha.visible = by_id[tab_id] == "inpaint_sketch"

            subtabs.on_ui_config_selected = opens_on
            subtabs.ui_config_aliases = {"img2img": "img2img_tab", "img2img_sketch": "sketch_tab",  # A1111's ids
                                         "inpaint": "inpaint_tab", "inpaint_sketch": "inpaint_sketch_tab",
                                         "inpaint_upload": "inpaint_upload_tab", "batch": "batch_tab"}
            mode.change(_inpaint_visibility, mode, [inpaint_controls, mask_alpha], queue=False,
                        show_progress="hidden")
            _wire_copies(copies, subtabs, mode)
            _sampling_params(c, engine, is_img2img=True)
            _refiner(c, engine)
            with gr.Accordion("Outpaint", open=False, elem_id="img2img_outpaint"):
                with gr.Row():
                    out_left = gr.Number(value=0, precision=0, label="Left", elem_id="img2img_outpaint_left")
                    out_right = gr.Number(value=128, precision=0, label="Right", elem_id="img2img_outpaint_right")
                    out_up = gr.Number(value=0, precision=0, label="Up", elem_id="img2img_outpaint_up")
                    out_down = gr.Number(value=0, precision=0, label="Down", elem_id="img2img_outpaint_down")
                outpaint_btn = gr.Button("Outpaint", elem_id="img2img_outpaint_button")
            controlnet = controlnet_panel.build(c, engine, is_img2img=True)
            script_controls = _scripts(engine, is_img2img=True)
        with gr.Column(scale=1, elem_id="img2img_results"):
            _results(c)
    controlnet.wire(c)

    images_in = [mode, init, sketch, inpaint, upload_image, upload_mask, inpaint_sketch, mask_alpha]
    for image_input in images_in[1:-1]:
        guard_image_input(image_input, c.info)

    def build_fields(values, images, outpaint_px=None):
        """The request's fields from the controls and the sub-tab's picture (and mask)."""
        data = controlnet.put_units(_clean(c.values_to_dict(values)))
        data["mask_blur"] = int(data.get("mask_blur") or 0)
        data["inpaint_full_res_padding"] = int(data.get("inpaint_full_res_padding") or 0)
        image, mask = _mode_inputs(*images, mask_blur=data["mask_blur"])
        if image is None:
            raise RequestError("No image: upload or paste an image first")
        if outpaint_px is not None:
            image, mask = outpaint.extend_canvas(image, mask, *outpaint_px)
            data["width"], data["height"] = outpaint.processing_size(image.size)
            data["inpainting_fill"] = 0
            data["inpaint_full_res"] = False
            data["mask_blur"] = max(4, data["mask_blur"])
        data["init_images"] = [image]
        if mask is None:
            data.pop("mask_blur", None)
        data["mask"] = mask
        return data

    batch_in = list(batch.values())

    def batch_fields(values):
        data = controlnet.put_units(_clean(c.values_to_dict(values)))
        data["mask_blur"] = int(data.get("mask_blur") or 0)
        data["inpaint_full_res_padding"] = int(data.get("inpaint_full_res_padding") or 0)
        return data

    def run(request: gr.Request, *values):
        n = len(c.fields)
        client, forever = values[n], bool(values[n + 1])
        m = n + 2 + len(images_in)
        b = m + len(batch_in)
        script_args = _script_args(script_controls, values[b:])
        if values[n + 2] == "batch":
            options = lambda: _batch_options(dict(zip(batch, values[m:b])), hide_dirs)  # noqa: E731
            yield from run_batch_streaming(engine, lambda: batch_fields(values[:n]), options, script_args, request,
                                           client, forever)
            return
        yield from run_streaming(engine, lambda: build_fields(values[:n], values[n + 2:m]), "img2img",
                                 script_args, request, client, forever)

    def run_outpaint(request: gr.Request, *values):
        n = len(c.fields)
        client = values[n]
        px = [int(v or 0) for v in values[n + 1 + len(images_in):]]
        yield from run_streaming(engine, lambda: build_fields(values[:n], values[n + 1:n + 1 + len(images_in)], px),
                                 "img2img", request=request, client=client)

    c.extra["scripts"] = script_controls
    _common_wiring(c, engine, run, images_in + batch_in + (script_controls.inputs if script_controls else []))
    outputs = [c.gallery, c.infotexts, c.info, c.progress, c.preview, c.extra["last_seed"]]
    outpaint_btn.click(run_outpaint, c.components + [c.extra["queue"].client] + images_in
                       + [out_left, out_right, out_up, out_down], outputs,
                       concurrency_id="generate", concurrency_limit=None, show_progress="hidden",
                       trigger_mode="multiple")
    c.extra.update(init=init, sketch=sketch, inpaint=inpaint, inpaint_sketch=inpaint_sketch, subtabs=subtabs,
                   mode=mode, batch=batch)
    return c


def _batch_tab(hide_dirs: bool) -> dict[str, Any]:
    """A1111's Batch sub-tab (its elem_ids): Upload or From directory (hidden with --hide-ui-dir-config), and the
    "PNG info" accordion; the extension's "Controlnet input directory" under the mask folder, as it renders it."""
    from modules.img2img_batch import PNG_INFO_PROPS

    shown = not hide_dirs
    b: dict[str, Any] = {"source": gr.State("upload" if hide_dirs else "from dir")}
    with gr.Tabs(elem_id="img2img_batch_source", selected="batch_upload" if hide_dirs else "batch_from_dir"):
        with gr.Tab("Upload", id="batch_upload", elem_id="img2img_batch_upload_tab") as upload_tab:
            b["upload"] = gr.Files(label="Files", file_types=["image"], interactive=True,
                                   elem_id="img2img_batch_upload")
        with gr.Tab("From directory", id="batch_from_dir", elem_id="img2img_batch_from_dir_tab",
                    visible=shown) as dir_tab:
            hidden = "<br>Disabled when launched with --hide-ui-dir-config." if hide_dirs else ""
            gr.HTML("<p style='padding-bottom: 1em;' class='text-gray-500'>Process images in a directory on the same "
                    "machine where the server is running.<br>Use an empty output directory to save pictures normally "
                    "instead of writing to the output directory.<br>Add inpaint batch mask directory to enable "
                    f"inpaint batch processing.{hidden}</p>")
            b["input_dir"] = gr.Textbox(label="Input directory", visible=shown, elem_id="img2img_batch_input_dir")
            b["output_dir"] = gr.Textbox(label="Output directory", visible=shown, elem_id="img2img_batch_output_dir")
            b["mask_dir"] = gr.Textbox(label="Inpaint batch mask directory (required for inpaint batch processing "
                                             "only)", visible=shown, elem_id="img2img_batch_inpaint_mask_dir")
            b["controlnet_dir"] = gr.Textbox(label="Controlnet input directory", visible=shown,
                                             placeholder="Leave empty to use input directory",
                                             elem_id="controlnet_batch_input_dir")
    upload_tab.select(lambda: "upload", None, b["source"], queue=False, show_progress="hidden")
    dir_tab.select(lambda: "from dir", None, b["source"], queue=False, show_progress="hidden")
    with gr.Accordion("PNG info", open=False):
        b["use_png_info"] = gr.Checkbox(label="Append png info to prompts", elem_id="img2img_batch_use_png_info")
        b["png_info_dir"] = gr.Textbox(label="PNG info directory", visible=shown,
                                       placeholder="Leave empty to use input directory",
                                       elem_id="img2img_batch_png_info_dir")
        b["png_info_props"] = gr.CheckboxGroup(list(PNG_INFO_PROPS), label="Parameters to take from png info",
                                               info="Prompts from png info will be appended to prompts set in ui.",
                                               elem_id="img2img_batch_png_info_props")
    return b


def _batch_options(v: dict[str, Any], hide_dirs: bool):
    """The Batch tab's values → BatchOptions (the upload's files, or the folders)."""
    from modules.img2img_batch import BatchOptions

    files = None
    if v.get("source") == "upload":
        files = [getattr(f, "name", None) or str(f) for f in (v.get("upload") or [])]
        if not files:
            raise RequestError("Batch: upload pictures (or pick From directory)")
    return BatchOptions(input_dir=v.get("input_dir") or "", output_dir=v.get("output_dir") or "",
                        inpaint_mask_dir=v.get("mask_dir") or "", use_png_info=bool(v.get("use_png_info")),
                        png_info_props=list(v.get("png_info_props") or []), png_info_dir=v.get("png_info_dir") or "",
                        files=files, controlnet_dir=v.get("controlnet_dir") or "", hide_dirs=hide_dirs)


# A1111's "Copy image to:" rows: (title, sub-tab name) of the four picture sub-tabs, and their Tabs ids.
COPY_TARGETS = (("img2img", "img2img"), ("sketch", "sketch"), ("inpaint", "inpaint"),
                ("inpaint sketch", "inpaint_sketch"))
SUBTAB_IDS = {"img2img": "img2img_tab", "sketch": "sketch_tab", "inpaint": "inpaint_tab",
              "inpaint_sketch": "inpaint_sketch_tab"}


def _inpaint_visibility(mode):
    """The inpaint options on the inpaint sub-tabs; "Mask transparency" on Inpaint sketch only (as A1111)."""
    return gr.update(visible=mode in INPAINT_MODES), gr.update(visible=mode == "inpaint_sketch")


def _sketch_colors(engine, setting: str = "img2img_inpaint_sketch_default_brush_color") -> list[str]:
    """A sketch brush's palette: A1111's setting for its initial colour first ("Sketch initial brush color",
    "Inpaint sketch initial brush color"), then Gradio's."""
    first = _setting(engine, setting, "#ffffff") or "#ffffff"
    return [first] + [c for c in gr.Brush().colors if c != first]


def _setting(engine, name: str, default):
    settings = getattr(engine, "settings", None)
    return settings.get(name, default) if settings is not None else default


def _editor_height(engine) -> int:
    """A1111's "Height of the image editor" (px), for img2img's picture and editors."""
    try:
        return max(80, int(_setting(engine, "img2img_editor_height", 720)))
    except (TypeError, ValueError):
        return 720


def _copy_row(name: str, component, copies: dict) -> None:
    """A1111's row under a picture sub-tab: "Copy image to:" and a button per other picture sub-tab."""
    with gr.Row(elem_id=f"img2img_copy_to_{name}"):
        gr.HTML("Copy image to: ", elem_id=f"img2img_label_copy_to_{name}")
        for title, target in COPY_TARGETS:
            if target == name:
                gr.Button(title, interactive=False, size="sm")
                copies["to"][name] = component
                continue
            copies["buttons"].append((gr.Button(title, size="sm"), name, target))


def copy_image(value, source: str, target: str):
    """The picture a copy button carries: the painted picture from Sketch and Inpaint sketch, the picture without
    its mask from Inpaint; as the target holds it (an editor's background, or a plain image)."""
    image = value
    if isinstance(value, dict):
        image = value.get("background") if source == "inpaint" else _editor_flat(value)
    if image is None:
        return gr.update()
    if target == "img2img":
        return image
    return {"background": image.convert("RGB"), "layers": [], "composite": None}


def _wire_copies(copies: dict, subtabs, mode) -> None:
    for button, source, target in copies["buttons"]:
        button.click(lambda v, s=source, t=target: (copy_image(v, s, t), gr.Tabs(selected=SUBTAB_IDS[t]), t),
                     copies["to"][source], [copies["to"][target], subtabs, mode], show_progress="hidden")


def _mode_inputs(mode, init, sketch, inpaint, upload_image, upload_mask, inpaint_sketch=None, mask_alpha=0,
                 mask_blur=4):
    """(init image, mask or None) for the active img2img sub-tab."""
    if mode == "sketch":
        return _editor_composite(sketch), None
    if mode == "inpaint_sketch":
        if not inpaint_sketch or inpaint_sketch.get("background") is None:
            return None, None
        original = inpaint_sketch["background"].convert("RGB")
        init_image, mask = masking.sketch_to_inpaint(original, _editor_flat(inpaint_sketch), mask_blur,
                                                     mask_alpha or 0)
        if mask.getbbox() is None:
            if (mask_alpha or 0) >= 100:
                raise RequestError("Mask transparency 100 leaves no mask: lower it to repaint what you painted")
            raise RequestError("Paint over the part of the image to change (the brush, in a colour), then generate")
        return init_image, mask
    if mode == "inpaint":
        if not inpaint or inpaint.get("background") is None:
            return None, None
        background = inpaint["background"].convert("RGB")
        mask = _editor_mask(inpaint, background.size)
        if mask is None:
            raise RequestError("Paint a mask over the part of the image to change (the brush), then generate")
        return background, mask
    if mode == "inpaint_upload":
        if upload_image is None:
            return None, None
        if upload_mask is None:
            raise RequestError("Inpaint upload needs a mask image too")
        return upload_image.convert("RGB"), upload_mask
    return init, None


def _editor_composite(value) -> Image.Image | None:
    if not value:
        return None
    if value.get("composite") is not None:
        return value["composite"]
    return value.get("background")


def _editor_flat(value) -> Image.Image | None:
    """An ImageEditor's picture with its strokes painted on (RGB), laid here from the background and the layers so
    that unpainted pixels are exactly the background's."""
    background = value.get("background")
    if background is None:
        return _editor_composite(value)
    flat = background.convert("RGBA")
    for layer in value.get("layers") or []:
        if layer is None:
            continue
        layer = layer.convert("RGBA")
        flat.alpha_composite(layer if layer.size == flat.size else layer.resize(flat.size))
    return flat.convert("RGB")


def _editor_mask(value, size) -> Image.Image | None:
    """The painted strokes of a gr.ImageEditor as an L mask (white = repaint)."""
    layers = [layer for layer in (value.get("layers") or []) if layer is not None]
    if not layers:
        return None
    mask = Image.new("L", size, 0)
    for layer in layers:
        alpha = layer.convert("RGBA").getchannel("A")
        if alpha.size != size:
            alpha = alpha.resize(size)
        mask.paste(255, (0, 0), alpha.point(lambda v: 255 if v > 0 else 0))
    return mask if mask.getbbox() else None


def random_seed() -> int:
    return random.randrange(4294967294)

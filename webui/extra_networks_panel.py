"""The "Extra networks" panel under the prompt (A1111's cards): Checkpoints, Lora, Textual Inversion and
Hypernetworks.

Each sub-tab is a `gr.Dataset` of cards (preview image + name) with a search box and a refresh button. Clicking a
card inserts it into the tab's prompt (`<lora:NAME:1>`, `<hypernet:NAME:M>` with M the setting "Default multiplier
for extra networks", or the embedding's name) or, for a checkpoint, loads it.
"""
from __future__ import annotations

import html
import re
import tempfile
from pathlib import Path

import gradio as gr
from PIL import Image

from webui.runner import USER_ERRORS, error_html

PREVIEW_SUFFIXES = (".png", ".preview.png", ".jpg", ".preview.jpg", ".jpeg", ".webp", ".preview.webp")
_placeholder: str | None = None


def placeholder_image() -> str:
    """A plain grey card picture for networks without a preview (written once per process)."""
    global _placeholder
    if _placeholder is None or not Path(_placeholder).is_file():
        path = Path(tempfile.gettempdir()) / "sd-webui-extra-networks-placeholder.png"
        Image.new("RGB", (96, 96), (128, 128, 128)).save(path)
        _placeholder = str(path)
    return _placeholder


def find_preview(filename) -> str | None:
    """`name.png` / `name.preview.png` (or jpg/webp) beside the file, as A1111 looks them up."""
    p = Path(filename)
    base = p.parent / p.stem if p.is_file() else p  # a diffusers folder: `folder.png` beside it
    for suffix in PREVIEW_SUFFIXES:
        cand = base.with_name(base.name + suffix)
        if cand.is_file():
            return str(cand)
    return None


# -- data sources: lists of (name, file, value used on click) ------------------------------------------------------

def _lora_items(engine, refresh: bool) -> list[tuple[str, str, str]]:
    if engine.loras is None:
        return []
    entries = engine.loras.refresh() if refresh else engine.loras.list()
    return [(e.name, str(e.path), e.name) for e in entries]


def _embedding_items(engine, refresh: bool) -> list[tuple[str, str, str]]:
    db = engine.embeddings
    if db is None:
        return []
    model = getattr(engine.models, "current", None)
    model = getattr(model, "model", model)
    if refresh:
        db.refresh(model)
    else:
        db.load(model)
    return [(name, str(emb.filename), name) for name, emb in sorted(db.items(), key=lambda kv: kv[0].lower())]


def _hypernetwork_items(engine, refresh: bool) -> list[tuple[str, str, str]]:
    registry = getattr(engine, "hypernetworks", None)
    if registry is None:
        return []
    entries = registry.refresh() if refresh else registry.list()
    return [(e.name, str(e.path), e.name) for e in entries]


def _checkpoint_items(engine, refresh: bool) -> list[tuple[str, str, str]]:
    if refresh:
        engine.registry.refresh()
    return [(i.name_for_extra, str(i.filename), i.title) for i in engine.registry.list()]


SOURCES = {"checkpoints": ("Checkpoints", _checkpoint_items), "lora": ("Lora", _lora_items),
           "textual_inversion": ("Textual Inversion", _embedding_items),
           "hypernetworks": ("Hypernetworks", _hypernetwork_items)}


def filter_items(items, query: str):
    q = (query or "").strip().lower()
    if not q:
        return list(items)
    return [it for it in items if q in it[0].lower() or q in Path(it[1]).name.lower()]


def samples_for(items) -> list[list]:
    return [[find_preview(f) or placeholder_image(), name] for name, f, _ in items]


def hypernet_tag(name: str, multiplier) -> str:
    """A1111's hypernetwork card text: `<hypernet:NAME:M>` (M as the page's javascript prints the number)."""
    return f"<hypernet:{name}:{_multiplier_text(multiplier)}>"


_NETWORK = re.compile(r"<([^:^>]+:[^:]+):[\d.]+>")  # <lora:NAME:weight>: "lora:NAME" names it


def insert_text(prompt: str, text: str, separator: str = " ") -> str:
    """A card's click, as A1111's: its text is added after the prompt with the "Extra networks separator"
    setting between them; a second click takes it out again (a network whatever its weight, with the separator
    before it)."""
    prompt, text = prompt or "", text.strip()
    match = _NETWORK.fullmatch(text)
    if match:
        pattern = re.compile(re.escape(separator) + r"?<" + re.escape(match.group(1)) + r":[\d.]+>")
    else:
        pattern = re.compile(re.escape(separator) + r"?" + re.escape(text))
    removed = pattern.sub("", prompt, count=1) if text else prompt
    if removed != prompt:
        return removed
    if not prompt.strip():
        return text
    if not separator.strip():  # a blank separator: no double space after a prompt that ends in one
        prompt = prompt.rstrip(" ")
    return prompt + separator + text


def _multiplier_text(value) -> str:
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return "1"


# -- UI ------------------------------------------------------------------------------------------------------------

def build_extra_networks(engine, tab: str, prompt_textbox) -> None:
    """Create the collapsible panel for `tab` (txt2img / img2img) and wire its cards to `prompt_textbox`."""
    with gr.Accordion("Extra networks", open=False, elem_id=f"{tab}_extra_networks"):
        with gr.Row(equal_height=True):
            search = gr.Textbox(show_label=False, placeholder="Search...", elem_id=f"{tab}_extra_search",
                                scale=4, container=False)
            refresh = gr.Button("Refresh", elem_id=f"{tab}_extra_refresh", size="sm", scale=0, min_width=100)
        message = gr.HTML(elem_id=f"{tab}_extra_message")
        datasets, states = [], []
        with gr.Tabs(elem_id=f"{tab}_extra_tabs"):
            for key, (label, source) in SOURCES.items():
                try:
                    items = source(engine, False)
                except Exception:  # noqa: BLE001 - a broken folder must not break the page
                    items = []
                with gr.Tab(label, elem_id=f"{tab}_{key}_tab"):
                    state = gr.State(items)
                    cards = gr.Dataset(components=["image", "textbox"], samples=samples_for(items) or [[None, ""]],
                                       type="index", layout="gallery", samples_per_page=24, show_label=False,
                                       elem_id=f"{tab}_{key}_cards", elem_classes=["extra-network-cards"],
                                       visible=True)
                    datasets.append(cards)
                    states.append(state)
                _wire_click(engine, key, cards, state, prompt_textbox, message)

        def reload(query, *, rescan: bool):
            out = []
            for key, (_, source) in SOURCES.items():
                try:
                    items = filter_items(source(engine, rescan), query)
                except Exception:  # noqa: BLE001
                    items = []
                out += [gr.Dataset(samples=samples_for(items) or [[None, ""]]), items]
            return out

        outputs = [x for pair in zip(datasets, states) for x in pair]
        search.change(lambda q: reload(q, rescan=False), [search], outputs, queue=False, show_progress="hidden")
        refresh.click(lambda q: reload(q, rescan=True), [search], outputs, show_progress="hidden")


def _wire_click(engine, key: str, cards, state, prompt_textbox, message) -> None:
    if key == "checkpoints":
        def pick(index, items):
            if index is None or not items or index >= len(items):
                return gr.update()
            title = items[index][2]
            try:
                model = engine.models.select(title)
            except USER_ERRORS as e:
                return error_html(f"Could not load {title}: {e}")
            return f"<div class='sd-note'>Loaded {html.escape(model.title)}</div>"

        cards.click(pick, [cards, state], [message], show_progress="minimal")
        return

    def insert(index, items, prompt):
        if index is None or not items or index >= len(items):
            return gr.update()
        value = items[index][2]
        multiplier = engine.settings.get("extra_networks_default_multiplier", 1.0)
        if key == "lora":  # A1111: "Default multiplier for extra networks" for LoRA cards too
            text = f"<lora:{value}:{_multiplier_text(multiplier)}>"
        elif key == "hypernetworks":
            text = hypernet_tag(value, multiplier)
        else:
            text = value
        return insert_text(prompt, text, str(engine.settings.get("extra_networks_add_text_separator", " ")))

    cards.click(insert, [cards, state, prompt_textbox], [prompt_textbox], queue=False, show_progress="hidden")

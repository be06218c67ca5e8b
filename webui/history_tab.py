"""The History tab: every saved picture (modules/history.py) found by the words of its prompt, filtered by model,
board, star, sampler, dates and size, a page at a time (keyset pages: as fast at 50 000 pictures as at 50); for the
picked one its infotext, a star, a rating, a board, delete (to the trash folder, restorable) and "send to"
txt2img/img2img/inpaint/extras."""
from __future__ import annotations

import html
import logging
from pathlib import Path

import gradio as gr

from modules.history import HistoryError, Query
from modules.engine import Engine

log = logging.getLogger(__name__)

PAGE = 48
THUMB = 256  # px: the gallery shows thumbnails; "send to" reads the file itself


def _thumb(path: str):
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.thumbnail((THUMB, THUMB))
            return im.convert("RGB")
    except OSError:
        return None


def _day(text: str, field: str) -> float | None:
    import datetime

    text = (text or "").strip()
    if not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise HistoryError(f"{field}: a date as YYYY-MM-DD, not {text!r}") from None


def page(engine: Engine, q: str, model: str, board: str, starred: bool, sampler: str, since: str, until: str,
         min_size: float, nav: dict, move: int):
    """The page `move` pages from `nav`'s (0: again from the newest), as (gallery, nav, page text, info)."""
    nav = dict(nav or {})
    cursors = list(nav.get("cursors") or [None]) if move else [None]
    index = max(0, int(nav.get("page", 0)) + move) if move else 0
    index = min(index, len(cursors) - 1)
    try:
        query = Query(q=q or "", model=model or "", board=(board or None), starred=True if starred else None,
                      sampler=sampler or "", since=_day(since, "From"), until=_day(until, "Until"),
                      min_width=int(min_size or 0), min_height=int(min_size or 0), cursor=cursors[index], limit=PAGE)
        items, next_cursor = engine.history.search(query)
    except HistoryError as e:
        return gr.update(), nav, f"<span id='history_page_text'>⚠ {html.escape(str(e))}</span>", ""
    if len(cursors) == index + 1 and next_cursor is not None:
        cursors.append(next_cursor)
    pictures = [(thumb, _caption(row)) for row in items if (thumb := _thumb(row["path"])) is not None]
    shown = [row for row in items if Path(row["path"]).is_file()]
    ids = [row["id"] for row in shown]
    kept = nav.get("selected") if nav.get("selected") in ids else None  # coming back to the tab keeps the pick
    nav = {"ids": ids, "cursors": cursors, "page": index, "selected": kept}
    more = " · more: Older ▶" if next_cursor is not None else ""
    text = f"Page {index + 1}: {len(shown)} picture(s){more}" if shown else "No pictures match."
    return pictures, nav, f"<span id='history_page_text'>{html.escape(text)}</span>", gr.update() if kept else ""


def _caption(row: dict) -> str:
    prompt = row["prompt"] or Path(row["path"]).name
    return ("★ " if row["starred"] else "") + (prompt[:60] + "…" if len(prompt) > 60 else prompt)


def _info(row: dict) -> str:
    parts = [f"<div class='history-prompt'>{html.escape(row['infotext'] or '(no infotext)')}</div>",
             f"<div class='history-file'>{html.escape(row['path'])}</div>"]
    tags = (["★ starred"] if row["starred"] else []) + ([f"rated {row['rating']}/5"] if row["rating"] else []) + (
        [f"board: {row['board']}"] if row["board"] else [])
    if tags:
        parts.append(f"<div class='history-tags'>{html.escape(' · '.join(tags))}</div>")
    return "".join(parts)


def select(engine: Engine, nav: dict, evt: gr.SelectData):
    """A picture picked in the gallery: its infotext, and what the buttons act on."""
    nav = dict(nav or {})
    ids = nav.get("ids") or []
    if not isinstance(evt.index, int) or not 0 <= evt.index < len(ids):
        return nav, "", "", gr.update(), gr.update()
    row = engine.history.get(ids[evt.index])
    nav["selected"] = row["id"]
    return (nav, _info(row), row["infotext"], gr.update(value="★ Unstar" if row["starred"] else "☆ Star"),
            gr.update(value=row["rating"]))


def _selected(engine: Engine, nav: dict) -> dict | None:
    image_id = (nav or {}).get("selected")
    if image_id is None:
        return None
    try:
        return engine.history.get(image_id)
    except KeyError:
        return None


def toggle_star(engine: Engine, nav: dict):
    row = _selected(engine, nav)
    if row is None:
        return "<div class='sd-note'>Pick a picture first.</div>", gr.update()
    row = engine.history.update(row["id"], {"starred": not row["starred"]})
    return _info(row), gr.update(value="★ Unstar" if row["starred"] else "☆ Star")


def rate(engine: Engine, nav: dict, rating: float):
    row = _selected(engine, nav)
    if row is None:
        return "<div class='sd-note'>Pick a picture first.</div>"
    return _info(engine.history.update(row["id"], {"rating": int(rating or 0)}))


def set_board(engine: Engine, nav: dict, board: str):
    row = _selected(engine, nav)
    if row is None:
        return "<div class='sd-note'>Pick a picture first.</div>"
    try:
        return _info(engine.history.update(row["id"], {"board": (board or "").strip()}))
    except HistoryError as e:
        return f"<div class='sd-note'>⚠ {html.escape(str(e))}</div>"


def delete(engine: Engine, nav: dict):
    row = _selected(engine, nav)
    if row is None:
        return "<div class='sd-note'>Pick a picture first.</div>"
    engine.history.delete(row["id"])
    return (f"<div class='sd-note'>Moved {html.escape(Path(row['path']).name)} to "
            f"{html.escape(str(engine.history.trash_path(Path(row['path'])).parent))}.</div>")


def selected_picture(engine: Engine, nav: dict):
    """The picked picture at full size (for "send to img2img")."""
    from PIL import Image

    row = _selected(engine, nav)
    if row is None or not Path(row["path"]).is_file():
        return None
    with Image.open(row["path"]) as im:
        return im.convert("RGB")


def build_history(engine: Engine) -> dict:
    with gr.Row(elem_id="history_filters", equal_height=True):
        q = gr.Textbox(label="Search prompts", placeholder="red circle", elem_id="history_search", scale=4)
        model = gr.Textbox(label="Model", placeholder="any", elem_id="history_model", scale=2)
        board = gr.Textbox(label="Board", placeholder="any", elem_id="history_board_filter", scale=1)
        starred = gr.Checkbox(label="Starred only", elem_id="history_starred_only", scale=1)
        search = gr.Button("Search", variant="primary", elem_id="history_search_button", scale=1)
    with gr.Accordion("More filters", open=False, elem_id="history_more_filters"):
        with gr.Row():
            sampler = gr.Textbox(label="Sampler", placeholder="any", elem_id="history_sampler")
            since = gr.Textbox(label="From (YYYY-MM-DD)", elem_id="history_since")
            until = gr.Textbox(label="Until (YYYY-MM-DD)", elem_id="history_until")
            min_size = gr.Number(label="At least (px, both sides)", value=0, precision=0, minimum=0,
                                 elem_id="history_min_size")
    gallery = gr.Gallery(label="History", elem_id="history_gallery", columns=8, height=520, object_fit="contain",
                         allow_preview=False, show_label=False)
    with gr.Row(elem_id="history_paging"):
        newer = gr.Button("◀ Newer", elem_id="history_newer", size="sm")
        page_text = gr.HTML(elem_id="history_page")
        older = gr.Button("Older ▶", elem_id="history_older", size="sm")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            info = gr.HTML(elem_id="history_info")
            text = gr.Textbox(visible=False, elem_id="history_infotext")
        with gr.Column(scale=1):
            star = gr.Button("☆ Star", elem_id="history_star")
            rating = gr.Slider(0, 5, value=0, step=1, label="Rating (release to save)", elem_id="history_rating")
            board_set = gr.Textbox(label="Put on board (Enter)", elem_id="history_board")
            remove = gr.Button("Delete (to trash)", variant="stop", elem_id="history_delete")
            to_txt2img = gr.Button("Send to txt2img", elem_id="history_send_to_txt2img")
            to_img2img = gr.Button("Send to img2img", elem_id="history_send_to_img2img")
            to_inpaint = gr.Button("Send to inpaint", elem_id="history_send_to_inpaint")
            to_extras = gr.Button("Send to extras", elem_id="history_send_to_extras")
    nav = gr.State({})
    filters = [q, model, board, starred, sampler, since, until, min_size, nav]
    outs = [gallery, nav, page_text, info]
    for trigger, move in ((search.click, 0), (q.submit, 0), (older.click, 1), (newer.click, -1)):
        trigger(lambda *a, m=move: page(engine, *a, m), filters, outs, show_progress="hidden")
    def on_select(n: dict, evt: gr.SelectData):  # Gradio passes the event by this annotation
        return select(engine, n, evt)

    gallery.select(on_select, [nav], [nav, info, text, star, rating], show_progress="hidden")
    star.click(lambda n: toggle_star(engine, n), [nav], [info, star], show_progress="hidden")
    rating.release(lambda n, r: rate(engine, n, r), [nav, rating], [info], show_progress="hidden")
    board_set.submit(lambda n, b: set_board(engine, n, b), [nav, board_set], [info], show_progress="hidden")
    remove.click(lambda n: delete(engine, n), [nav], [info], show_progress="hidden").then(
        lambda *a: page(engine, *a, 0)[:3], filters, [gallery, nav, page_text], show_progress="hidden")
    return {"nav": nav, "text": text, "to_txt2img": to_txt2img, "to_img2img": to_img2img, "to_inpaint": to_inpaint,
            "to_extras": to_extras,
            "picture": lambda n: selected_picture(engine, n), "load": (page, filters, outs)}

"""The History tab: every saved picture (modules/history.py) found by the words of its prompt, filtered by model,
board, star, sampler, dates and size, a page at a time (keyset pages: as fast at 50 000 pictures as at 50); for the
picked one the picture at full size, its infotext, a star, a rating, a board, delete (to the trash folder,
restorable), reuse its seed, rerun it (a job of the visible queue) and "send to" txt2img/img2img/inpaint/extras.
In Select mode clicks gather pictures for Delete selected / Move selected to board / Restore (from the trash view).
Keys (webui/assets/history_keys.js): ←/→ pick the previous/next picture, Delete deletes it, "s" stars it."""
from __future__ import annotations

import html
import logging
from pathlib import Path

import gradio as gr

from modules.history import HistoryError, Query, request_fields
from modules.engine import Engine

log = logging.getLogger(__name__)

PAGE = 48
THUMB = 256  # px: the gallery shows thumbnails; the full-size view and "send to" read the file itself
PICK_FIRST = "Pick a picture first."
# Every History event runs in one lane, in the order the page sent them: a Delete key pressed right after a click on
# another thumbnail must act on that picture, not on the one picked before (whose pick the server still holds).
LANE = {"show_progress": "hidden", "concurrency_id": "history", "concurrency_limit": 1}
SELECT_FIRST = "Select pictures first (tick Select, then click them), or pick one."


def _note(text: str) -> str:
    return f"<div class='sd-note'>{html.escape(text)}</div>"


def _thumb(path: Path):
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


def _page_text(text: str) -> str:
    return f"<span id='history_page_text'>{html.escape(text)}</span>"


SORTS = {"Newest first": "newest", "Oldest first": "oldest", "Best rated first": "rating"}


def page(engine: Engine, q: str, model: str, board: str, starred: bool, trash: bool, sampler: str, since: str,
         until: str, min_size: float, sort: str, nav: dict, move: int):
    """The page `move` pages from `nav`'s (0: again from the newest), as (gallery, nav, page text, info, full-size
    picture, selection line). The pick and the selection are kept for the pictures still shown."""
    nav = dict(nav or {})
    cursors = list(nav.get("cursors") or [None]) if move else [None]
    index = max(0, int(nav.get("page", 0)) + move) if move else 0
    index = min(index, len(cursors) - 1)
    try:
        query = Query(q=q or "", model=model or "", board=(board or None), starred=True if starred else None,
                      trash=bool(trash), sampler=sampler or "", since=_day(since, "From"),
                      until=_day(until, "Until"), min_width=int(min_size or 0), min_height=int(min_size or 0),
                      cursor=cursors[index], limit=PAGE, order=SORTS.get(sort or "", "newest"))
        items, next_cursor = engine.history.search(query)
    except HistoryError as e:
        return gr.update(), nav, _page_text(f"⚠ {e}"), "", gr.update(), gr.update()
    if len(cursors) == index + 1 and next_cursor is not None:
        cursors.append(next_cursor)
    pictures, ids = [], []
    for row in items:  # one list for both, so that a gallery index is always the id at that index
        thumb = _thumb(engine.history.file_path(row))
        if thumb is not None:
            pictures.append((thumb, _caption(row)))
            ids.append(row["id"])
    kept = nav.get("selected") if nav.get("selected") in ids else None  # coming back to the tab keeps the pick
    checked = [i for i in nav.get("checked") or [] if i in ids]
    nav = {"ids": ids, "cursors": cursors, "page": index, "selected": kept, "checked": checked}
    more = " · more: Older ▶" if next_cursor is not None else ""
    where = " in the trash" if trash else ""
    text = f"Page {index + 1}: {len(ids)} picture(s){where}{more}" if ids else f"No pictures{where} match."
    gallery = gr.Gallery(value=pictures, selected_index=ids.index(kept) if kept else None)  # the pick's place now
    return (gallery, nav, _page_text(text), gr.update() if kept else "", gr.update() if kept else None,
            _selection(nav))


def _caption(row: dict) -> str:
    prompt = row["prompt"] or Path(row["path"]).name
    return ("★ " if row["starred"] else "") + (prompt[:60] + "…" if len(prompt) > 60 else prompt)


def _info(row: dict) -> str:
    parts = [f"<div class='history-prompt'>{html.escape(row['infotext'] or '(no infotext)')}</div>",
             f"<div class='history-file'>{html.escape(row['path'])}</div>"]
    tags = (["in the trash"] if row["deleted"] else []) + (["★ starred"] if row["starred"] else []) + (
        [f"rated {row['rating']}/5"] if row["rating"] else []) + ([f"board: {row['board']}"] if row["board"] else [])
    if tags:
        parts.append(f"<div class='history-tags'>{html.escape(' · '.join(tags))}</div>")
    return "".join(parts)


def _selection(nav: dict, note: str = "") -> str:
    """The selection line: how many are selected and, for the page's script, at which gallery places
    (`data-indices`, marked on the thumbnails), then what the last action did."""
    ids, checked = nav.get("ids") or [], nav.get("checked") or []
    places = ",".join(str(ids.index(i)) for i in checked if i in ids)
    line = f"<span id='history_selection_text' data-indices='{places}'>{len(checked)} selected</span>"
    return line + (f" <span class='history-note'>{html.escape(note)}</span>" if note else "")


def select(engine: Engine, nav: dict, multiselect: bool, evt: gr.SelectData):
    """A click on a thumbnail: in Select mode it adds or removes the picture from the selection, otherwise it
    picks it (full-size view, infotext, what the single-picture buttons act on). Outputs: nav, info, infotext,
    star label, rating, full-size picture, selection line."""
    nav = dict(nav or {})
    ids = nav.get("ids") or []
    if not isinstance(evt.index, int) or not 0 <= evt.index < len(ids):
        return (nav,) + (gr.update(),) * 6
    if multiselect:
        return _toggle(nav, ids[evt.index])
    return _pick(engine, nav, ids[evt.index])


def _toggle(nav: dict, image_id: int):
    checked = list(nav.get("checked") or [])
    if image_id in checked:
        checked.remove(image_id)
    else:
        checked.append(image_id)
    nav["checked"] = checked
    return (nav,) + (gr.update(),) * 5 + (_selection(nav),)


def _pick(engine: Engine, nav: dict, image_id: int):
    try:
        row = engine.history.get(image_id)
    except KeyError:
        return (nav, _note("That picture is no longer in the history; search again."), "") + (gr.update(),) * 4
    nav["selected"] = row["id"]
    return (nav, _info(row), row["infotext"], gr.update(value="★ Unstar" if row["starred"] else "☆ Star"),
            gr.update(value=row["rating"]), _picture(engine, row), gr.update())


def _selected(engine: Engine, nav: dict) -> dict | None:
    image_id = (nav or {}).get("selected")
    if image_id is None:
        return None
    try:
        return engine.history.get(image_id)
    except KeyError:
        return None


def _picture(engine: Engine, row: dict | None):
    """A row's picture as it is on disk (full size), or None when its file is gone."""
    from PIL import Image

    if row is None:
        return None
    try:
        with Image.open(engine.history.file_path(row)) as im:
            return im.convert("RGB")
    except OSError:
        return None


def selected_picture(engine: Engine, nav: dict):
    """The picked picture at full size (for "send to img2img")."""
    return _picture(engine, _selected(engine, nav))


def picked_seed(engine: Engine, nav: dict) -> int | None:
    """The picked picture's seed (♻️ Reuse seed), None when nothing is picked or its infotext has none."""
    row = _selected(engine, nav)
    return None if row is None else row["seed"]


def toggle_star(engine: Engine, nav: dict):
    row = _selected(engine, nav)
    if row is None:
        return _note(PICK_FIRST), gr.update()
    row = engine.history.update(row["id"], {"starred": not row["starred"]})
    return _info(row), gr.update(value="★ Unstar" if row["starred"] else "☆ Star")


def rate(engine: Engine, nav: dict, rating: float):
    row = _selected(engine, nav)
    if row is None:
        return _note(PICK_FIRST)
    return _info(engine.history.update(row["id"], {"rating": int(rating or 0)}))


def set_board(engine: Engine, nav: dict, board: str):
    row = _selected(engine, nav)
    if row is None:
        return _note(PICK_FIRST)
    try:
        return _info(engine.history.update(row["id"], {"board": (board or "").strip()}))
    except HistoryError as e:
        return _note(f"⚠ {e}")


def delete(engine: Engine, nav: dict):
    """The picked picture to the trash (the Delete button and key): (info, full-size view)."""
    row = _selected(engine, nav)
    if row is None:
        return _note(PICK_FIRST), gr.update()
    if row["deleted"]:
        return _note(f"{Path(row['path']).name} is already in the trash."), gr.update()
    engine.history.delete(row["id"])
    folder = engine.history.trash_path(Path(row["path"])).parent
    return _note(f"Moved {Path(row['path']).name} to {folder}."), None


# The thumbnail the page shows as picked, read when Delete is pressed: the pick the server has may be a click behind
# (a click's answer still on its way when the key follows it), and Delete must act on what the user sees.
SHOWN_PICK_JS = """(nav, multi, i) => {
  const items = [...document.querySelectorAll('#history_gallery .thumbnail-item')];
  return [nav, multi, items.findIndex((e) => e.classList.contains('selected'))];
}"""


def shown_pick(nav: dict, index) -> dict:
    """`nav` with the picture the page shows as picked (its index on the page), when there is one."""
    ids = (nav or {}).get("ids") or []
    try:
        index = int(index)
    except (TypeError, ValueError):
        return nav
    return dict(nav, selected=ids[index]) if 0 <= index < len(ids) else nav


def _targets(nav: dict) -> list[int]:
    """What the selection bar's buttons act on: the selected pictures, else the picked one."""
    nav = nav or {}
    picked = [nav["selected"]] if nav.get("selected") is not None else []
    return list(nav.get("checked") or []) or picked


def _each(action, ids: list[int]) -> int:
    """`action(id)` for each id still in the history; how many it was done for."""
    done = 0
    for image_id in ids:
        try:
            action(image_id)
            done += 1
        except KeyError:
            continue
    return done


def _after_bulk(nav: dict, ids: list[int], drop_pick: bool) -> dict:
    nav = dict(nav, checked=[])
    if drop_pick and nav.get("selected") in ids:
        nav["selected"] = None
    return nav


def _bulk(nav: dict, action, ids_note):
    """`action` on each of the selection (or the picked picture), which then leaves the page: (nav, selection line,
    info, full-size view); `ids_note(count)` says what was done."""
    ids = _targets(nav)
    if not ids:
        return nav, _selection(nav or {}, SELECT_FIRST), gr.update(), gr.update()
    done = _each(action, ids)
    picked = (nav or {}).get("selected") in ids
    nav = _after_bulk(nav, ids, drop_pick=True)
    return nav, _selection(nav, ids_note(done)), "" if picked else gr.update(), None if picked else gr.update()


def delete_selected(engine: Engine, nav: dict):
    """The selection (or the picked picture) to the trash folder."""
    return _bulk(nav, engine.history.delete, lambda done: (
        f"Moved {done} picture(s) to the trash ({engine.history.outputs_dir / '.trash'}); tick “In trash” to "
        "see or restore them."))


def restore_selected(engine: Engine, nav: dict):
    """The selection (or the picked picture) back from the trash to its folder."""
    return _bulk(nav, engine.history.restore, lambda done: f"Restored {done} picture(s) to their folders.")


def move_to_board(engine: Engine, nav: dict, board: str):
    """The selection (or the picked picture) onto a board: (nav, selection line, info)."""
    ids, board = _targets(nav), (board or "").strip()
    if not ids:
        return nav, _selection(nav or {}, SELECT_FIRST), gr.update()
    if not board:
        return nav, _selection(nav, "Type a board name first."), gr.update()
    try:
        done = engine.history.update_many(ids, {"board": board})
    except HistoryError as e:
        return nav, _selection(nav, f"⚠ {e}"), gr.update()
    nav = _after_bulk(nav, ids, drop_pick=False)
    picked = _selected(engine, nav) if nav.get("selected") in ids else None
    note = f"Put {done} picture(s) on board “{board}”."
    return nav, _selection(nav, note), _info(picked) if picked else gr.update()


def rerun_request(engine: Engine, row: dict) -> tuple[dict, str]:
    """The txt2img request fields that make the picture again (its infotext's parameters, the same seed), saved
    whatever "Always save all generated images" says, so that the new picture lands in the history; and a note for
    the user. A model that is not here is left out (the current one is used, and the note says so). img2img
    pictures are rerun as txt2img: their init image is not kept."""
    from modules.request_types import RequestError, Txt2ImgRequest

    if not row["infotext"]:
        raise HistoryError("This picture has no infotext: there are no parameters to rerun it with.")
    fields = request_fields(row["infotext"])
    overrides = dict(fields.pop("override_settings", None) or {})
    wanted = overrides.pop("sd_model_checkpoint", None)
    info = (engine.registry.get(str(wanted)) if wanted else None) or (
        engine.registry.get(row["model"]) if row["model"] else None)
    if info is not None:
        overrides["sd_model_checkpoint"] = info.title
    note = f"; its model {row['model'] or wanted} is not here, so the current one is used" if (
        wanted or row["model"]) and info is None else ""
    body = {**fields, "do_not_save_samples": False, "override_settings": {**overrides, "samples_save": True}}
    try:
        Txt2ImgRequest.from_dict(body)  # a bad value is said now, not as a failed job later
    except RequestError as e:
        raise HistoryError(f"Its parameters are not a valid request: {e}") from None
    return body, note


def rerun(engine: Engine, nav: dict, client: str):
    """Queue the picked picture's generation again as a job of the visible queue (listed in the Queue panel, run
    after a restart like any UI job): (status line, job id to follow, the follow timer)."""
    from modules.job_queue import QueueError, ensure_queue

    stop = gr.Timer(active=False)
    row = _selected(engine, nav)
    if row is None:
        return _note(PICK_FIRST), "", stop
    try:
        body, note = rerun_request(engine, row)
        job = ensure_queue(engine).submit("txt2img", body, "ui", client)
    except (HistoryError, QueueError) as e:
        return _note(f"⚠ {e}"), "", stop
    return _note(f"Queued as job {job.id} (txt2img, seed {body.get('seed', -1)}{note})."), job.id, gr.Timer(
        active=True)


def follow(engine: Engine, job_id: str, *filters):
    """A tick while a rerun is queued or running: its state, and once it is done the list again from the newest
    (where its picture now is). Outputs: timer, status line, job id, gallery, nav, page text."""
    from modules.job_queue import QueueError

    idle = (gr.update(),) * 3
    queue = engine.visible_queue
    if not job_id or queue is None:
        return (gr.Timer(active=False), gr.update(), "") + idle
    try:
        job = queue.get(job_id)
    except QueueError:
        return (gr.Timer(active=False), _note(f"Job {job_id} is no longer in the queue."), "") + idle
    if job.status in ("queued", "running"):
        return (gr.update(), _note(f"Job {job_id} is {job.status}…"), job_id) + idle
    if job.status != "done":
        return (gr.Timer(active=False), _note(f"Job {job_id} {job.status}: {job.error or 'no picture'}"), "") + idle
    listing = page(engine, *filters, 0)
    return (gr.Timer(active=False), _note(f"Job {job_id} is done: its picture is the newest in the history."),
            "") + listing[:3]


def build_history(engine: Engine) -> dict:
    with gr.Row(elem_id="history_filters", equal_height=True):
        q = gr.Textbox(label="Search prompts", placeholder="red circle", elem_id="history_search", scale=4)
        model = gr.Textbox(label="Model", placeholder="any", elem_id="history_model", scale=2)
        board = gr.Textbox(label="Board", placeholder="any", elem_id="history_board_filter", scale=1)
        starred = gr.Checkbox(label="Starred only", elem_id="history_starred_only", scale=1)
        trash = gr.Checkbox(label="In trash", elem_id="history_show_trash", scale=1)
        sort = gr.Dropdown(list(SORTS), value="Newest first", label="Sort", elem_id="history_sort", scale=1)
        search = gr.Button("Search", variant="primary", elem_id="history_search_button", scale=1)
    with gr.Accordion("More filters", open=False, elem_id="history_more_filters"):
        with gr.Row():
            sampler = gr.Textbox(label="Sampler", placeholder="any", elem_id="history_sampler")
            since = gr.Textbox(label="From (YYYY-MM-DD)", elem_id="history_since")
            until = gr.Textbox(label="Until (YYYY-MM-DD)", elem_id="history_until")
            min_size = gr.Number(label="At least (px, both sides)", value=0, precision=0, minimum=0,
                                 elem_id="history_min_size")
    gallery = gr.Gallery(label="History", elem_id="history_gallery", columns=8, height=520, object_fit="contain",
                         allow_preview=False, show_label=False, fit_columns=False)  # a few results stay thumbnails
    with gr.Row(elem_id="history_paging"):
        newer = gr.Button("◀ Newer", elem_id="history_newer", size="sm")
        page_text = gr.HTML(elem_id="history_page")
        older = gr.Button("Older ▶", elem_id="history_older", size="sm")
    with gr.Row(elem_id="history_select_bar", equal_height=True):
        multiselect = gr.Checkbox(label="Select (clicks add or remove pictures)", elem_id="history_multiselect",
                                  scale=2)
        selection = gr.HTML(_selection({}), elem_id="history_selection", scale=3)
        delete_many = gr.Button("Delete selected", variant="stop", elem_id="history_delete_selected", scale=1)
        restore = gr.Button("Restore", elem_id="history_restore", visible=False, scale=1)
        move_board = gr.Textbox(show_label=False, placeholder="board name", elem_id="history_move_board", scale=1)
        move = gr.Button("Move selected to board", elem_id="history_move_selected", scale=1)
    with gr.Row(equal_height=False, elem_id="history_details"):
        with gr.Column(scale=3):
            full = gr.Image(label="Picture", elem_id="history_full", type="pil", format="png", interactive=False,
                            height=480, placeholder="Pick a picture to see it at full size")
        with gr.Column(scale=3):
            info = gr.HTML(elem_id="history_info")
            status = gr.HTML(elem_id="history_status")
            text = gr.Textbox(visible=False, elem_id="history_infotext")
        with gr.Column(scale=2, min_width=220):
            star = gr.Button("☆ Star", elem_id="history_star")
            rating = gr.Slider(0, 5, value=0, step=1, label="Rating (release to save)", elem_id="history_rating")
            board_set = gr.Textbox(label="Put on board (Enter)", elem_id="history_board")
            remove = gr.Button("Delete (to trash)", variant="stop", elem_id="history_delete")
            reuse_seed = gr.Button("♻️ Reuse seed", elem_id="history_reuse_seed")
            rerun_button = gr.Button("↻ Rerun (same parameters)", elem_id="history_rerun")
            to_txt2img = gr.Button("Send to txt2img", elem_id="history_send_to_txt2img")
            to_img2img = gr.Button("Send to img2img", elem_id="history_send_to_img2img")
            to_inpaint = gr.Button("Send to inpaint", elem_id="history_send_to_inpaint")
            to_extras = gr.Button("Send to extras", elem_id="history_send_to_extras")
    nav = gr.State({})
    job = gr.State("")
    timer = gr.Timer(1.0, active=False)
    filters = [q, model, board, starred, trash, sampler, since, until, min_size, sort, nav]
    outs = [gallery, nav, page_text, info, full, selection]
    listing = [gallery, nav, page_text]

    def relist(*values):  # after an action: the list again, keeping what the action said
        return page(engine, *values, 0)[:3]

    for trigger, move_by in ((search.click, 0), (q.submit, 0), (older.click, 1), (newer.click, -1)):
        trigger(lambda *a, m=move_by: page(engine, *a, m), filters, outs, **LANE)
    trash.change(lambda *a: page(engine, *a, 0) + _trash_buttons(a[4]), filters,
                 outs + [remove, delete_many, restore], **LANE)
    sort.input(lambda *a: page(engine, *a, 0), filters, outs, **LANE)

    def on_select(n: dict, multi: bool, evt: gr.SelectData):  # Gradio passes the event by this annotation
        return select(engine, n, multi, evt)

    # "multiple": a second thumbnail clicked while the first click's answer is on its way is queued, not dropped
    # (Gradio's default for select ignores it: quick clicks in Select mode lost one)
    gallery.select(on_select, [nav, multiselect], [nav, info, text, star, rating, full, selection],
                   trigger_mode="multiple", **LANE)
    multiselect.change(lambda n: (dict(n or {}, checked=[]), _selection({})), [nav], [nav, selection],
                       **LANE)
    star.click(lambda n: toggle_star(engine, n), [nav], [info, star], **LANE)
    rating.release(lambda n, r: rate(engine, n, r), [nav, rating], [info], **LANE)
    board_set.submit(lambda n, b: set_board(engine, n, b), [nav, board_set], [info], **LANE)
    dom_pick = gr.Number(-1, visible=False, elem_id="history_dom_pick")
    remove.click(lambda n, multi, i: delete(engine, n if multi else shown_pick(n, i)), [nav, multiselect, dom_pick],
                 [info, full], js=SHOWN_PICK_JS, **LANE).then(relist, filters, listing, **LANE)
    delete_many.click(lambda n: delete_selected(engine, n), [nav], [nav, selection, info, full],
                      **LANE).then(relist, filters, listing, **LANE)
    restore.click(lambda n: restore_selected(engine, n), [nav], [nav, selection, info, full],
                  **LANE).then(relist, filters, listing, **LANE)
    for trigger in (move.click, move_board.submit):
        trigger(lambda n, b: move_to_board(engine, n, b), [nav, move_board], [nav, selection, info],
                **LANE)

    def on_rerun(n: dict, request: gr.Request):
        return rerun(engine, n, request.client.host if request and request.client else "")

    rerun_button.click(on_rerun, [nav], [status, job, timer], **LANE)
    timer.tick(lambda j, *a: follow(engine, j, *a), [job] + filters, [timer, status, job] + listing,
               **LANE)
    return {"nav": nav, "text": text, "status": status, "reuse_seed": reuse_seed, "to_txt2img": to_txt2img,
            "to_img2img": to_img2img, "to_inpaint": to_inpaint, "to_extras": to_extras,
            "picture": lambda n: selected_picture(engine, n), "seed": lambda n: picked_seed(engine, n),
            "load": (page, filters, outs)}


def _trash_buttons(in_trash: bool) -> tuple:
    """In the trash view Restore replaces the delete buttons."""
    return gr.update(visible=not in_trash), gr.update(visible=not in_trash), gr.update(visible=bool(in_trash))

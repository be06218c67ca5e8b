"""The generation history (modules/history.py, `/sdapi/v1/history`): every saved picture indexed with its infotext,
full-text search, filters and keyset pages, star/board/delete-to-trash, reconcile against the outputs folder (an
A1111 outputs folder is imported, a deleted or corrupt database is rebuilt), and crash safety under kill -9."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from modules import fileio
from modules.history import HistoryError, HistoryStore, Query

ROOT = Path(__file__).resolve().parent.parent
A1111_INFOTEXT = ("{prompt}\nNegative prompt: lowres, watermark\nSteps: {steps}, Sampler: {sampler}, Schedule type: "
                  "Karras, CFG scale: 7, Seed: {seed}, Size: 512x768, Model hash: 6ce0161689, Model: {model}, "
                  "Version: v1.10.1")


def a1111_png(folder: Path, n: int, prompt: str, model="v1-5-pruned-emaonly", sampler="DPM++ 2M",
              seed: int | None = None) -> Path:
    """A picture as A1111 saves it: NNNNN-SEED.png with its infotext in the `parameters` text chunk."""
    from PIL import PngImagePlugin

    folder.mkdir(parents=True, exist_ok=True)
    seed = 1000 + n if seed is None else seed
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", A1111_INFOTEXT.format(prompt=prompt, steps=20 + n % 5, sampler=sampler, seed=seed,
                                                      model=model))
    path = folder / f"{n:05d}-{seed}.png"
    Image.new("RGB", (8, 12), (n % 255, 0, 0)).save(path, pnginfo=info)
    return path


@pytest.fixture
def store(tmp_path):
    s = HistoryStore(tmp_path / "history.sqlite3", tmp_path / "outputs")
    yield s
    s.close()


def test_generated_pictures_are_indexed_with_their_infotext(engine):
    req = dict(prompt="a red circle on a white background", negative_prompt="blue", steps=2, width=64, height=64,
               seed=11, batch_size=2, override_settings={"sd_model_checkpoint": "sd1.safetensors"})
    result = engine.txt2img(req)
    items, _ = engine.history.search(Query(q="red circle"))
    assert sorted(i["path"] for i in items) == sorted(str(p) for p in result.saved_paths)
    first = engine.history.get(min(i["id"] for i in items))
    assert first["prompt"] == "a red circle on a white background" and first["negative_prompt"] == "blue"
    assert (first["seed"], first["steps"], first["width"], first["height"]) == (11, 2, 64, 64)
    assert first["model"] == "sd1" and first["infotext"] == result.infotexts[result.index_of_first_image]
    assert engine.history.search(Query(q="green square"))[0] == []


def test_search_filters_and_pages(store, tmp_path):
    out = tmp_path / "outputs" / "txt2img-images" / "2024-05-01"
    for n in range(7):
        path = a1111_png(out, n, "a red circle" if n % 2 else "a blue square",
                         sampler="Euler a" if n < 3 else "DPM++ 2M")
        store.add(path, Image.open(path).info["parameters"])
    circles, _ = store.search(Query(q="circle red"))  # words in any order
    assert [i["prompt"] for i in circles] == ["a red circle"] * 3
    assert len(store.search(Query(sampler="Euler a"))[0]) == 3
    page1, cursor = store.search(Query(limit=3))
    page2, cursor2 = store.search(Query(limit=3, cursor=cursor))
    page3, end = store.search(Query(limit=3, cursor=cursor2))
    ids = [i["id"] for i in page1 + page2 + page3]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 7 and end is None
    store.update(ids[0], {"starred": True, "board": "keepers", "rating": 4})
    assert [i["id"] for i in store.search(Query(starred=True))[0]] == [ids[0]]
    assert store.search(Query(board="keepers"))[0][0]["rating"] == 4
    assert store.search(Query(q='"; DROP TABLE images; --'))[0] == []  # a user's punctuation is never syntax

    # oldest first, and best rated first (newest among equals), page by page
    oldest, cursor = store.search(Query(limit=4, order="oldest"))
    rest, end = store.search(Query(limit=4, order="oldest", cursor=cursor))
    assert [i["id"] for i in oldest + rest] == sorted(ids) and end is None
    for image_id, rating in ((ids[3], 5), (ids[5], 4), (ids[6], 5)):
        store.update(image_id, {"rating": rating})
    ranked, cursor = [], None
    while True:
        items, cursor = store.search(Query(limit=2, order="rating", cursor=cursor))
        ranked += items
        if cursor is None:
            break
    assert [(i["rating"], i["id"]) for i in ranked][:4] == [(5, ids[3]), (5, ids[6]), (4, ids[0]), (4, ids[5])]
    assert len(ranked) == 7 and sorted(i["id"] for i in ranked) == sorted(ids)  # every picture once
    with pytest.raises(HistoryError, match="order: one of newest, oldest, rating"):
        store.search(Query(order="random"))


def test_delete_goes_to_the_trash_and_restores(store, tmp_path):
    path = a1111_png(tmp_path / "outputs" / "txt2img-images", 1, "a cat")
    path.with_suffix(".txt").write_text("a cat\nSteps: 20\n")  # the setting save_txt's parameters file
    image_id = store.add(path, None)
    row = store.delete(image_id)
    trash = tmp_path / "outputs" / ".trash" / "txt2img-images" / path.name
    assert row["deleted"] and not path.exists() and trash.exists()
    assert trash.with_suffix(".txt").is_file() and not path.with_suffix(".txt").exists()  # it goes with it
    assert store.search(Query())[0] == [] and store.reconcile()["imported"] == 0  # the trash is not re-imported
    assert not store.restore(image_id)["deleted"] and path.exists() and not trash.exists()
    assert path.with_suffix(".txt").read_text() == "a cat\nSteps: 20\n"


def test_the_trash_lists_deleted_pictures_where_their_files_are_now(store, tmp_path):
    folder = tmp_path / "outputs" / "txt2img-images"
    ids = [store.add(a1111_png(folder, n, f"a cat number {n}"), None) for n in range(3)]
    store.delete(ids[0])
    store.delete(ids[2])
    trash, _ = store.search(Query(trash=True))
    assert [row["id"] for row in trash] == [ids[2], ids[0]]  # newest first, only the deleted ones
    assert all(store.file_path(row).is_file() and ".trash" in store.file_path(row).parts for row in trash)
    kept = store.get(ids[1])
    assert store.file_path(kept) == Path(kept["path"]) and store.file_path(kept).is_file()
    store.restore(ids[0])
    assert [row["id"] for row in store.search(Query(trash=True))[0]] == [ids[2]]
    assert sorted(row["id"] for row in store.search(Query())[0]) == [ids[0], ids[1]]


def test_update_many_files_pictures_on_a_board_in_one_go(store, tmp_path):
    folder = tmp_path / "outputs" / "txt2img-images"
    ids = [store.add(a1111_png(folder, n, f"a dog number {n}"), None) for n in range(4)]
    assert store.update_many([ids[0], ids[2], 999999], {"board": "keepers"}) == 2  # an unknown id is skipped
    assert sorted(row["id"] for row in store.search(Query(board="keepers"))[0]) == [ids[0], ids[2]]
    assert store.update_many([], {"board": "x"}) == 0
    with pytest.raises(ValueError, match="board: a name of at most 200"):
        store.update_many(ids, {"board": "b" * 201})
    with pytest.raises(ValueError, match="cannot change path"):
        store.update_many(ids, {"path": "/etc/passwd"})
    assert store.search(Query(board="b" * 201))[0] == []


def test_request_fields_recreate_the_picture_from_its_infotext():
    from modules.history import request_fields

    fields = request_fields(A1111_INFOTEXT.format(prompt="a fox", steps=21, sampler="DPM++ 2M", seed=77,
                                                  model="v1-5-pruned-emaonly"))
    assert (fields["prompt"], fields["negative_prompt"], fields["seed"], fields["steps"]) == (
        "a fox", "lowres, watermark", 77, 21)
    assert (fields["width"], fields["height"], fields["sampler_name"], fields["scheduler"]) == (
        512, 768, "DPM++ 2M", "Karras")
    assert fields["override_settings"]["sd_model_checkpoint"] == "6ce0161689"  # the model by its hash, as A1111


def test_history_tab_rerun_says_what_it_queues_and_why_it_cannot(engine):
    from modules.history import HistoryError
    from modules.job_queue import ensure_queue
    from webui import history_tab

    folder = engine.paths.outputs_dir / "txt2img-images"
    a1111 = engine.history.add(path := a1111_png(folder, 1, "a fox"), Image.open(path).info["parameters"])
    bare = engine.history.add(a1111_png(folder, 2, "no words"), None)
    body, note = history_tab.rerun_request(engine, engine.history.get(a1111))
    assert (body["prompt"], body["seed"], body["steps"], body["do_not_save_samples"]) == ("a fox", 1001, 21, False)
    assert body["override_settings"]["samples_save"] is True  # saved, so it lands in the history
    assert "sd_model_checkpoint" not in body["override_settings"]  # not here: the current model is used
    assert "its model v1-5-pruned-emaonly is not here" in note
    with pytest.raises(HistoryError, match="no infotext"):
        history_tab.rerun_request(engine, engine.history.get(bare))
    assert "Pick a picture first." in history_tab.rerun(engine, {}, "")[0]
    queue = ensure_queue(engine)
    queue.pause()  # listed, not run: this test is about what is queued
    status, job_id, _ = history_tab.rerun(engine, {"selected": a1111}, "127.0.0.1")
    assert f"Queued as job {job_id} (txt2img, seed 1001; its model" in status
    job = queue.get(job_id)
    assert (job.mode, job.source, job.status, job.body["prompt"]) == ("txt2img", "ui", "queued", "a fox")
    queue.cancel(job_id)
    queue.shutdown()


def test_reconcile_imports_an_a1111_outputs_folder_marks_missing_and_rebuilds(tmp_path):
    out = tmp_path / "outputs"
    words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima".split()
    paths = [a1111_png(out / "txt2img-images" / f"2023-01-0{1 + n % 3}", n, f"a picture of {words[n]}") for n in
             range(12)]
    (out / "notes.png").write_text("not a picture")  # skipped with a message, not a crash
    (out / "txt2img-grids").mkdir()
    (out / "txt2img-grids" / "grid-0001.png").write_bytes(paths[1].read_bytes())  # grids are not indexed
    db = tmp_path / "history.sqlite3"
    store = HistoryStore(db, out)
    assert store.reconcile() == {"imported": 12, "missing": 0, "returned": 0, "moved": 0}
    (row,) = store.search(Query(q="picture foxtrot"))[0]
    assert (row["model"], row["sampler"], row["seed"], row["width"]) == ("v1-5-pruned-emaonly", "DPM++ 2M", 1005, 512)
    paths[0].unlink()
    assert store.reconcile()["missing"] == 1 and store.count() == 11
    store.close()
    for suffix in ("", "-wal", "-shm"):  # the database deleted: rebuilt from the files
        Path(str(db) + suffix).unlink(missing_ok=True)
    again = HistoryStore(db, out)
    assert again.reconcile()["imported"] == 11 and again.count() == 11
    again.close()


def test_a_moved_picture_keeps_its_star_and_an_old_database_gets_its_hashes(tmp_path):
    """Pictures are known by their sha256 too: one moved to another folder keeps its row (star, board) instead of
    becoming "missing" plus a new row; a database from before the column gets the hashes at the next start."""
    import hashlib

    out = tmp_path / "outputs"
    first, second = a1111_png(out / "day1", 1, "a lighthouse"), a1111_png(out / "day1", 2, "a harbor")
    db = tmp_path / "history.sqlite3"
    store = HistoryStore(db, out)
    store.reconcile()
    (row,) = store.search(Query(q="lighthouse"))[0]
    assert row["sha256"] == hashlib.sha256(first.read_bytes()).hexdigest()
    store.update(row["id"], {"starred": True, "board": "coast"})
    (out / "kept").mkdir()
    first.rename(out / "kept" / first.name)
    assert store.reconcile() == {"imported": 0, "missing": 0, "returned": 0, "moved": 1}
    moved = store.get(row["id"])
    assert moved["path"] == str(out / "kept" / first.name) and moved["starred"] and moved["board"] == "coast"
    assert store.count() == 2
    store.close()
    with sqlite3.connect(db) as conn:  # as a database made before the column: no hashes
        conn.execute("UPDATE images SET sha256 = NULL")
    again = HistoryStore(db, out)
    again.reconcile()
    (harbor,) = again.search(Query(q="harbor"))[0]
    assert harbor["sha256"] == hashlib.sha256(second.read_bytes()).hexdigest()
    again.close()


def test_a_corrupt_database_is_moved_aside_and_rebuilt(tmp_path, caplog):
    out = tmp_path / "outputs"
    a1111_png(out, 1, "a dog")
    db = tmp_path / "history.sqlite3"
    db.write_bytes(b"this is not a database" * 100)
    store = HistoryStore(db, out)
    assert store.reconcile()["imported"] == 1 and store.integrity() == "ok"
    assert [p.name.split(".corrupt-")[0] for p in tmp_path.glob("history.sqlite3.corrupt-*")] == ["history.sqlite3"]
    assert "moved it to" in caplog.text
    store.close()


_BURST = r"""
import sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from PIL import Image
from modules import images
from modules.history import HistoryStore
root = Path(sys.argv[2])
store = HistoryStore(root / "history.sqlite3", root / "outputs")
print("ready", flush=True)
n = 0
while True:  # save, then index: what a job does for each picture, as fast as it can
    text = f"burst picture {n}\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: {n}, Size: 8x8"
    path = images.save_sample(Image.new("RGB", (8, 8), (n % 255, 0, 0)), root / "outputs" / "burst", n, text)
    store.add(path, text)
    n += 1
"""


@pytest.mark.slow  # five processes killed mid-burst
def test_kill_9_during_a_burst_of_saves_leaves_rows_and_files_one_to_one(tmp_path):
    for round_ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", _BURST, str(ROOT), str(tmp_path)], stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.2 + 0.15 * round_)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    store = HistoryStore(tmp_path / "history.sqlite3", tmp_path / "outputs")
    assert store.integrity() == "ok"
    store.reconcile()
    files = {str(p) for p in (tmp_path / "outputs").rglob("*.png")}
    rows = {i["path"] for i in _all(store)}
    assert files == rows and len(files) > 5
    # half-written files are hidden temporaries (never indexed); the start's sweep removes them (the writers are
    # dead here, so no age is needed)
    fileio.sweep_stale_temp_files([tmp_path / "outputs"], min_age_s=0)
    assert not [p for p in (tmp_path / "outputs").rglob("*") if p.name.startswith(".") and p.is_file()]
    with sqlite3.connect(tmp_path / "history.sqlite3") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store.close()


def _all(store) -> list[dict]:
    items, cursor = store.search(Query(limit=500))
    while cursor is not None:
        more, cursor = store.search(Query(limit=500, cursor=cursor))
        items += more
    return items


# ---------------------------------------------------------------------------------------------------------------
# /sdapi/v1/history


@pytest.fixture
def api(engine, data_dir):
    from fastapi.testclient import TestClient

    from modules import cmd_args
    from modules.server import AppContext, create_app

    ns = cmd_args.parse_args(["--data-dir", str(data_dir), "--skip-install", "--nowebui"], env={})
    with TestClient(create_app(AppContext(args=ns, engine=engine))) as client:
        yield client


def test_history_api(api, engine):
    engine.txt2img(dict(prompt="a lighthouse at night", steps=2, width=64, height=64, seed=3, cfg_scale=5,
                        override_settings={"sd_model_checkpoint": "sd1.safetensors"}))
    body = api.get("/sdapi/v1/history", params={"q": "lighthouse"}).json()
    assert len(body["items"]) == 1 and body["next_cursor"] is None
    image_id = body["items"][0]["id"]
    assert api.get(f"/sdapi/v1/history/{image_id}").json()["seed"] == 3
    picture = api.get(f"/sdapi/v1/history/{image_id}/image")
    assert picture.status_code == 200 and picture.content[:8] == b"\x89PNG\r\n\x1a\n"
    params = api.get(f"/sdapi/v1/history/{image_id}/params").json()
    assert (params["prompt"], params["seed"], params["steps"], params["cfg_scale"]) == (
        "a lighthouse at night", 3, 2, 5.0)
    assert params["override_settings"]["sd_model_checkpoint"]
    again = engine.txt2img({k: v for k, v in params.items() if k != "override_settings"}
                           | {"override_settings": {"sd_model_checkpoint": "sd1.safetensors"}})  # recreates it
    assert again.images[0].tobytes() == Image.open(engine.history.get(image_id)["path"]).convert("RGB").tobytes()
    patched = api.patch(f"/sdapi/v1/history/{image_id}", json={"starred": True, "board": "night"}).json()
    assert patched["starred"] and patched["board"] == "night"
    assert api.get("/sdapi/v1/history", params={"starred": "true", "board": "night"}).json()["items"][0]["id"] == \
        image_id
    assert api.delete(f"/sdapi/v1/history/{image_id}").json()["deleted"]
    assert api.get(f"/sdapi/v1/history/{image_id}/image").status_code == 404
    assert not api.post(f"/sdapi/v1/history/{image_id}/restore").json()["deleted"]
    # bad input: 404 / 422 with a reason, never 500
    assert api.get("/sdapi/v1/history/999999").status_code == 404
    assert api.get("/sdapi/v1/history", params={"limit": 0}).status_code == 422
    assert api.get("/sdapi/v1/history", params={"since": "yesterday"}).status_code == 422
    bad_order = api.get("/sdapi/v1/history", params={"order": "random"})
    assert bad_order.status_code == 422 and "newest, oldest, rating" in bad_order.json()["detail"]
    assert api.get("/sdapi/v1/history", params={"order": "oldest"}).status_code == 200
    bad = api.patch(f"/sdapi/v1/history/{image_id}", json={"rating": 9})
    assert bad.status_code == 422 and "rating" in bad.json()["detail"]
    assert api.patch(f"/sdapi/v1/history/{image_id}", json={"path": "/etc/passwd"}).status_code == 422
    assert api.put(f"/sdapi/v1/history/{image_id}").status_code == 405


def test_delete_acts_on_the_thumbnail_the_page_shows_as_picked():
    """The Delete key right after a click: the server's pick may still be the previous one; the page's own
    highlighted thumbnail (its index) decides."""
    from webui.history_tab import shown_pick

    nav = {"ids": [30, 20, 10], "selected": 20}
    assert shown_pick(nav, 0)["selected"] == 30
    assert shown_pick(nav, -1) == nav and shown_pick(nav, 7) == nav and shown_pick(nav, None) == nav

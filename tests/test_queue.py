"""The visible queue (modules/job_queue.py, `/sdapi/v1/queue`): jobs submitted without waiting run one at a time in
the order shown, can be moved, cancelled and paused, give the same answer as the blocking call, respect the limits,
and survive a restart (queued ones run again; the one that was running is failed "interrupted by shutdown")."""
from __future__ import annotations

import base64
import io
import json
import threading
import time

import pytest
from PIL import Image

from modules.job_queue import JobStore, VisibleQueue

BODY = {"prompt": "a red circle", "steps": 2, "width": 64, "height": 64, "seed": 5, "subseed": 9,
        "override_settings": {"sd_model_checkpoint": "sd1.safetensors"}}


@pytest.fixture
def api(engine, data_dir):
    from fastapi.testclient import TestClient

    from modules import cmd_args
    from modules.server import AppContext, create_app

    ns = cmd_args.parse_args(["--data-dir", str(data_dir), "--skip-install", "--nowebui"], env={})
    with TestClient(create_app(AppContext(args=ns, engine=engine))) as client:
        yield client
    engine.visible_queue.shutdown()


def _wait(api, job_id, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = api.get(f"/sdapi/v1/queue/{job_id}").json()
        if job["status"] not in ("queued", "running"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def test_queued_jobs_run_in_the_order_shown_and_answer_as_the_blocking_call(api):
    assert api.post("/sdapi/v1/queue/pause").json() == {"paused": True}
    ids = [api.post("/sdapi/v1/queue/txt2img", json={**BODY, "seed": s}).json()["id"] for s in (1, 2, 3, 4)]
    listed = api.get("/sdapi/v1/queue").json()
    assert listed["paused"] and [j["id"] for j in listed["jobs"]] == ids
    assert [j["position"] for j in listed["jobs"]] == [0, 1, 2, 3] and listed["jobs"][0]["prompt"] == "a red circle"
    assert api.post(f"/sdapi/v1/queue/{ids[3]}/move", json={"position": 0}).status_code == 200  # last → next
    assert api.delete(f"/sdapi/v1/queue/{ids[1]}").json()["status"] == "cancelled"
    assert [j["id"] for j in api.get("/sdapi/v1/queue").json()["jobs"][:3]] == [ids[3], ids[0], ids[2]]
    api.post("/sdapi/v1/queue/resume")
    done = {i: _wait(api, i) for i in (ids[3], ids[0], ids[2])}
    assert all(d["status"] == "done" for d in done.values())
    assert done[ids[3]]["started"] < done[ids[0]]["started"] < done[ids[2]]["started"]  # the order shown
    blocking = api.post("/sdapi/v1/txt2img", json={**BODY, "seed": 4}).json()
    queued = done[ids[3]]["result"]

    def info(answer):  # the answer's info, but for the second it was made in
        return {k: v for k, v in json.loads(answer["info"]).items() if k != "job_timestamp"}

    assert queued["images"] == blocking["images"] and info(queued) == info(blocking)
    picture = Image.open(io.BytesIO(base64.b64decode(queued["images"][0])))
    assert picture.size == (64, 64)
    assert api.get(f"/sdapi/v1/queue/{ids[1]}").json()["status"] == "cancelled"


def test_bad_requests_unknown_ids_and_limits(api, engine):
    bad = api.post("/sdapi/v1/queue/txt2img", json={**BODY, "steps": -3})
    assert bad.status_code == 422  # refused now, not a failed job later
    assert api.post("/sdapi/v1/queue/img2img", json=BODY).status_code == 404  # no init image, as A1111's route
    assert api.get("/sdapi/v1/queue/nope").status_code == 404
    assert api.delete("/sdapi/v1/queue/nope").status_code == 404
    api.post("/sdapi/v1/queue/pause")
    engine.visible_queue.max_per_client = 2
    first = api.post("/sdapi/v1/queue/txt2img", json=BODY).json()["id"]
    api.post("/sdapi/v1/queue/txt2img", json=BODY)
    full = api.post("/sdapi/v1/queue/txt2img", json=BODY)
    assert full.status_code == 429 and "already waiting" in full.json()["detail"]
    assert api.post(f"/sdapi/v1/queue/{first}/move", json={"position": "top"}).status_code == 422
    api.delete(f"/sdapi/v1/queue/{first}")
    assert api.delete(f"/sdapi/v1/queue/{first}").status_code == 409  # already cancelled


def test_a_restart_runs_the_queued_jobs_and_fails_the_one_that_was_running(tmp_path):
    from modules.history import HistoryStore

    history = HistoryStore(tmp_path / "history.sqlite3", tmp_path / "outputs")
    ran = []
    first = VisibleQueue(lambda job: ran.append(job.id) or {"ok": True}, JobStore(history))
    first.pause()
    jobs = [first.submit("txt2img", {**BODY, "seed": s}, client="me") for s in range(3)]
    first.move(jobs[2].id, 0)
    jobs[0].status = "running"  # the process dies while this one runs
    first.store.save(jobs[0])
    first.shutdown()
    second = VisibleQueue(lambda job: ran.append(job.id) or {"ok": True}, JobStore(history))
    lost = second.get(jobs[0].id)
    assert (lost.status, lost.error) == ("failed", "interrupted by shutdown")
    for job in (jobs[2], jobs[1]):
        assert second.wait(job.id).status == "done"
    assert ran == [jobs[2].id, jobs[1].id]  # in the order they had
    second.shutdown()
    history.close()


def test_queue_settings_limit_all_waiting_and_choose_not_to_resume(tmp_path):
    from modules.history import HistoryStore
    from modules.job_queue import QueueError

    history = HistoryStore(tmp_path / "history.sqlite3", tmp_path / "outputs")
    first = VisibleQueue(lambda job: {}, JobStore(history), max_total=2)
    first.pause()
    first.submit("txt2img", BODY, client="a")
    first.submit("txt2img", BODY, client="b")
    with pytest.raises(QueueError, match="the queue is full") as e:
        first.submit("txt2img", BODY, client="c")  # another client, but 2 wait in all
    assert e.value.status == 429
    first.shutdown()
    again = VisibleQueue(lambda job: {}, JobStore(history), resume=False)  # "run after a restart" turned off
    assert [j.status for j in again.jobs()] == [] and again.paused is False
    with history._lock:
        statuses = [r[0] for r in history._writer.execute("SELECT status FROM jobs")]
    assert statuses == ["cancelled", "cancelled"]
    again.shutdown()
    history.close()


def test_queue_limits_come_from_the_settings(engine, data_dir):
    from fastapi.testclient import TestClient

    from modules import cmd_args
    from modules.server import AppContext, create_app

    engine.settings.set("queue_max_per_client", 1)
    engine.settings.set("queue_max_total", 7)
    ns = cmd_args.parse_args(["--data-dir", str(data_dir), "--skip-install", "--nowebui"], env={})
    with TestClient(create_app(AppContext(args=ns, engine=engine))) as client:
        assert (engine.visible_queue.max_per_client, engine.visible_queue.max_total) == (1, 7)
        client.post("/sdapi/v1/queue/pause")
        assert client.post("/sdapi/v1/queue/txt2img", json=BODY).status_code == 200
        assert client.post("/sdapi/v1/queue/txt2img", json=BODY).status_code == 429  # one per client
    engine.visible_queue.shutdown()


_WORKER = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from PIL import Image
from modules import images
from modules.history import HistoryStore
from modules.job_queue import JobStore, VisibleQueue
root = Path(sys.argv[2])
store = HistoryStore(root / "history.sqlite3", root / "outputs")

def run(job):  # what a generation does: pictures saved then indexed, one after another, until it is killed
    for n in range(1000):
        text = f"{job.body['prompt']} {n}\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: {n}, Size: 8x8"
        path = images.save_sample(Image.new("RGB", (8, 8), (n % 255, 0, 0)), root / "outputs" / job.id, n, text)
        store.add(path, text)
        time.sleep(0.01)

queue = VisibleQueue(run, JobStore(store))
if len(sys.argv) > 3:
    for n in range(5):
        queue.submit("txt2img", {"prompt": f"job {n}"}, "ui", "me")
print("ready", flush=True)
time.sleep(60)
"""


@pytest.mark.slow  # processes killed mid-job
def test_kill_9_during_a_job_fails_it_keeps_the_queue_and_the_pictures(tmp_path):
    """Five times: a process killed while its job saves pictures. Each start fails the job that was running
    ("interrupted by shutdown"), runs the next queued one, and the database stays whole, rows = files."""
    import os
    import signal
    import sqlite3
    import subprocess
    import sys
    from pathlib import Path

    from modules import fileio
    from modules.history import HistoryStore
    from tests.test_history import _all

    root = Path(__file__).resolve().parent.parent
    for round_ in range(5):
        args = [sys.executable, "-c", _WORKER, str(root), str(tmp_path)] + (["queue"] if round_ == 0 else [])
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.time() + 30
        while time.time() < deadline and len(list((tmp_path / "outputs").rglob("*.png"))) <= 5 * (round_ + 1):
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    with sqlite3.connect(tmp_path / "history.sqlite3") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        jobs = conn.execute("SELECT body, status, error FROM jobs ORDER BY position").fetchall()
        ids = {row[0] for row in conn.execute("SELECT id FROM jobs")}
    # each start failed the one killed before it and ran the next; the last one was running when killed
    assert [(json.loads(b)["prompt"], s, e) for b, s, e in jobs] == [
        *[(f"job {n}", "failed", "interrupted by shutdown") for n in range(4)], ("job 4", "running", "")]
    store = HistoryStore(tmp_path / "history.sqlite3", tmp_path / "outputs")
    store.reconcile()
    files = {str(p) for p in (tmp_path / "outputs").rglob("*.png")}
    assert files == {i["path"] for i in _all(store)} and len(files) > 25
    assert {Path(p).parent.name for p in files} == ids  # every job saved its pictures before it was killed
    fileio.sweep_stale_temp_files([tmp_path / "outputs"], min_age_s=0)
    assert not [p for p in (tmp_path / "outputs").rglob("*") if p.name.startswith(".") and p.is_file()]
    store.close()


def test_a_blocking_api_call_is_a_listed_job_and_its_pictures_are_not_kept(api):
    answer = api.post("/sdapi/v1/txt2img", json={**BODY, "prompt": "listed while it ran"})
    assert answer.status_code == 200 and len(answer.json()["images"]) == 1
    (job,) = [j for j in api.get("/sdapi/v1/queue").json()["jobs"] if j["prompt"] == "listed while it ran"]
    assert (job["source"], job["status"], job["client"]) == ("api", "done", "testclient")
    assert "result" not in api.get(f"/sdapi/v1/queue/{job['id']}").json()  # handed to its caller, not kept
    bad = api.post("/sdapi/v1/txt2img", json={**BODY, "override_settings": {"sd_model_checkpoint": "nope"}})
    assert bad.status_code == 400 and "nope" in bad.json()["detail"]  # the caller's error, through the queue


def test_generate_forever_queues_the_job_again_until_turned_off():
    from modules.job_queue import QueueError

    runs = []
    queue = VisibleQueue()
    watching = threading.Event()

    def page():  # what a page following the chain does: shows each result once it is done
        while not watching.is_set():
            for j in queue.jobs():
                if j.status == "done":
                    j.delivered = True
            time.sleep(0.01)

    follower = threading.Thread(target=page)
    follower.start()
    first = queue.submit("txt2img", {"prompt": "again"}, "ui", "me",
                         work=lambda: runs.append(1) or time.sleep(0.05) or "picture", forever=True)
    deadline = time.time() + 10
    while len(runs) < 3 and time.time() < deadline:
        time.sleep(0.01)
    assert queue.stop_forever("someone else") == 0
    assert queue.stop_forever("me", "txt2img") == 1  # the one waiting or running now is the last
    time.sleep(0.2)
    watching.set()
    follower.join()
    chain = [first]
    while chain[-1].next_id:
        chain.append(queue.wait(chain[-1].next_id))
    assert len(runs) == len(chain) >= 3 and all(j.status == "done" and j.result == "picture" for j in chain)
    for j in chain:
        j.delivered = False
    assert [j.id for j in queue.undelivered("me", "txt2img")] == [j.id for j in chain]  # no page showed them yet
    chain[0].delivered = True
    assert queue.undelivered("me", "txt2img")[0] is chain[1] and queue.undelivered("me", "img2img") == []
    # nobody following (the tab was closed): the chain stops when a result two jobs back was never shown
    alone = queue.submit("txt2img", {"prompt": "unseen"}, "ui", "gone", work=lambda: "picture", forever=True)
    second = queue.wait(queue.wait(alone.id).next_id)
    third = queue.wait(queue.wait(second.id).next_id)
    assert queue.wait(third.id).status == "done" and third.next_id is None
    failing = queue.submit("txt2img", {}, "ui", "me", work=lambda: 1 / 0, forever=True)
    assert queue.wait(failing.id).status == "failed" and failing.next_id is None  # a failure ends the chain
    assert isinstance(failing.exception, ZeroDivisionError)
    queue.pause()  # a blocking caller whose job is cancelled before it runs gets an error, not a hang
    raised = []

    def caller():
        try:
            queue.call("txt2img", {}, lambda: 1)
        except QueueError as e:
            raised.append(e)

    t = threading.Thread(target=caller)
    t.start()
    deadline = time.time() + 5
    while not [j for j in queue.jobs() if j.status == "queued"] and time.time() < deadline:
        time.sleep(0.01)
    (queued,) = [j for j in queue.jobs() if j.status == "queued"]
    queue.cancel(queued.id)
    t.join(5)
    assert [e.status for e in raised] == [409] and "cancelled in the queue" in str(raised[0])
    queue.shutdown()


def test_a_ui_job_is_stored_whole_with_its_pictures_and_runs_again_after_a_restart(tmp_path, engine):
    from modules.history import HistoryStore
    from modules.job_queue import body_from_fields, fields_from_body, request_from_body, run_stored_ui_job
    from modules.request_types import RequestError

    picture = Image.new("RGB", (16, 8), (200, 10, 10))
    fields = {"prompt": "from the page", "steps": 2, "width": 64, "height": 64, "init_images": [picture],
              "denoising_strength": 0.5}
    body = body_from_fields(fields)
    assert json.loads(json.dumps(body)) == body  # plain JSON
    again = fields_from_body(body)["init_images"][0]
    assert again.size == (16, 8) and again.getpixel((3, 3)) == (200, 10, 10)
    req = request_from_body("img2img", body)
    assert req.prompt == "from the page" and req.init_images[0].tobytes() == picture.tobytes()
    assert body_from_fields({"prompt": "x", "thing": object()}) is None  # cannot be stored: runs, not resumed

    history = HistoryStore(tmp_path / "history.sqlite3", tmp_path / "outputs")
    first = VisibleQueue(store=JobStore(history))
    first.pause()
    stored = first.submit("txt2img", {**BODY, "prompt": "resumed"}, "ui", "browser-1", work=lambda: None)
    click = first.submit("txt2img", {"prompt": "with a script"}, "ui", "browser-1", work=lambda: None,
                         resumable=False)
    first.shutdown()
    second = VisibleQueue(store=JobStore(history))
    second.pause()
    assert second.get(click.id).status == "cancelled" and "cannot be stored whole" in second.get(click.id).error
    second.register("ui", lambda job: run_stored_ui_job(engine, job))
    second.resume()
    done = second.wait(stored.id)
    assert done.status == "done" and done.result.images[0].size == (64, 64)
    assert second.undelivered("browser-1", "txt2img") == [done]  # the page re-attaches to it after the restart
    mismatch = {**BODY, "__script_args__": [1], "__scripts__": ["a script no longer here"]}
    with pytest.raises(RequestError, match="scripts have changed"):
        run_stored_ui_job(engine, type(stored)(id="x", mode="txt2img", body=mismatch))
    second.shutdown()
    third = VisibleQueue(store=JobStore(history))  # an API job, and no API to run it: failed, saying why
    third.pause()
    api_job = third.submit("txt2img", BODY, "api", "x")
    assert third.fail_unrunnable() == [api_job] and "--api" in api_job.error
    third.shutdown()
    history.close()


def test_a_dispatch_bug_fails_no_more_than_its_job_and_the_queue_goes_on(caplog):
    """Every generation waits on the queue's worker: an executor that raises must not stop it."""
    class Broken:
        calls = 0

        def assign(self, queued, queue):
            Broken.calls += 1
            if Broken.calls == 1:
                raise RuntimeError("a bug in choosing")
            return (queued[0], "lane") if queued else None

        def launch(self, job, lane, queue):
            raise OSError("cannot reach the worker")

    queue = VisibleQueue()
    queue.executor = Broken()
    job = queue.submit("txt2img", {"prompt": "x"}, work=lambda: "never")
    assert queue.wait(job.id, timeout=10).status == "failed" and "cannot reach the worker" in job.error
    assert "dispatching failed" in caplog.text
    queue.executor = None
    assert queue.wait(queue.submit("txt2img", {}, work=lambda: "ok").id, timeout=10).result == "ok"
    queue.shutdown()

"""The visible queue (modules/job_queue.py, `/sdapi/v1/queue`): jobs submitted without waiting run one at a time in
the order shown, can be moved, cancelled and paused, give the same answer as the blocking call, respect the limits,
and survive a restart (queued ones run again; the one that was running is failed "interrupted by shutdown")."""
from __future__ import annotations

import base64
import io
import json
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

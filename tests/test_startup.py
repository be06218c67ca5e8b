"""The page answers while the engine and UI are still being built (modules/startup.py)."""
from __future__ import annotations

import threading
import time

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from modules.startup import StartingApp, build_in_background
from tests.test_launch import free_port


@pytest.fixture
def starting_server():
    starting = StartingApp()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(starting, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield starting, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def _real_app(events: list[str]) -> FastAPI:
    app = FastAPI()

    @app.on_event("startup")
    def started():
        events.append("startup")

    @app.on_event("shutdown")
    def stopped():
        events.append("shutdown")

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.post("/sdapi/v1/txt2img")
    def txt2img():
        return {"images": []}

    return app


def test_loading_page_then_the_real_app(starting_server):
    starting, url = starting_server
    release = threading.Event()
    events: list[str] = []

    def build(stage):
        stage("loading the engine")
        release.wait(20)
        return _real_app(events)

    ready = threading.Event()
    build_in_background(starting, build, on_ready=lambda app: ready.set(), on_error=lambda e: None)

    page = httpx.get(url + "/")
    assert page.status_code == 200 and "Loading: loading the engine" in page.text
    api = httpx.post(url + "/sdapi/v1/txt2img", json={})
    assert api.status_code == 503 and api.headers["retry-after"] == "1"
    assert "starting" in api.json()["detail"]
    health = httpx.get(url + "/healthz")
    assert health.status_code == 503 and health.json()["status"] == "starting"
    assert events == []

    release.set()
    assert ready.wait(20)
    assert events == ["startup"]  # the real app's start-up events ran before it got requests
    assert httpx.get(url + "/healthz").json() == {"status": "ok"}
    assert httpx.post(url + "/sdapi/v1/txt2img", json={}).json() == {"images": []}


def test_a_failed_start_is_shown_and_reported(starting_server):
    starting, url = starting_server
    errors = []
    done = threading.Event()

    def build(stage):
        raise OSError("cannot create data folders: read-only file system")

    build_in_background(starting, build, on_ready=lambda app: None,
                        on_error=lambda e: (errors.append(e), done.set()))
    assert done.wait(10)
    health = httpx.get(url + "/healthz")
    assert health.status_code == 503 and "read-only file system" in health.json()["error"]
    assert "failed to start" in httpx.get(url + "/sdapi/v1/options").json()["detail"]


def test_start_up_leaves_its_garbage_freed_and_what_it_built_out_of_later_collections(starting_server):
    """Start-up runs without the cyclic collector (its full passes over the growing heap were a fifth of start-up);
    once ready, one pass frees what start-up left behind and the rest is frozen, so the passes after a checkpoint
    switch or during a job do not walk the UI and the imported modules again."""
    import gc
    import weakref

    starting, url = starting_server
    seen = {}

    class Node:
        pass

    def build(stage):
        seen["collector on while building"] = gc.isenabled()
        a, b = Node(), Node()
        a.other, b.other = b, a  # garbage only the collector frees
        seen["garbage"] = weakref.ref(a)
        return _real_app([])

    gc.unfreeze()  # what the test run froze before (tests/conftest.py): the count below is start-up's own
    assert gc.get_freeze_count() == 0
    ready = threading.Event()
    build_in_background(starting, build, on_ready=lambda app: ready.set(), on_error=lambda e: None)
    assert ready.wait(20)
    assert seen["collector on while building"] is False
    assert seen["garbage"]() is None
    assert gc.isenabled() and gc.get_freeze_count() > 0
    assert httpx.get(url + "/healthz").json() == {"status": "ok"}


def test_a_failed_start_turns_the_collector_back_on(starting_server):
    import gc

    starting, url = starting_server
    done = threading.Event()

    def build(stage):
        raise RuntimeError("no")

    build_in_background(starting, build, on_ready=lambda app: None, on_error=lambda e: done.set())
    assert done.wait(10)
    assert gc.isenabled()


def test_sigterm_while_loading_stops_at_once(tmp_path):
    """`docker stop` right after start: the loading thread does not hold the process."""
    import signal
    import subprocess
    import sys

    from tests.test_launch import ROOT

    proc = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), "--skip-install", "--port", str(free_port()),
                             "--data-dir", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=str(ROOT))
    for line in proc.stdout:
        if line.startswith("Running on local URL:"):
            break
    url = line.split("URL:", 1)[1].strip()
    assert "Loading" in httpx.get(url + "/", timeout=10).text  # the loading page, the engine still importing
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=20)
    assert time.monotonic() - started < 5
    assert "Traceback" not in proc.stderr.read()


def test_stopping_ends_open_streams_and_still_answers_requests_in_flight(starting_server):
    """What SIGTERM meets with a page open: its event stream ends at once (no cancellation traceback when the
    grace runs out), while a request whose answer is still being made gets it."""
    import asyncio

    from fastapi.responses import StreamingResponse

    starting, url = starting_server
    app = FastAPI()
    slow_started = threading.Event()

    @app.get("/stream")
    async def stream():
        async def beats():
            while True:
                yield b"data: beat\n\n"
                await asyncio.sleep(0.05)
        return StreamingResponse(beats(), media_type="text/event-stream")

    @app.get("/slow")
    async def slow():
        slow_started.set()
        await asyncio.sleep(0.5)
        return {"answer": 42}

    starting.ready(app)
    chunks, answers = [], []

    def read_stream():
        with httpx.stream("GET", url + "/stream", timeout=10) as r:
            for chunk in r.iter_bytes():
                chunks.append(chunk)

    reader = threading.Thread(target=read_stream)
    asker = threading.Thread(target=lambda: answers.append(httpx.get(url + "/slow", timeout=10).json()))
    reader.start()
    asker.start()
    assert slow_started.wait(5)
    started = time.monotonic()
    starting.close_streams()
    reader.join(5)
    asker.join(5)
    assert not reader.is_alive() and time.monotonic() - started < 1, "the stream did not end"
    assert chunks and answers == [{"answer": 42}]


_BIND_PROBE = """
import os, runpy, sys
sys.path.insert(0, sys.argv[1])
sys.argv = ["launch.py", "--skip-install", "--data-dir", sys.argv[2], "--port", "7860"]  # never bound
import modules.server
def bind(host, port):
    print(" ".join(name for name in ("torch", "diffusers", "transformers", "gradio") if name in sys.modules) or "-")
    os._exit(0)
modules.server._bind = bind
runpy.run_path(os.path.join(sys.path[0], "launch.py"), run_name="__main__")
"""


def test_the_page_answers_before_torch_is_imported_with_checkpoints_present(tmp_path, tiny_models):
    """The start-up page needs no engine: launch.py binds before importing torch, diffusers or gradio, also when the
    checkpoint folder holds models whose headers it reads for the no-checkpoint hint (a regression imported torch
    there and the page answered ~1 s later)."""
    import subprocess
    import sys

    from tests.test_launch import ROOT

    ckpt = tmp_path / "models" / "Stable-diffusion"
    ckpt.mkdir(parents=True)
    (ckpt / "model.safetensors").symlink_to(tiny_models.path("sd1.safetensors"))
    out = subprocess.run([sys.executable, "-c", _BIND_PROBE, str(ROOT), str(tmp_path)], capture_output=True,
                         text=True, timeout=60, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "-", out.stdout

"""The page answers from the first second: while the engine, extensions and UI are built in a background thread
(importing torch, diffusers and gradio takes most of start-up), ``StartingApp`` serves a "loading" page at ``/``,
``/healthz`` says ``starting``, and every other request gets 503 with ``Retry-After``. When the real app is ready,
its lifespan (Gradio's queue, extensions' start-up events) is run on the server's event loop and every request goes
to it from then on. Standard library only, so nothing heavy is imported before the socket answers.
"""
from __future__ import annotations

import asyncio
import html
import json
import logging
import threading
import time
from typing import Any, Callable

from modules.startup_heap import long_lived

log = logging.getLogger(__name__)

RETRY_AFTER_S = 1

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Stable Diffusion web UI</title>
<style>body{{font-family:system-ui,sans-serif;background:#fff;color:#1f2937;display:flex;align-items:center;
justify-content:center;height:100vh;margin:0}}@media (prefers-color-scheme: dark){{body{{background:#0b0f19;
color:#e5e7eb}}}}.box{{text-align:center}}.bar{{width:16em;height:4px;background:#d1d5db;
margin:1em auto;overflow:hidden;border-radius:2px}}.bar div{{width:30%;height:100%;background:#f97316;
animation:slide 1.2s infinite ease-in-out}}@keyframes slide{{0%{{margin-left:-30%}}100%{{margin-left:100%}}}}
#error{{color:#f87171;white-space:pre-wrap;text-align:left;max-width:50em}}</style></head>
<body><div class="box" id="starting"><h1>Stable Diffusion web UI</h1><div class="bar"><div></div></div>
<p id="stage">Loading: {stage}</p><p id="error"></p></div>
<script>
(function poll() {{
  fetch("/healthz", {{cache: "no-store"}}).then(function (r) {{ return r.json().then(function (j) {{
    if (r.ok) {{ location.reload(); return; }}
    if (j.error) {{ document.getElementById("error").textContent = j.error; return; }}
    document.getElementById("stage").textContent = "Loading: " + j.stage;
    setTimeout(poll, 250);
  }}); }}).catch(function () {{ setTimeout(poll, 1000); }});
}})();
</script></body></html>
"""


class StartingApp:
    """ASGI app for uvicorn: the loading answers until ``ready(app)``; then the real app."""

    def __init__(self):
        self.app = None
        self.stage = "starting"
        self.error: str | None = None
        self.started = time.perf_counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_ready = threading.Event()
        self._inner_receive: asyncio.Queue | None = None
        self._inner_task: asyncio.Task | None = None
        self._inner_stopped: asyncio.Event | None = None
        self._stopping: asyncio.Event | None = None

    # -- what the background builder calls ------------------------------------------------------------------------

    def set_stage(self, stage: str) -> None:
        self.stage = stage

    def fail(self, message: str) -> None:
        self.error = message

    def ready(self, app, timeout: float = 120) -> None:
        """Run `app`'s lifespan start-up on the server's loop, then route every request to it (blocks until done)."""
        if not self._loop_ready.wait(timeout):
            raise RuntimeError("the server's event loop did not start")
        future = asyncio.run_coroutine_threadsafe(self._start_inner(app), self._loop)
        future.result(timeout)
        self.app = app

    def close_streams(self) -> None:
        """The server is stopping: open responses (a page's event streams) end now, as if their client had gone,
        instead of being cancelled mid-stream when the grace runs out (a traceback in the console). Thread-safe."""
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)

    # -- ASGI -----------------------------------------------------------------------------------------------------

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif self.app is not None and scope["type"] == "http" and self._stopping is not None:
            await self._until_stopping(scope, receive, send)
        elif self.app is not None:
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1013})  # try again later
        else:
            await self._answer_starting(scope, send)

    async def _until_stopping(self, scope, receive, send):
        """Once the server is stopping, a response that streams (no Content-Length: a page's event stream) hears
        that its client left; any other is finished as usual (cut short, a file would break its declared length,
        and a middleware still waiting for a response would raise "No response returned")."""
        stopping, started = self._stopping, asyncio.Event()  # started: a streaming response has begun
        complete = False

        async def first(*awaitables) -> set:
            tasks = [asyncio.ensure_future(a) for a in awaitables]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:  # also when this receive is cancelled (its response finished)
                for task in tasks:
                    if not task.done():
                        task.cancel()
            return {tasks.index(t) for t in done}

        async def receive_until_stopping():
            if stopping.is_set() and started.is_set():
                return {"type": "http.disconnect"}
            message = asyncio.ensure_future(receive())
            try:
                while not message.done():
                    waits = [asyncio.shield(message), stopping.wait() if not stopping.is_set() else started.wait()]
                    if 0 in await first(*waits) or (stopping.is_set() and started.is_set()):
                        break
            finally:
                if not message.done():
                    message.cancel()
                    message = None
            return message.result() if message is not None else {"type": "http.disconnect"}

        async def tracked_send(message):
            nonlocal complete
            if message["type"] == "http.response.start":
                if not any(name.lower() == b"content-length" for name, _ in message.get("headers", ())):
                    started.set()
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                complete = True
            await send(message)

        await self.app(scope, receive_until_stopping, tracked_send)
        if stopping.is_set() and started.is_set() and not complete:  # end the stream cleanly
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _answer_starting(self, scope, send):
        path = scope.get("path", "")
        if self.error is None:
            detail = f"the server is starting ({self.stage}); try again in a moment"
        else:
            detail = f"the server failed to start: {self.error}"
        if path in ("", "/") and scope.get("method") in ("GET", "HEAD"):
            body = _PAGE.format(stage=html.escape(self.stage)).encode()
            await _respond(send, 200, body, "text/html; charset=utf-8", {"cache-control": "no-store"})
            return
        if path == "/healthz":
            payload: dict[str, Any] = {"status": "starting" if self.error is None else "failed", "stage": self.stage}
            if self.error is not None:
                payload["error"] = self.error
        else:
            payload = {"error": "ServiceUnavailable", "detail": detail, "body": "", "errors": ""}
        await _respond(send, 503, json.dumps(payload).encode(), "application/json",
                       {"retry-after": str(RETRY_AFTER_S), "cache-control": "no-store"})

    async def _lifespan(self, receive, send):
        self._loop = asyncio.get_running_loop()
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._stopping = asyncio.Event()
                self._loop_ready.set()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._stop_inner()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _start_inner(self, app):
        self._inner_receive = asyncio.Queue()
        started = asyncio.Event()
        self._inner_stopped = asyncio.Event()
        failure: list[str] = []

        async def inner_send(message):
            kind = message["type"]
            if kind in ("lifespan.startup.complete", "lifespan.startup.failed"):
                if kind.endswith("failed"):
                    failure.append(message.get("message", ""))
                started.set()
            elif kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                self._inner_stopped.set()

        async def run():
            try:
                await app({"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}},
                          self._inner_receive.get, inner_send)
            finally:
                started.set()
                self._inner_stopped.set()

        await self._inner_receive.put({"type": "lifespan.startup"})
        self._inner_task = asyncio.get_running_loop().create_task(run())
        await started.wait()
        if failure:
            raise RuntimeError(f"start-up events failed: {failure[0]}")

    async def _stop_inner(self):
        if self._inner_task is None or self._inner_task.done():
            return
        await self._inner_receive.put({"type": "lifespan.shutdown"})
        try:
            await asyncio.wait_for(self._inner_stopped.wait(), timeout=5)
        except asyncio.TimeoutError:
            self._inner_task.cancel()


async def _respond(send, status: int, body: bytes, content_type: str, headers: dict[str, str]):
    raw = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def build_in_background(starting: StartingApp, build: Callable[[Callable[[str], None]], Any],
                        on_ready: Callable[[Any], None], on_error: Callable[[BaseException], None]) -> threading.Thread:
    """Run ``build(set_stage)`` (returns the real app) in a daemon thread, then hand the app to `starting`. The
    build runs without the garbage collector's passes and leaves what it built frozen (modules/startup_heap.py):
    no model is loaded by then."""

    def run():
        try:
            with long_lived():
                app = build(starting.set_stage)
                starting.set_stage("starting the UI")
                starting.ready(app)
        except BaseException as e:  # noqa: BLE001 - reported to the page and the console, then the server stops
            starting.fail(f"{type(e).__name__}: {e}")
            on_error(e)
            return
        on_ready(app)

    thread = threading.Thread(target=run, name="startup", daemon=True)
    thread.start()
    return thread

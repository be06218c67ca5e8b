"""The web UI served from a thread of the test process, built exactly as ``python launch.py --skip-install`` builds
it: the same flag parse (with the flags extensions add in preload.py), data folders, engine, extension scripts,
app and lifespan (Gradio's queue, ``on_app_started``). A fresh interpreter pays ~12 s of imports (torch, diffusers,
gradio) on 2 cores before it answers; here a server is up in about a second. What only a process can show (start-up
page, console lines, signals, ``--api-server-stop``) is tested on ``launch.py`` itself: test_launch, test_startup,
test_api. ``SharedCache`` is the browser the UI tests open it in."""
from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path

import launch  # noqa: F401 - tests/conftest.py puts the repository first on sys.path

GRACE_S = 1  # open streams (a page's heartbeat) get this long when a test stops its server


def free_socket() -> socket.socket:
    """A listening socket on a free loopback port. Its protocol is named: asyncio sets TCP_NODELAY only on
    connections whose socket says IPPROTO_TCP, and without it every keep-alive answer waits ~40 ms for an ACK."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


class Server:
    """``Server(data_dir, log).start(*flags)``: ``.url`` answers the UI (and ``/sdapi/v1`` with ``--api``) until
    ``.stop()``. Warnings and errors the app logs while it runs go to ``log``, as launch.py's console would show
    them."""

    def __init__(self, data_dir: Path, log: Path):
        self.data_dir, self.log = Path(data_dir), Path(log)
        self.url = ""
        self.ctx = None
        self.app = None
        self._server = None
        self._thread = None
        self._sock = None
        self._handler = None

    def start(self, *extra: str) -> "Server":
        import uvicorn

        from modules import server

        self._handler = logging.FileHandler(self.log, encoding="utf-8")
        self._handler.setLevel(logging.WARNING)
        self._handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(self._handler)
        try:
            ns = launch.parse_with_extension_flags(["--skip-install", "--data-dir", str(self.data_dir), *extra])
            paths = launch.Paths.from_args(ns)
            paths.ensure_dirs()
            self.ctx = server.build_context(ns, paths)
            self.app = app = server.create_app(self.ctx)
        except BaseException:
            self._release()
            raise
        self._sock = free_socket()
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=GRACE_S)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True,
                                        name=f"server {self.url}")
        self._thread.start()
        deadline = time.time() + 60
        while not self._server.started:
            if time.time() > deadline or not self._thread.is_alive():
                self.stop()
                raise RuntimeError(f"server did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.02)
        return self

    def client(self, **kw):
        import httpx

        return httpx.Client(base_url=self.url, timeout=120, **kw)

    def stop(self) -> None:
        if self.ctx is not None:
            self.ctx.engine.interrupt()  # as SIGTERM does in launch.py: a running generation stops at its next step
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(GRACE_S + 20)
            self._server = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._release()

    def _release(self) -> None:
        from modules import script_callbacks

        script_callbacks.clear_callbacks()  # the next server in this process loads its own extensions' hooks
        if self._handler is not None:
            logging.getLogger().removeHandler(self._handler)
            self._handler.close()
            self._handler = None


class SharedCache:
    """A browser whose plain pages open in one context, so a module's page loads share the browser's HTTP cache (the
    UI's hashed scripts are sent as immutable: they load once, not on every page; ~0.6 of a page load's ~3.5 CPU
    seconds on 2 cores). Pages that ask for their own context options (logins, locales) still get a fresh one."""

    def __init__(self, browser):
        self.browser = browser
        self.context = browser.new_context()

    def new_page(self, viewport: dict | None = None, **options):
        if options:
            return self.browser.new_page(viewport=viewport, **options)
        page = self.context.new_page()
        page.set_viewport_size(viewport or {"width": 1280, "height": 720})  # a fresh context's default
        return page

    def close(self) -> None:
        self.context.close()
        self.browser.close()


def tiny_ui_data(data, tiny_models, steps: int = 3, checkpoints: tuple[str, ...] = ("sd1.safetensors",)):
    """A data folder for a UI test server: the tiny checkpoints, the first one selected, and txt2img/img2img at
    64×64 with `steps` steps by default (so every generation in the test is quick)."""
    import json
    import shutil

    ckpt = data / "models" / "Stable-diffusion"
    ckpt.mkdir(parents=True, exist_ok=True)
    for name in checkpoints:
        shutil.copy(tiny_models.path(name), ckpt / name)
    (data / "ui-config.json").write_text(json.dumps({
        f"{tab}/{name}/value": value for tab in ("txt2img", "img2img")
        for name, value in (("Width", 64), ("Height", 64), ("Sampling steps", steps))}))
    (data / "config.json").write_text(json.dumps({"sd_model_checkpoint": checkpoints[0]}))
    return data

"""The HTTP server: builds the start-up state, the FastAPI app, and runs uvicorn.

``create_app(ctx)`` returns the FastAPI app (the UI and ``/sdapi/v1`` are mounted on it by their own modules);
``serve(ns)`` binds the socket first (so a busy port is a one-line error), prints gradio's
``Running on local URL:  http://127.0.0.1:7860`` line, and serves until Ctrl+C / SIGTERM.
No generation code lives here.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modules.paths import Paths

if TYPE_CHECKING:  # the engine (torch, diffusers) is imported by the start-up thread, after the page answers
    from fastapi import FastAPI

    from modules.engine import Engine

__all__ = ["AppContext", "build_context", "create_app", "serve", "bind_host"]

log = logging.getLogger(__name__)

_PLACEHOLDER = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Stable Diffusion web UI</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 4em auto">
<h1>Stable Diffusion web UI</h1>
<p>The server is running with the API only (--nowebui); see <a href="/docs">/docs</a>.</p>
</body></html>
"""


@dataclass
class AppContext:
    """Start-up state shared by the UI and the API (created once, passed in)."""

    args: argparse.Namespace
    engine: Engine
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def paths(self) -> Paths:
        return self.engine.paths

    @property
    def settings(self):
        return self.engine.settings

    @property
    def checkpoints(self):
        return self.engine.registry


def build_context(ns: argparse.Namespace, paths: Paths | None = None) -> AppContext:
    """The engine (paths created, settings loaded, checkpoints listed); hashing goes on in the background."""
    from modules.engine import Engine

    engine = Engine.from_args(ns, paths=paths)
    engine.registry.hash_all_in_background()
    if engine.history is not None:  # pictures saved while we were not running (or by A1111) get their rows
        threading.Thread(target=_reconcile_history, args=(engine.history,), daemon=True,
                         name="history reconcile").start()
    return AppContext(args=ns, engine=engine)


def _reconcile_history(history) -> None:
    try:
        history.reconcile()
    except Exception:  # noqa: BLE001 - the index is a convenience: the pictures are safe either way
        log.exception("history: reconcile failed")


def create_app(ctx: AppContext | None) -> FastAPI:
    """The app: ``GET /`` (placeholder page until the UI is mounted), ``GET /healthz``. ``app.state.ctx`` = ctx."""
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse, JSONResponse

    app = FastAPI(title="Stable Diffusion web UI", docs_url=None, redoc_url=None)
    app.state.ctx = ctx
    _add_docs(app)
    _add_origin_checks(app, ctx.args if ctx is not None else None)

    @app.get("/healthz", include_in_schema=False)
    def healthz():
        return JSONResponse({"status": "ok"})

    @app.middleware("http")
    async def process_time(request, call_next):
        started = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception as e:  # a bug, not bad input: still a JSON answer with the header
            log.exception("error on %s %s", request.method, request.url.path)
            response = JSONResponse(status_code=500, content={"error": type(e).__name__, "detail": str(e),
                                                              "body": "", "errors": ""})
        response.headers["X-Process-Time"] = f"{time.perf_counter() - started:.4f}"
        return response

    runtime = None
    if ctx is not None:  # extensions: scripts, callbacks and their settings, before any request is served
        from modules import extension_runtime
        from webui import gradio_compat  # what extension scripts import from gradio's side, before they load

        from webui import a1111 as ui_a1111

        gradio_compat.install()
        ui_a1111.install()  # modules.ui and the other gradio-side A1111 modules extensions import
        runtime = extension_runtime.start(ctx.engine, ctx.args)
        ctx.extra["extensions"] = runtime

    # /sdapi/v1 (A1111's HTTP API) with --api, or alone with --nowebui; before the UI's catch-all mount.
    if ctx is not None and (getattr(ctx.args, "api", False) or getattr(ctx.args, "nowebui", False)):
        from modules import api
        from modules.api import controlnet_api

        sdapi = api.mount(app, ctx)
        controlnet_api.mount(app, ctx.engine, sdapi.auth if sdapi.credentials else None)
        from modules.api import history_api

        history_api.mount(app, ctx.engine, sdapi.auth if sdapi.credentials else None)
        from modules.api import queue_api

        queue_api.mount(app, sdapi, ctx.engine, sdapi.auth if sdapi.credentials else None)

    ui = ctx is not None and not getattr(ctx.args, "nowebui", False)
    if not ui:
        @app.get("/", response_class=HTMLResponse, include_in_schema=False)
        def index():
            return HTMLResponse(_PLACEHOLDER)

        if ctx is not None:
            from modules import script_callbacks
            from webui import script_ui  # the scripts' argument defaults come from their controls

            script_ui.compute_defaults(ctx.engine.scripts)
            script_callbacks.app_started_callback(None, app)

    # The UI is mounted last: its catch-all mount at "/" would shadow routes added after it.
    if ui:
        from webui.app import mount

        mount(app, ctx.engine, ctx.args, runtime)
    if ctx is not None:  # every generation is a job of the one visible queue; jobs from before a restart whose
        from modules.job_queue import ensure_queue  # source nothing here can run fail now, saying why

        queue = ensure_queue(ctx.engine)
        if getattr(ctx.args, "cluster", None):
            from modules.cluster.executor import start_cluster

            start_cluster(ctx.engine, ctx.args)
        queue.fail_unrunnable()
    return app


DOCS_ASSETS = "/docs-assets"


def _add_docs(app: FastAPI) -> None:
    """Swagger UI at /docs from files installed with the `fastapi-offline` package (no CDN: works offline)."""
    from fastapi.responses import HTMLResponse
    from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
    from fastapi.staticfiles import StaticFiles

    try:
        import fastapi_offline
    except ImportError:  # an environment from before the requirement: the CDN page rather than none
        log.warning("fastapi-offline is not installed: /docs loads Swagger UI from a CDN")
        static = None
    else:
        static = Path(fastapi_offline.__file__).parent / "static"
        app.mount(DOCS_ASSETS, StaticFiles(directory=static), name="docs-assets")
    redirect = "/docs/oauth2-redirect"

    assets = {} if static is None else {"swagger_js_url": f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                        "swagger_css_url": f"{DOCS_ASSETS}/swagger-ui.css",
                                        "swagger_favicon_url": f"{DOCS_ASSETS}/favicon.png"}

    @app.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} - Swagger UI",
                                   oauth2_redirect_url=redirect, **assets)

    @app.get(redirect, include_in_schema=False)
    def docs_redirect():
        return get_swagger_ui_oauth2_redirect_html()


def _add_origin_checks(app: FastAPI, args) -> None:
    """Refuse state-changing requests from other origins' pages (modules/auth.py); --cors-allow-origins[-regex]
    name origins that may call, and get CORS answers (A1111's CORSMiddleware)."""
    from modules.auth import CrossOriginGuard

    origins = [o.strip() for o in (getattr(args, "cors_allow_origins", None) or "").split(",") if o.strip()]
    regex = getattr(args, "cors_allow_origins_regex", None)
    app.add_middleware(CrossOriginGuard, allow_origins=origins, allow_origin_regex=regex)
    if origins or regex:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_origin_regex=regex, allow_methods=["*"],
                           allow_credentials=True, allow_headers=["*"])


SHUTDOWN_GRACE_S = 2  # open streams (a page's heartbeat, progress polling) get this long after SIGTERM/SIGINT


def _stopping_server(config, on_exit):
    """uvicorn's server, stopping within seconds on SIGTERM/SIGINT whatever is connected: the running job is
    interrupted (it ends at its next step and keeps what it finished), open streams get a short grace, then close.
    Without the grace limit, an open browser tab's event stream held the port for minutes."""
    import uvicorn

    class StoppingServer(uvicorn.Server):
        def handle_exit(self, sig, frame):
            try:
                on_exit()
            finally:
                super().handle_exit(sig, frame)

    return StoppingServer(config)


def bind_host(ns: argparse.Namespace) -> str:
    """``--server-name`` if given, else 0.0.0.0 with ``--listen``, else 127.0.0.1."""
    if getattr(ns, "server_name", None):
        return ns.server_name
    return "0.0.0.0" if getattr(ns, "listen", False) else "127.0.0.1"


def _bind(host: str, port: int) -> socket.socket:
    family, type_, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                       flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, type_, proto)
    try:
        if sys.platform != "win32":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(addr)
        sock.listen(2048)
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock


def serve(ns: argparse.Namespace, ctx: AppContext | None = None, paths: Paths | None = None) -> int:
    """Bind, answer at once with the loading page (modules/startup.py), build the engine, extensions and UI in a
    background thread, then serve them. Returns the process exit status."""
    import uvicorn

    from modules.startup import StartingApp, build_in_background

    started = time.perf_counter() - _process_age()
    host, port = bind_host(ns), ns.port
    try:
        sock = _bind(host, port)
    except OSError as e:
        print(f"launch.py: error: cannot listen on {host}:{port}: {e.strerror or e} "
              f"(is another instance running? choose another port with --port)", file=sys.stderr)
        return 1

    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    if ":" in shown:
        shown = f"[{shown}]"
    url = f"http://{shown}:{port}"
    starting = StartingApp()
    built: dict[str, Any] = {"ctx": ctx, "rc": 0}
    config = uvicorn.Config(starting, log_level="warning", timeout_keep_alive=getattr(ns, "timeout_keep_alive", 30),
                            access_log=False, timeout_graceful_shutdown=SHUTDOWN_GRACE_S)

    def interrupt():
        starting.close_streams()
        if built["ctx"] is not None:
            built["ctx"].engine.interrupt()

    server = _stopping_server(config, on_exit=interrupt)

    def build(stage):
        stage("loading the engine (torch, diffusers)")
        t = time.perf_counter()
        built["ctx"] = built["ctx"] or build_context(ns, paths)
        engine_s = time.perf_counter() - t
        show_warnings(built["ctx"].engine.settings.get("show_warnings", False))
        stage("loading extensions and building the UI")
        t = time.perf_counter()
        app = create_app(built["ctx"])
        app_s = time.perf_counter() - t
        stage("loading the model code")
        from modules.models.loader import import_model_classes

        t = time.perf_counter()
        import_model_classes()  # the first generation then only loads the checkpoint
        built["model_code_s"] = time.perf_counter() - t
        _print_ready(ns, built["ctx"], app, host, port)
        built["times"] = (engine_s, app_s)
        return app

    def on_ready(app):
        engine_s, app_s = built["times"]
        print(f"Startup time: {time.perf_counter() - started:.1f}s (page answering: {built['answering']:.1f}s, "
              f"engine: {engine_s:.1f}s, extensions and UI: {app_s:.1f}s, model code: {built['model_code_s']:.1f}s)",
              flush=True)
        if getattr(ns, "share", False):
            print_share_link(host, port)
        engine = built["ctx"].engine if built["ctx"] is not None else None
        if opens_browser(ns, engine.settings if engine is not None else None):
            try:
                import webbrowser
                webbrowser.open(url)
            except Exception:  # no browser is not an error
                pass

    def on_error(e: BaseException):
        message = str(e) if isinstance(e, OSError) else f"{type(e).__name__}: {e}"
        if not isinstance(e, OSError):
            log.error("start-up failed", exc_info=e)
        print(f"launch.py: error: {message}", file=sys.stderr, flush=True)
        built["rc"] = 1
        server.should_exit = True

    built["answering"] = time.perf_counter() - started
    print(f"Running on local URL:  {url}", flush=True)
    build_in_background(starting, build, on_ready, on_error)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    return built["rc"]


def show_warnings(show: bool) -> None:
    """A1111's "Show warnings in console" (off by default, read at start): the libraries' Python warnings
    (deprecations, UserWarnings) in the console, or not."""
    import warnings

    warnings.simplefilter("default" if show else "ignore")


def opens_browser(ns: argparse.Namespace, settings) -> bool:
    """--autolaunch, or A1111's "Automatically open webui in browser on startup": Local (its default) opens it
    unless the server is for other computers (--listen, --share, --server-name), Remote always, Disable never."""
    if getattr(ns, "autolaunch", False):
        return True
    choice = settings.get("auto_launch_browser", "Local") if settings is not None else "Disable"
    if choice == "Remote":
        return True
    return choice == "Local" and not (getattr(ns, "listen", False) or getattr(ns, "share", False)
                                      or getattr(ns, "server_name", None))


def print_share_link(host: str, port: int, setup=None) -> str | None:
    """--share: open Gradio's tunnel and print the public URL (A1111's console line), or say why there is none;
    the local server goes on either way. Returns the URL."""
    from webui.share_link import missing_client_hint, open_share_link

    try:
        public = open_share_link(host, port, setup)
    except Exception as e:  # noqa: BLE001 - no network, no tunnel client, a refused share server
        hint = missing_client_hint()
        print(f"launch.py: could not create a share link ({type(e).__name__}: {e}{'; ' + hint if hint else ''}); "
              f"the UI is still served on this computer", file=sys.stderr, flush=True)
        return None
    print(f"Running on public URL: {public}", flush=True)
    return public


def _process_age() -> float:
    """Seconds since this process started (so start-up figures include Python's own start and the imports)."""
    try:
        import psutil

        return max(0.0, time.time() - psutil.Process().create_time())
    except Exception:  # noqa: BLE001 - no psutil: count from here
        return 0.0


def _print_ready(ns, ctx: AppContext, app, host: str, port: int) -> None:
    from modules.auth import exposure_warnings

    for warning in exposure_warnings(ns, host, port, app):  # one line per surface anyone may use
        print(warning, file=sys.stderr, flush=True)
    n = len(ctx.checkpoints)
    print(f"Found {n} checkpoint{'s' if n != 1 else ''} in {', '.join(str(d) for d in ctx.paths.ckpt_dirs)}",
          flush=True)
    demo = ctx.engine.models.demo_note()
    if demo:
        print(f"Checkpoint: {demo.get('description', 'demo model')}", flush=True)

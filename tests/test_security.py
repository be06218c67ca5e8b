"""Who may use the server (issue 14, items 2-7 and 16), over real HTTP: login files for the UI and the API, --auth
for both, one warning per open surface, URL images pinned to the checked address, cross-origin POSTs refused,
output folders locked with --listen and per-request overrides, a logged-out page without the app's data, /docs
offline, and --help printed once.

The servers run in this process (tests/servers.py: the app launch.py builds, from the same flags, served by uvicorn
in a thread), so several configurations start in seconds."""
from __future__ import annotations

import base64
import http.server
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from PIL import Image

from modules import auth, cmd_args, script_callbacks
from modules.api import api as api_mod
from tests.servers import Server

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "Stable-diffusion" / "demo-shapes.safetensors"
CKPT_NAME = "private-checkpoint-name-7d1f"
SECRET_DIR = "/secret/marker/outdir-51c3"


def _serve(data: Path, *flags: str) -> Server:
    return Server(data, data / "server.log").start(*flags)


def _data_dir(root: Path, config: dict | None = None) -> Path:
    ckpt = root / "models" / "Stable-diffusion"
    ckpt.mkdir(parents=True)
    os.symlink(DEMO, ckpt / f"{CKPT_NAME}.safetensors")
    if config:
        (root / "config.json").write_text(json.dumps(config))
    return root


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Four configurations: login files for UI and API; --auth inline; --auth-path with --listen; and open with
    --cors-allow-origins."""
    root = tmp_path_factory.mktemp("security")
    files = {
        "ui": "alice:wonder land\n\nbob:pw:with:colons, carol:c\n",
        "api": "api-user:api-pass\n",
        "both": "dana:d4na\n",
    }
    for name, text in files.items():
        (root / f"{name}.txt").write_text(text)
    started = {}
    try:
        started["paths"] = _serve(
            _data_dir(root / "d-paths", {"outdir_samples": SECRET_DIR}), "--api",
            "--gradio-auth-path", str(root / "ui.txt"), "--api-auth-path", str(root / "api.txt"))
        started["auth"] = _serve(_data_dir(root / "d-auth"), "--api", "--auth", "erin:e,frank:f")
        started["auth_path"] = _serve(_data_dir(root / "d-auth-path"), "--api", "--listen",
                                               "--auth-path", str(root / "both.txt"))
        started["open"] = _serve(_data_dir(root / "d-open"), "--api",
                                          "--cors-allow-origins", "http://allowed.example,https://also.example")
        yield started
    finally:
        for srv in started.values():
            srv.stop()
        script_callbacks.clear_callbacks()


def ui_login(client: httpx.Client, user: str, password: str) -> int:
    return client.post("/login", data={"username": user, "password": password}).status_code


# ---------------------------------------------------------------------------------------------------------------
# 2. login files, --auth


@pytest.mark.slow
def test_gradio_auth_path_protects_the_ui(servers):
    srv = servers["paths"]
    with srv.client() as c:
        assert c.get("/config").status_code == 401
        assert c.post("/gradio_api/queue/join", json={}).status_code == 401
        assert c.get("/file=outputs/x.png").status_code == 401
        assert c.post("/internal/progress", json={"id_task": "task(x)"}).status_code == 401
        assert ui_login(c, "alice", "wrong") == 400
        assert ui_login(c, "api-user", "api-pass") == 400  # the API's logins are not the UI's
    for user, password in (("alice", "wonder land"), ("bob", "pw:with:colons"), ("carol", "c")):
        with srv.client() as c:
            assert ui_login(c, user, password) == 200
            assert c.get("/config").status_code == 200
            assert c.post("/internal/progress", json={"id_task": "task(x)"}).status_code == 200


def test_api_auth_path_protects_the_api(servers):
    srv = servers["paths"]
    with srv.client() as c:
        r = c.get("/sdapi/v1/options")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Basic"
        assert c.get("/sdapi/v1/options", auth=("alice", "wonder land")).status_code == 401
        assert c.get("/sdapi/v1/options", auth=("api-user", "api-pass")).status_code == 200
        assert c.get("/sdapi/v1/cmd-flags", auth=("api-user", "api-pass")).json()["api_auth_path"]


def test_auth_protects_ui_and_api(servers):
    srv = servers["auth"]
    with srv.client() as c:
        assert c.get("/config").status_code == 401
        assert c.get("/sdapi/v1/options").status_code == 401
        assert c.get("/sdapi/v1/options", auth=("frank", "f")).status_code == 200
        assert c.get("/sdapi/v1/cmd-flags", auth=("frank", "f")).json()["auth"] == "<hidden>"
        assert ui_login(c, "erin", "x") == 400 and ui_login(c, "erin", "e") == 200
        assert c.get("/config").status_code == 200


def test_auth_path_protects_ui_and_api(servers):
    srv = servers["auth_path"]
    with srv.client() as c:
        assert c.get("/config").status_code == 401
        assert c.get("/sdapi/v1/options").status_code == 401
        assert c.get("/sdapi/v1/options", auth=("dana", "d4na")).status_code == 200
        assert ui_login(c, "dana", "d4na") == 200 and c.get("/config").status_code == 200


def test_login_files_are_checked_at_start(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    bad = tmp_path / "bad.txt"
    bad.write_text("alice-without-password\n")
    for flag in ("--gradio-auth-path", "--api-auth-path", "--auth-path"):
        for path in (empty, bad, tmp_path / "missing.txt"):
            with pytest.raises(SystemExit) as e:
                cmd_args.parse_args([flag, str(path)], env={})
            assert e.value.code == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and flag in err[0]
    assert auth.parse_logins("a:1, b:2\nc:3:4") == [("a", "1"), ("b", "2"), ("c", "3:4")]


# ---------------------------------------------------------------------------------------------------------------
# 3. warnings per open surface


def _warnings(*flags: str, app=None) -> list[str]:
    ns = cmd_args.parse_args(list(flags), env={})
    return auth.exposure_warnings(ns, "0.0.0.0", 7860, app)


def test_one_warning_per_open_surface():
    ui_open = _warnings("--listen", "--api", "--api-auth", "u:p")
    assert len(ui_open) == 1 and "web UI" in ui_open[0] and "--auth" in ui_open[0]
    api_open = _warnings("--listen", "--api", "--gradio-auth", "u:p")
    assert len(api_open) == 1 and "/sdapi/v1" in api_open[0]
    assert len(_warnings("--listen", "--api")) == 2
    assert _warnings("--listen", "--api", "--auth", "u:p") == []
    assert len(_warnings("--listen", "--nowebui")) == 1
    ns = cmd_args.parse_args(["--api"], env={})
    assert auth.exposure_warnings(ns, "127.0.0.1", 7860) == []

    from fastapi import FastAPI

    app = FastAPI()
    app.add_api_route("/my-extension/run", lambda: None, methods=["POST"])
    app.add_api_route("/sdapi/v1/txt2img", lambda: None, methods=["POST"])
    routes = _warnings("--listen", "--api", "--auth", "u:p", app=app)
    assert len(routes) == 1 and "POST /my-extension/run" in routes[0] and "txt2img" not in routes[0]


@pytest.mark.slow
def test_listen_with_api_auth_only_warns_that_the_ui_is_open(tmp_path):
    """The warnings launch.py prints at start (test_launch shows they reach the console) for this app."""
    data = tmp_path / "d"
    data.mkdir()
    srv = _serve(data, "--listen", "--api", "--api-auth", "u:p")
    try:
        warnings = auth.exposure_warnings(srv.ctx.args, "0.0.0.0", 7860, srv.app)
    finally:
        srv.stop()
    assert len(warnings) == 1 and warnings[0].startswith("WARNING") and "web UI" in warnings[0], warnings


# ---------------------------------------------------------------------------------------------------------------
# 4. URL images


class _Recorder(http.server.BaseHTTPRequestHandler):
    hits: list = []

    def do_GET(self):  # noqa: N802 - http.server API
        type(self).hits.append((self.path, self.headers.get("Host")))
        buf = io.BytesIO()
        Image.new("RGB", (4, 4), "red").save(buf, format="PNG")
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(buf.getvalue())))
        self.end_headers()
        self.wfile.write(buf.getvalue())

    def log_message(self, *args):
        pass


@pytest.fixture
def loopback_http():
    _Recorder.hits = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1], _Recorder.hits
    httpd.shutdown()
    httpd.server_close()


def _answers(*addresses: str):
    """A getaddrinfo that gives `addresses` in turn (the last one again after that), and the names it was asked."""
    asked = []
    real = socket.getaddrinfo

    def fake(host, port, *args, **kwargs):
        if host in ("127.0.0.1", "::1") or not str(host).endswith(".test"):
            return real(host, port, *args, **kwargs)
        asked.append(host)
        addr = addresses[min(len(asked), len(addresses)) - 1]
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        sockaddr = (addr, port or 0, 0, 0) if family == socket.AF_INET6 else (addr, port or 0)
        return [(family, socket.SOCK_STREAM, 6, "", sockaddr)]

    return fake, asked


def test_url_image_connects_to_the_checked_address(monkeypatch, loopback_http):
    """DNS rebinding: the name answers a public address when checked and 127.0.0.1 after; the connection goes to
    the public address (refused here at once), never to the loopback server."""
    port, hits = loopback_http
    fake, asked = _answers("93.184.216.34", "127.0.0.1")
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    connected = []
    real_connect = socket.create_connection

    def create_connection(address, *args, **kwargs):
        connected.append(address)
        if address[0] == "93.184.216.34":
            raise OSError("no network in the test")
        return real_connect(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", create_connection)
    with pytest.raises(api_mod.ApiError) as e:
        api_mod.fetch_url_image(f"http://rebind.test:{port}/x.png", {}, "init_images")
    assert e.value.status == 422 and "cannot fetch" in e.value.detail
    assert hits == [] and connected == [("93.184.216.34", port)] and asked == ["rebind.test"]


def test_url_image_keeps_the_host_name(monkeypatch, loopback_http):
    """The pinned connection still sends the URL's host name (virtual hosts answer by it)."""
    port, hits = loopback_http
    fake, _ = _answers("127.0.0.1")
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    monkeypatch.setattr(api_mod, "_local_reason", lambda addr: None)  # this once, loopback stands for public
    data = api_mod.fetch_url_image(f"http://images.test:{port}/cat.png?x=1", {}, "init_images")
    assert Image.open(io.BytesIO(base64.b64decode(data))).size == (4, 4)
    assert hits == [("/cat.png?x=1", f"images.test:{port}")]


@pytest.mark.slow
@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "100.64.0.1", "100.127.255.254", "169.254.169.254",
                                     "0.0.0.0", "224.0.0.1", "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1",
                                     "2002:7f00:1::1", "2002:a00:1::", "2002:6440:1::", "64:ff9b::7f00:1",
                                     "64:ff9b::a9fe:a9fe", "64:ff9b:1::808:808", "::127.0.0.1"])
def test_url_image_refuses_local_addresses(monkeypatch, address, loopback_http):
    port, hits = loopback_http
    fake, _ = _answers(address)
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    with pytest.raises(api_mod.ApiError) as e:
        api_mod.fetch_url_image(f"http://local.test:{port}/x.png", {}, "init_images")
    assert e.value.status == 422 and "refused" in e.value.detail and hits == []


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:4700::1111", "2002:808:808::1", "64:ff9b::808:808"])
def test_url_image_allows_public_addresses(monkeypatch, address):
    fake, _ = _answers(address)
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    assert api_mod._checked_address("public.test", 80) == (address, None)


# ---------------------------------------------------------------------------------------------------------------
# 5. cross-origin requests

BODYLESS = ["/sdapi/v1/interrupt", "/sdapi/v1/skip", "/sdapi/v1/unload-checkpoint", "/sdapi/v1/reload-checkpoint",
            "/sdapi/v1/refresh-checkpoints", "/sdapi/v1/refresh-vae", "/sdapi/v1/refresh-loras",
            "/sdapi/v1/refresh-embeddings", "/sdapi/v1/options", "/sdapi/v1/txt2img", "/gradio_api/queue/join",
            "/gradio_api/upload", "/login"]


@pytest.mark.slow
@pytest.mark.parametrize("headers", [{"origin": "http://evil.example"}, {"origin": "null"},
                                     {"sec-fetch-site": "cross-site"},
                                     {"origin": "http://127.0.0.1:1", "sec-fetch-site": "same-site"}])
def test_cross_origin_posts_are_refused(servers, headers):
    srv = servers["open"]
    with srv.client() as c:
        for path in BODYLESS:
            r = c.post(path, content=b"x", headers={"content-type": "text/plain", **headers})
            assert r.status_code == 403, (path, r.status_code, r.text)
            assert "cross" in r.json()["detail"]


def test_same_origin_and_non_browser_posts_work(servers):
    srv = servers["open"]
    own = srv.url
    with srv.client() as c:
        for headers in ({}, {"origin": own, "sec-fetch-site": "same-origin"}, {"sec-fetch-site": "none"}):
            for path in ("/sdapi/v1/interrupt", "/sdapi/v1/skip", "/sdapi/v1/refresh-checkpoints"):
                assert c.post(path, headers=headers).status_code == 200, (path, headers)
        assert c.get("/sdapi/v1/options", headers={"origin": "http://evil.example"}).status_code == 200


def test_cors_allow_origins_are_allowed(servers):
    srv = servers["open"]
    with srv.client() as c:
        for origin in ("http://allowed.example", "https://also.example"):
            r = c.post("/sdapi/v1/interrupt", headers={"origin": origin, "sec-fetch-site": "cross-site"})
            assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
        pre = c.options("/sdapi/v1/interrupt", headers={"origin": "http://allowed.example",
                                                       "access-control-request-method": "POST"})
        assert pre.status_code == 200


def test_origin_rules_behind_a_proxy():
    guard = auth.CrossOriginGuard(None, allow_origin_regex=r"https://.*\.trusted\.example")
    ok = [{"origin": "https://sd.example.org", "host": "sd.example.org"},
          {"origin": "http://sd.example.org", "host": "sd.example.org"},
          {"origin": "https://sd.example.org", "host": "127.0.0.1:7860", "x-forwarded-host": "sd.example.org"},
          {"origin": "https://a.trusted.example", "host": "127.0.0.1:7860", "sec-fetch-site": "cross-site"},
          {"origin": "http://[::1]:7860", "host": "[::1]:7860"}, {"host": "127.0.0.1:7860"}]
    bad = [{"origin": "http://localhost", "host": "localhost:7860"},
           {"origin": "http://127.0.0.1:8080", "host": "127.0.0.1:7860"},
           {"origin": "https://evil.example", "host": "sd.example.org"},
           {"origin": "https://a.trusted.example.evil", "host": "127.0.0.1:7860"},
           {"origin": "file://", "host": "127.0.0.1:7860"}]
    assert [guard.refusal(h) for h in ok] == [None] * len(ok)
    assert all(guard.refusal(h) for h in bad)


# ---------------------------------------------------------------------------------------------------------------
# 6. output folders


def test_hide_ui_dir_config_follows_listen(tmp_path):
    def hide(*flags):
        return cmd_args.parse_args(list(flags), env={}).hide_ui_dir_config

    assert hide() is False and hide("--hide-ui-dir-config") is True
    assert hide("--listen") is True and hide("--server-name", "0.0.0.0") is True
    assert hide("--server-name", "127.0.0.1") is False
    assert hide("--listen", "--no-hide-ui-dir-config") is False


def test_listen_locks_output_folders_in_options_and_override_settings(servers):
    srv = servers["auth_path"]
    with srv.client(auth=("dana", "d4na")) as c:
        r = c.post("/sdapi/v1/options", json={"outdir_samples": "/tmp/anywhere"})
        assert r.status_code == 403 and "outdir_samples" in r.json()["detail"]
        r = c.post("/sdapi/v1/txt2img", json={"steps": 1, "width": 64, "height": 64, "save_images": True,
                                              "override_settings": {"outdir_txt2img_samples": "/tmp/anywhere"}})
        assert r.status_code == 403 and "outdir_txt2img_samples" in r.json()["detail"]
        assert c.post("/sdapi/v1/options", json={"samples_format": "png"}).status_code == 200


def test_override_settings_choose_the_output_folder(servers, tmp_path):
    srv = servers["open"]
    custom, grids = tmp_path / "custom-samples", tmp_path / "custom-grids"
    with srv.client() as c:
        r = c.post("/sdapi/v1/txt2img", json={
            "prompt": "a red circle", "steps": 1, "width": 64, "height": 64, "batch_size": 2, "save_images": True,
            "override_settings": {"outdir_txt2img_samples": str(custom), "outdir_txt2img_grids": str(grids),
                                  "save_to_dirs": False, "grid_save_to_dirs": False}})
        assert r.status_code == 200, r.text
        assert len(list(custom.glob("*.png"))) == 2 and len(list(grids.glob("*.png"))) == 1
        options = c.get("/sdapi/v1/options").json()
        assert options["outdir_txt2img_samples"] == "outputs/txt2img-images"  # for that request only


# ---------------------------------------------------------------------------------------------------------------
# 7. the logged-out page


@pytest.mark.parametrize("encoding", ["identity", "gzip, deflate, br"])
def test_logged_out_page_has_no_option_values_or_checkpoints(servers, encoding):
    srv = servers["paths"]
    with srv.client(headers={"accept-encoding": encoding}) as c:
        page = c.get("/")
        assert page.status_code == 200 and "auth_required" in page.text
        assert CKPT_NAME not in page.text and SECRET_DIR not in page.text and "outdir_samples" not in page.text
        assert c.get("/config").status_code == 401
        assert ui_login(c, "carol", "c") == 200
        assert CKPT_NAME in c.get("/").text and SECRET_DIR in c.get("/").text  # what the login now shows
        assert CKPT_NAME in c.get("/config").text


@pytest.mark.slow
def test_login_page_logs_in_in_the_browser(servers):
    playwright_api = pytest.importorskip("playwright.sync_api")
    from tests.test_webui import CHROMIUM, FLAGS

    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page()
            page.goto(servers["paths"].url + "/")
            page.get_by_label("username").fill("alice")
            page.get_by_label("password").fill("wonder land")
            page.get_by_role("button", name="Login").click()
            playwright_api.expect(page.locator("#txt2img_prompt textarea")).to_be_visible(timeout=60_000)
        finally:
            browser.close()


# ---------------------------------------------------------------------------------------------------------------
# 16. /docs offline, --help once


def test_docs_use_only_local_assets(servers):
    srv = servers["open"]
    with srv.client() as c:
        page = c.get("/docs")
        assert page.status_code == 200
        urls = re.findall(r"""(?:src|href)=["']([^"']+)""", page.text) + re.findall(r"url: '([^']+)'", page.text)
        assert len(urls) >= 4 and "http" not in page.text.replace(srv.url, "")
        for url in urls:
            assert url.startswith("/"), url
            assert c.get(url).status_code == 200, url
        assert c.get("/openapi.json").json()["paths"]


def test_help_is_printed_once():
    r = subprocess.run([sys.executable, str(ROOT / "launch.py"), "--help"], capture_output=True, text=True,
                       timeout=60, cwd=str(ROOT), env={k: v for k, v in os.environ.items() if k != "COMMANDLINE_ARGS"})
    assert r.returncode == 0 and r.stdout.count("usage: launch.py") == 1, r.stdout[:500]
    assert "--auth-path" in r.stdout and "--no-hide-ui-dir-config" in r.stdout

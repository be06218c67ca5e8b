"""`python launch.py` as a user runs it: flags, requirements, the server it starts, and how it stops (SIGTERM, as
`docker stop` and systemd send, and Ctrl+C, within seconds even with a browser tab open)."""
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import launch  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python launch.py ...`` as a subprocess; waits for gradio's "Running on local URL" line."""

    def __init__(self, *args, timeout=90):
        env = {k: v for k, v in os.environ.items() if k != "COMMANDLINE_ARGS"}
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), *args], cwd=str(ROOT), env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue = queue.Queue()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr), daemon=True).start()
        self.url = None
        deadline = time.time() + timeout
        while time.time() < deadline and self.proc.poll() is None:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if line.startswith("Running on local URL:"):
                self.url = line.split("URL:", 1)[1].strip()
                break
        self.answering = self.url is not None
        while self.url and time.time() < deadline and self.proc.poll() is None:  # the page answers at once; the
            try:                                                                 # engine and UI come after
                with urllib.request.urlopen(self.url + "/healthz", timeout=5):
                    break
            except OSError:
                time.sleep(0.1)

    def _pump(self, stream, sink):
        for line in stream:
            sink.append(line)
            self.lines.put(line)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def get(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.read().decode()


CHROMIUM = "/usr/bin/chromium"


def stop_with_a_page_open(srv: Server, sig: int) -> float:
    """Seconds from `sig` to the process's exit, with a browser tab holding the page's event stream open (what
    `docker stop`, systemd and Ctrl+C meet); without Chromium, with no tab."""
    browser = None
    try:
        if os.path.exists(CHROMIUM):
            from tests.test_webui import FLAGS, playwright_api

            pw = playwright_api.sync_playwright().start()
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page()
            page.goto(srv.url)
            page.wait_for_selector("#txt2img_prompt", timeout=60000)  # the page's event stream is open now
        started = time.monotonic()
        srv.proc.send_signal(sig)
        srv.proc.wait(timeout=20)
        return time.monotonic() - started
    finally:
        if browser is not None:
            browser.close()
            pw.stop()


def assert_port_free(port: int) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


@pytest.mark.slow
def test_launch_smoke_and_sigterm_stops_it_with_a_page_open(tmp_path):
    port = free_port()
    data = tmp_path / "data"
    srv = Server("--skip-install", "--port", str(port), "--data-dir", str(data))
    try:
        assert srv.url == f"http://127.0.0.1:{port}", (srv.stdout, srv.stderr)
        status, body = get(srv.url + "/")
        assert status == 200 and "<html" in body
        status, body = get(srv.url + "/healthz")
        assert status == 200 and '"ok"' in body
        assert (data / "models" / "Stable-diffusion").is_dir()
        assert (data / "outputs" / "txt2img-images").is_dir()
        assert not any("WARNING" in line for line in srv.stderr)
        elapsed = stop_with_a_page_open(srv, signal.SIGTERM)
    finally:
        rc = srv.stop()
    assert elapsed < 5, f"took {elapsed:.1f} s to stop"
    assert rc in (0, -15), (rc, srv.stderr)
    assert "Traceback" not in "".join(srv.stderr), "".join(srv.stderr)[-4000:]
    assert_port_free(port)


@pytest.mark.slow
def test_launch_port_in_use_is_one_line(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if k != "COMMANDLINE_ARGS"}
        r = subprocess.run([sys.executable, str(ROOT / "launch.py"), "--skip-install", "--port", str(port),
                            "--data-dir", str(tmp_path / "d")], capture_output=True, text=True, env=env,
                           timeout=90, cwd=str(ROOT))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("launch.py: error: cannot listen on 127.0.0.1:")


@pytest.mark.slow
def test_listen_without_auth_warns_and_ctrl_c_stops_it_with_a_page_open(tmp_path):
    port = free_port()
    srv = Server("--skip-install", "--listen", "--port", str(port), "--data-dir", str(tmp_path / "d"))
    try:
        assert srv.url == f"http://127.0.0.1:{port}", (srv.stdout, srv.stderr)
        assert get(srv.url + "/healthz")[0] == 200
        deadline = time.time() + 30  # said once the app is built, which /healthz does not wait for
        while not any("WARNING" in line and "--gradio-auth" in line for line in srv.stderr):
            assert time.time() < deadline, srv.stderr
            time.sleep(0.1)
        elapsed = stop_with_a_page_open(srv, signal.SIGINT)
    finally:
        srv.stop()
    assert elapsed < 5, f"took {elapsed:.1f} s to stop"
    assert "Traceback" not in "".join(srv.stderr), "".join(srv.stderr)[-4000:]
    assert_port_free(port)


def test_missing_requirements(tmp_path):
    req = tmp_path / "requirements.txt"
    other = tmp_path / "more.txt"
    other.write_text("surely-not-installed-package-xyz-123\n")
    req.write_text(
        "# a comment\n"
        "pytest\n"
        "pytest>=1.0  # trailing comment\n"
        "pytest<1.0\n"
        "never-installed-pkg-abc; python_version < '3'\n"
        "--extra-index-url https://example.invalid/simple\n"
        "-r more.txt\n"
    )
    assert launch.missing_requirements(req) == ["pytest<1.0", "surely-not-installed-package-xyz-123"]


def test_prepare_environment_runs_nothing_when_satisfied(tmp_path, monkeypatch):
    req = tmp_path / "requirements.txt"
    req.write_text("pytest\n")
    calls = []
    monkeypatch.setattr(launch.subprocess, "call", lambda *a, **k: calls.append(a) or 0)
    assert launch.prepare_environment(req) == 0 and calls == []
    req.write_text("pytest\nsurely-not-installed-package-xyz-123\n")
    assert launch.prepare_environment(req) == 0
    assert calls and calls[0][0][1:] == ["-m", "pip", "install", "-r", str(req)]
    assert launch.prepare_environment(tmp_path / "absent.txt") == 0


def test_prepare_environment_pip_failure(tmp_path, monkeypatch, capsys):
    req = tmp_path / "requirements.txt"
    req.write_text("surely-not-installed-package-xyz-123\n")
    monkeypatch.setattr(launch.subprocess, "call", lambda *a, **k: 1)
    assert launch.prepare_environment(req) == 1
    assert "launch.py: error: installing requirements failed" in capsys.readouterr().err


def test_project_requirements_check_is_quick():
    t = time.perf_counter()
    launch.missing_requirements()
    assert time.perf_counter() - t < 5


def test_hf_offline_set_by_main(tmp_path, monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "GRADIO_ANALYTICS_ENABLED", "COMMANDLINE_ARGS"):
        monkeypatch.delenv(var, raising=False)  # also restores them after the test
    monkeypatch.setattr(launch, "_setup_logging", lambda ns: None)
    seen = {}

    import modules.server as server

    def fake_serve(ns, paths=None, ctx=None):
        seen["offline"] = os.environ.get("HF_HUB_OFFLINE")
        seen["paths"] = paths
        return 0

    monkeypatch.setattr(server, "serve", fake_serve)
    assert launch.main(["--skip-install", "--data-dir", str(tmp_path / "d")]) == 0
    assert seen["offline"] == "1" and seen["paths"].data_dir == tmp_path / "d"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    launch.main(["--skip-install", "--data-dir", str(tmp_path / "d")])
    assert seen["offline"] == "0"


@pytest.mark.parametrize("argv", [["--port", "abc"], ["--nope"]])
def test_main_bad_flags_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        launch.main(argv)
    assert e.value.code == 2

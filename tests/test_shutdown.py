"""SIGTERM/SIGINT stop the server within seconds even with a browser tab open (what `docker stop` and systemd
send); the port is free again afterwards."""
from __future__ import annotations

import signal
import socket
import time

import pytest

from tests.servers import ProcessServer
from tests.test_webui import CHROMIUM, FLAGS

playwright_api = pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.slow  # servers, browsers or full-size parity runs: left out by -m "not slow"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_the_server_with_a_page_open(tmp_path, sig):
    import os

    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed")
    srv = ProcessServer(tmp_path, tmp_path / "server.log").start("--no-download-sd-model")
    port = int(srv.url.rsplit(":", 1)[1])
    try:
        with playwright_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page()
            page.goto(srv.url)
            page.wait_for_selector("#txt2img_prompt", timeout=60000)  # the page's event stream is open now
            started = time.monotonic()
            srv.proc.send_signal(sig)
            srv.proc.wait(timeout=20)
            elapsed = time.monotonic() - started
            browser.close()
    finally:
        srv.stop()
    assert elapsed < 5, f"took {elapsed:.1f} s to stop"
    with socket.socket() as s:  # the port is released
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))

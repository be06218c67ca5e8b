"""What the page benchmarks share (bench_page_progress.py, bench_idle.py, bench_page_load.py): Debian's Chromium with
the flags the browser tests use, a free loopback port, `launch.py` started on the bundled demo model, and CPU seconds
of a server and of Chromium read with psutil."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "models" / "Stable-diffusion" / "demo-shapes.safetensors"

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, ready: str) -> None:
    """Until `url + ready` answers 200 (at most 5 minutes; the server is killed if it never does)."""
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            if urllib.request.urlopen(url + ready, timeout=5).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"{url} did not start")


def start_demo_app(data: Path, settings: dict | None = None,
                   ui_config: dict | None = None) -> tuple[subprocess.Popen, str]:
    """`launch.py` on a data folder `data` holding the demo model (selected), with these settings and ui-config
    values; returns the process and its URL once it answers."""
    ckpt = data / "models" / "Stable-diffusion"
    ckpt.mkdir(parents=True)
    os.symlink(DEMO, ckpt / DEMO.name)
    (data / "config.json").write_text(json.dumps({"sd_model_checkpoint": DEMO.name, **(settings or {})}))
    if ui_config:
        (data / "ui-config.json").write_text(json.dumps(ui_config))
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(REPO / "launch.py"), "--skip-install", "--no-hashing",
                             "--data-dir", str(data), "--port", str(port)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_for(url, proc, "/healthz")
    return proc, url


def cpu_of(procs) -> float:
    """User and system CPU seconds of `procs` and of the children they have waited for."""
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            pass
    return total


def chromium_cpu() -> float:
    return cpu_of(p for p in psutil.process_iter(["name"]) if "chrom" in (p.info["name"] or ""))


def server_cpu(proc: subprocess.Popen) -> float:
    root = psutil.Process(proc.pid)
    return cpu_of([root, *root.children(recursive=True)])

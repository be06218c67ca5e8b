"""What the page benchmarks share (bench_page_progress.py, bench_idle.py): Debian's Chromium with the flags the
browser tests use, a free loopback port, and CPU seconds of a server and of Chromium read with psutil."""
from __future__ import annotations

import socket
import subprocess

import psutil

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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

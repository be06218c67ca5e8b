#!/usr/bin/env python
"""What an idle server and an idle page cost the machine: CPU seconds per minute of a `launch.py` server (the demo
model) and of Chromium showing its page while nobody touches anything, side by side with a bare Gradio app (one
textbox and one button, queue on, the same Gradio) served and shown the same way.

    python bench/bench_idle.py                  # 2 rounds of 20 s each, alternating between the two
    python bench/bench_idle.py --seconds 60 --rounds 3

Each round: the server alone (no page) for `--seconds`, then with one Chromium page open for `--seconds`, after the
page has loaded and settled for 8 s. CPU seconds of the server process with its children and of every Chromium
process, read with psutil before and after; reported per minute.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from page_cpu import (CHROMIUM, FLAGS, chromium_cpu, free_port, server_cpu,  # bench/ is on sys.path
                      start_demo_app, wait_for)

SETTLE_S = 8
BARE_GRADIO = textwrap.dedent("""
    import sys
    import gradio as gr
    with gr.Blocks(analytics_enabled=False) as demo:
        box = gr.Textbox(label="Prompt")
        out = gr.Textbox(label="Answer")
        gr.Button("Generate").click(lambda text: text[::-1], box, out)
    demo.queue().launch(server_name="127.0.0.1", server_port=int(sys.argv[1]), show_error=True)
""")


def start_ours(root: Path) -> tuple[subprocess.Popen, str]:
    return start_demo_app(root / "ours")


def start_bare() -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, "-c", BARE_GRADIO, str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_for(url, proc, "/")
    return proc, url


def measure(proc, url: str, seconds: float, pw, ready_selector: str) -> tuple[float, float, float]:
    """(server alone, server with a page, the page's Chromium), in CPU-s per minute."""
    s0 = server_cpu(proc)
    time.sleep(seconds)
    alone = server_cpu(proc) - s0
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(url)
        page.wait_for_selector(ready_selector, timeout=120_000)
        time.sleep(SETTLE_S)
        s0, c0 = server_cpu(proc), chromium_cpu()
        time.sleep(seconds)
        with_page, chromium = server_cpu(proc) - s0, chromium_cpu() - c0
    finally:
        browser.close()
    per_minute = 60 / seconds
    return alone * per_minute, with_page * per_minute, chromium * per_minute


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    selectors = {"bare Gradio": "textarea", "ours": "#txt2img_prompt textarea"}
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in selectors}
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp:
        servers = {"bare Gradio": start_bare(), "ours": start_ours(Path(tmp))}
        try:
            time.sleep(SETTLE_S)  # launch.py loads the engine in the background after it answers
            with sync_playwright() as pw:
                for r in range(args.rounds):
                    for name, (proc, url) in servers.items():
                        row = measure(proc, url, args.seconds, pw, selectors[name])
                        results[name].append(row)
                        print(f"round {r}  {name:12s} server alone {row[0]:5.2f}  server with page {row[1]:5.2f}  "
                              f"Chromium {row[2]:5.2f}  (CPU-s per minute)", flush=True)
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(30)
    print(f"\nmedians over {args.rounds} rounds of {args.seconds:g} s, CPU-s per idle minute:")
    for name, rows in results.items():
        a, w, c = (statistics.median(x[i] for x in rows) for i in range(3))
        print(f"  {name:12s} server alone {a:5.2f}  server with a page {w:5.2f}  Chromium {c:5.2f}  "
              f"page open in all {w + c:5.2f}")


if __name__ == "__main__":
    main()

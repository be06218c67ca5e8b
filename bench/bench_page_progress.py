#!/usr/bin/env python
"""What following a generation costs the machine: the browser's and the server's CPU seconds for one txt2img click
in the UI, with the progress line and live preview sent at every read of the job's state (refresh period 0 ms)
against A1111's default "Progressbar and preview update period" (1000 ms).

    python bench/bench_page_progress.py                  # the demo model, 64x64, 150 steps, 3 rounds
    python bench/bench_page_progress.py --steps 60 --periods 0 250 1000

One `launch.py --skip-install` per period (its own data dir, the demo model linked in, the period in config.json),
both started before any round; Debian's Chromium through Playwright opens each server's page in turn, one
untimed click, then `--rounds` timed clicks per server alternating between the servers. A click is timed from the
Generate click until the infotext shows its prompt. CPU seconds: every Chromium process, and the server process
with its children, read with psutil before and after.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from page_cpu import CHROMIUM, FLAGS, chromium_cpu, server_cpu, start_demo_app  # bench/ is on sys.path


def start_server(root: Path, period: int, steps: int) -> tuple[subprocess.Popen, str]:
    size = {"txt2img/Width/value": 64, "txt2img/Height/value": 64, "txt2img/Sampling steps/value": steps}
    return start_demo_app(root / f"period-{period}", {"live_preview_refresh_period": period}, size)


def click(page, prompt: str) -> None:
    page.fill("#txt2img_prompt textarea", prompt)
    page.click("#txt2img_generate")
    page.wait_for_function(
        "p => { const el = document.querySelector('#html_info_txt2img');"
        " return el && el.innerText.includes(p) && el.innerText.includes('Steps:'); }",
        arg=prompt, polling=200, timeout=300_000)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--periods", type=int, nargs="+", default=[0, 1000], help="refresh periods in ms")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    results: dict[int, list[tuple[float, float, float]]] = {p: [] for p in args.periods}
    with tempfile.TemporaryDirectory(prefix="bench-progress-") as tmp:
        servers = {p: start_server(Path(tmp), p, args.steps) for p in args.periods}
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
                pages = {}
                for period, (_, url) in servers.items():
                    page = browser.new_page(viewport={"width": 1280, "height": 900})
                    page.goto(url)
                    page.wait_for_selector("#txt2img_prompt textarea", timeout=120_000)
                    click(page, f"warm-up {period}")
                    pages[period] = page
                for r in range(args.rounds):
                    for period, (proc, _) in servers.items():
                        pages[period].bring_to_front()
                        c0, s0, w0 = chromium_cpu(), server_cpu(proc), time.perf_counter()
                        click(pages[period], f"round {r} period {period}")
                        w, c, s = time.perf_counter() - w0, chromium_cpu() - c0, server_cpu(proc) - s0
                        results[period].append((w, c, s))
                        print(f"round {r}  period {period:5d} ms  wall {w:6.2f} s  browser {c:6.2f} CPU-s  "
                              f"server {s:6.2f} CPU-s", flush=True)
                browser.close()
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(30)
    print(f"\nmedians over {args.rounds} rounds ({args.steps} steps, 64x64, demo model):")
    for period, rows in results.items():
        w, c, s = (statistics.median(x[i] for x in rows) for i in range(3))
        print(f"  period {period:5d} ms: wall {w:6.2f} s  browser {c:6.2f} CPU-s  server {s:6.2f} CPU-s  "
              f"together {c + s:6.2f} CPU-s")


if __name__ == "__main__":
    main()

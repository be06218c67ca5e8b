#!/usr/bin/env python
"""What opening the page costs: `launch.py` on the demo model, its page loaded in Chromium with the front-end files
as served (Gradio's, with the fixes of webui/frontend_fixes.py) and with Gradio's own files, alternating.

    python bench/bench_page_load.py              # 5 rounds after a warm-up load of each
    python bench/bench_page_load.py --rounds 9

Per load: seconds from `goto` until the txt2img prompt is there, and the CPU seconds of every Chromium process
meanwhile (psutil). Each variant has a browser context of its own (its own HTTP cache, warmed by the first load);
in both, the files a fix applies to are answered by a Playwright route, the one with the fixed text and the other
with Gradio's, so both pay the same for the route.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from page_cpu import CHROMIUM, FLAGS, REPO, chromium_cpu, start_demo_app  # bench/ is on sys.path

sys.path.insert(0, str(REPO))
from webui import frontend_fixes  # noqa: E402 - the repository is on sys.path now

READY = "#txt2img_prompt textarea"


def answer_with(texts: dict[str, bytes]):
    def handle(route):
        name = route.request.url.rsplit("/", 1)[-1]
        route.fulfill(status=200, body=texts[name], content_type="text/javascript",
                      headers={"cache-control": "public, max-age=31536000, immutable"})
    return handle


def load(context, url: str) -> tuple[float, float]:
    """(seconds to the prompt, Chromium CPU seconds) of one page load."""
    page = context.new_page()
    page.set_viewport_size({"width": 1280, "height": 900})
    c0, t0 = chromium_cpu(), time.perf_counter()
    page.goto(url)
    page.wait_for_selector(READY, timeout=120_000)
    seconds, cpu = time.perf_counter() - t0, chromium_cpu() - c0
    page.close()
    return seconds, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    fixed = {name: frontend_fixes.fixed_asset(name) for name in frontend_fixes._fixed_files()}
    original = {name: (frontend_fixes.GRADIO_ASSETS / name).read_bytes() for name in fixed}
    variants = {"Gradio's own files": original, "as served (fixed)": fixed}
    with tempfile.TemporaryDirectory(prefix="bench-page-load-") as tmp:
        proc, url = start_demo_app(Path(tmp) / "data")
        try:
            time.sleep(8)  # launch.py loads the engine in the background after it answers
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
                contexts = {}
                for name, texts in variants.items():
                    contexts[name] = browser.new_context()
                    for asset in texts:
                        contexts[name].route(f"**/assets/{asset}", answer_with(texts))
                    load(contexts[name], url)  # warm-up: the context's HTTP cache
                results: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
                for r in range(args.rounds):
                    for name, context in contexts.items():
                        seconds, cpu = load(context, url)
                        results[name].append((seconds, cpu))
                        print(f"round {r}  {name:20s} {seconds:5.2f} s to the prompt, Chromium {cpu:5.2f} CPU-s",
                              flush=True)
                browser.close()
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    print(f"\nmedians of {args.rounds} rounds ({', '.join(sorted(fixed))} routed):")
    for name, rows in results.items():
        print(f"  {name:20s} {statistics.median(s for s, _ in rows):5.2f} s to the prompt, "
              f"Chromium {statistics.median(c for _, c in rows):5.2f} CPU-s")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Start-up: `python launch.py` until the page answers, until the app is ready, and until the first image, against
a bare `import torch, diffusers, transformers, gradio` in the same run (rounds alternate the two).

    python bench/bench_startup.py                       # 3 rounds, the bundled demo model
    python bench/bench_startup.py --baseline /tmp/old   # also an older checkout (git worktree) of this repository

Each launch gets a fresh data dir with the demo model linked in, `--api --skip-install --no-hashing`. Timed from
the process start: "page" = the first HTTP answer at `/` (the loading page, or the UI itself where a checkout
serves nothing before it is ready), "ready" = `/healthz` 200, "first image" = a 64x64, 20-step txt2img through
`/sdapi/v1/txt2img` answered (sent as soon as the API answers).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "models" / "Stable-diffusion" / "demo-shapes.safetensors"
BARE = "import torch, diffusers, transformers, gradio"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bare_import() -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", BARE], check=True)
    return time.perf_counter() - t


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def launch(tree: Path) -> dict[str, float]:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as data:
        ckpt_dir = Path(data) / "models" / "Stable-diffusion"
        ckpt_dir.mkdir(parents=True)
        os.symlink(DEMO, ckpt_dir / DEMO.name)
        env = {k: v for k, v in os.environ.items() if k != "COMMANDLINE_ARGS"}
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, str(tree / "launch.py"), "--api", "--skip-install", "--no-hashing",
                                 "--port", str(port), "--data-dir", data], cwd=str(tree), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out: dict[str, float] = {}
        try:
            while "ready" not in out:
                if proc.poll() is not None or time.perf_counter() - t0 > 300:
                    raise SystemExit(f"{tree}: the server did not start")
                if "page" not in out and _status(base + "/") is not None:
                    out["page"] = time.perf_counter() - t0
                if _status(base + "/healthz") == 200:
                    out["ready"] = time.perf_counter() - t0
                    out.setdefault("page", out["ready"])
                else:
                    time.sleep(0.05)
            body = json.dumps({"prompt": "a red circle", "steps": 20, "width": 64, "height": 64, "seed": 1,
                               "save_images": False}).encode()
            req = urllib.request.Request(base + "/sdapi/v1/txt2img", data=body,
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=300) as r:
                assert r.status == 200 and json.loads(r.read())["images"]
            out["first image"] = time.perf_counter() - t0
        finally:
            proc.terminate()
            proc.wait(30)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--baseline", type=Path, help="another checkout of this repository to compare with")
    args = p.parse_args(argv)
    trees = {"this": REPO}
    if args.baseline:
        trees["baseline"] = args.baseline.resolve()
    bare: list[float] = []
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    for r in range(args.rounds):
        bare.append(bare_import())
        line = f"round {r + 1}: bare import {bare[-1]:5.2f}s"
        for name, tree in trees.items():
            runs[name].append(launch(tree))
            line += f" | {name}: " + "  ".join(f"{k} {v:5.2f}s" for k, v in runs[name][-1].items())
        print(line, flush=True)
    med = statistics.median
    b = med(bare)
    print(f"\nmedians of {args.rounds}: bare `{BARE}` {b:.2f}s")
    for name, rs in runs.items():
        cells = "  ".join(f"{k} {med([x[k] for x in rs]):5.2f}s ({med([x[k] for x in rs]) / b:.2f}x bare)"
                          for k in rs[0])
        print(f"  {name:8s}: {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

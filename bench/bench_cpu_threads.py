#!/usr/bin/env python
"""CPU threads: the engine's automatic thread policy (modules/cpu_threads.py) against fixed 1 and N threads, on an
idle machine and with one core kept busy by another process, in-process and through the server's API.

    python bench/bench_cpu_threads.py                 # the bundled demo model, 64x64, 20 steps, 5 rounds
    python bench/bench_cpu_threads.py --sd15          # also SD1.5 size (random weights, 512x512, 4 steps), idle

"Busy" = a second Python process spinning on one core for the whole measurement (what a browser or a game does
to an artist's desktop). Each figure is the median wall time of --rounds requests after one warm-up. Printed:
every figure, then the ratios the policy is judged by (auto / best fixed count, server / in-process best).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEMO = REPO / "models" / "Stable-diffusion" / "demo-shapes.safetensors"


@contextlib.contextmanager
def busy_core(on: bool):
    """Another process keeping one core busy (none when `on` is false)."""
    if not on:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(1.0)  # let the load sampler see it
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def request(args, size: int, steps: int) -> dict:
    return dict(prompt="a red apple on a wooden table", negative_prompt="blurry", seed=args.seed, steps=steps,
                width=size, height=size, sampler_name="Euler a", cfg_scale=5.0, batch_size=1, n_iter=1,
                do_not_save_samples=True, do_not_save_grid=True)


def timed(fn, rounds: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def in_process(args, ckpt: Path, size: int, steps: int, rounds: int, counts: list[int | str]) -> dict:
    """Median seconds per request with each thread setting (an int: forced; "auto": the policy)."""
    import torch

    from modules.engine import Engine
    from modules.paths import Paths

    out = {}
    with tempfile.TemporaryDirectory(prefix="bench-threads-") as data:
        paths = Paths.from_args(argparse.Namespace(data_dir=data, ckpt=str(ckpt)))
        engine = Engine.create(paths, no_hashing=True)
        engine.models.get()
        req = request(args, size, steps)
        default = torch.get_num_threads()
        for count in counts:
            engine.threads.forced = 0 if count == "auto" else int(count)
            out[count] = timed(lambda: engine.txt2img(dict(req)), rounds)
            chosen = engine.threads.last.threads if engine.threads.last else default
            print(f"    in-process threads={count!s:4s} -> {out[count]:7.3f} s/request"
                  f"{f'  (chose {chosen})' if count == 'auto' else ''}", flush=True)
        torch.set_num_threads(default)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict, timeout: float = 600) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def through_server(args, ckpt: Path, size: int, steps: int, rounds: int, extra_flags: list[str]) -> float:
    """Median seconds per /sdapi/v1/txt2img request to a fresh `launch.py --api --nowebui`."""
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="bench-threads-srv-") as data:
        cmd = [sys.executable, str(REPO / "launch.py"), "--nowebui", "--api", "--skip-install", "--port", str(port),
               "--data-dir", data, "--ckpt", str(ckpt), "--no-hashing", *extra_flags]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.time() + 180
            while True:
                try:
                    with urllib.request.urlopen(f"{base}/sdapi/v1/sd-models", timeout=5) as r:
                        if r.status == 200:
                            break
                except Exception:  # noqa: BLE001 - not up yet (refused, or 503 while starting)
                    pass
                if time.time() > deadline or proc.poll() is not None:
                    raise SystemExit(f"server did not start: {cmd}")
                time.sleep(0.2)
            body = request(args, size, steps)
            return timed(lambda: _post(f"{base}/sdapi/v1/txt2img", body), rounds)
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", default=str(DEMO), help="checkpoint for the small-work runs (default: the demo model)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-server", action="store_true", help="skip the through-the-API runs")
    p.add_argument("--sd15", action="store_true", help="also SD1.5 size (random weights; idle machine only)")
    p.add_argument("--sd15-size", type=int, default=512)
    p.add_argument("--sd15-steps", type=int, default=4)
    p.add_argument("--cache-dir", default="/tmp/sdbench", help="where bench_txt2img.py keeps its SD1.5 file")
    args = p.parse_args(argv)

    from modules import cpu_threads

    n = cpu_threads.usable_cores()
    ckpt = Path(args.ckpt)
    print(f"{n} usable cores | {ckpt.name} {args.size}x{args.size}, {args.steps} steps, {args.rounds} rounds",
          flush=True)
    results = {}
    for busy in (False, True):
        label = "busy (one core kept busy)" if busy else "idle"
        print(f"\n{label}:", flush=True)
        with busy_core(busy):
            results[busy] = in_process(args, ckpt, args.size, args.steps, args.rounds, [1, n, "auto"])
            if not args.no_server:
                results[busy]["server"] = through_server(args, ckpt, args.size, args.steps, args.rounds, [])
                print(f"    through the API (auto)  -> {results[busy]['server']:7.3f} s/request", flush=True)

    print("\nratios (goal: auto within 1.2x of the best fixed count; the API within 1.2x of in-process best):")
    for busy, r in results.items():
        best = min(r[1], r[n])
        line = f"  {'busy' if busy else 'idle'}: auto/best {r['auto'] / best:.2f}   {n} threads/best {r[n] / best:.2f}"
        if "server" in r:
            line += f"   API/best in-process {r['server'] / best:.2f}"
        print(line)

    if args.sd15:
        sys.path.insert(0, str(REPO / "bench"))
        import bench_txt2img

        sd15 = bench_txt2img.ensure_model_file(bench_txt2img.parse_args(["--cache-dir", args.cache_dir]))
        print(f"\nSD1.5 size, idle: {args.sd15_size}x{args.sd15_size}, {args.sd15_steps} steps, 1 round", flush=True)
        r = in_process(args, sd15, args.sd15_size, args.sd15_steps, 1, [n, "auto"])
        print(f"  auto/{n} threads (torch's default) {r['auto'] / r[n]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

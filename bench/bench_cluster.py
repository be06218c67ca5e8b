#!/usr/bin/env python
"""The queue on a cluster against the queue in one process, on one machine: jobs per minute with 1 and 2 Ray CPU
workers (the cores split evenly: one torch thread each) and with no cluster at all (the head's own worker thread,
one torch thread), and what dispatching costs per job.

    unshare -n bash -c "ip link set lo up && python bench/bench_cluster.py"        # loopback only, as the test
    python bench/bench_cluster.py --jobs 12 --steps 20 --size 64

The model is the bundled demo checkpoint (models/Stable-diffusion/demo-shapes.safetensors), so the jobs are as
small as jobs get: the figures show the dispatch overhead at its most visible. Dispatch overhead: a single job's
time from submission to its result with a worker idle and waiting (median of 5), minus the same in the process's
own queue: what sending the request, following its progress and bringing the pictures back costs.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def run(data: Path, workers: int, jobs: int, steps: int, size: int) -> dict:
    import argparse as ap

    from modules import cmd_args
    from modules.engine import Engine
    from modules.job_queue import ensure_queue
    from modules.request_types import Txt2ImgRequest

    argv = ["--data-dir", str(data), "--skip-install", "--threads", "1"]
    head = Engine.from_args(cmd_args.parse_args(argv, env={}))
    queue = ensure_queue(head)
    executor = None
    if workers:
        from modules.cluster.executor import start_cluster

        executor = start_cluster(head, ap.Namespace(cluster="auto", cluster_workers=workers), argv)

    def request(seed: int) -> Txt2ImgRequest:
        return Txt2ImgRequest.from_dict({"prompt": "a red circle", "steps": steps, "width": size, "height": size,
                                         "seed": seed, "do_not_save_samples": True, "do_not_save_grid": True})

    def submit(seed: int):
        req = request(seed)
        return queue.submit("txt2img", {"prompt": req.prompt}, "bench", "bench", request=req,
                            work=lambda: head.generate(req))

    for job in [submit(s) for s in range(max(workers, 1))]:  # warm-up: every worker loads the model
        queue.wait(job.id, timeout=600)
    latencies = []
    for seed in range(5):  # one at a time with a worker idle: submission → result
        job = submit(100 + seed)
        queue.wait(job.id, timeout=600)
        latencies.append(job.finished - job.created)
    t = time.perf_counter()
    batch = [submit(1000 + s) for s in range(jobs)]
    for job in batch:
        queue.wait(job.id, timeout=600)
    took = time.perf_counter() - t
    assert all(j.status == "done" for j in batch), [j.error for j in batch if j.status != "done"]
    queue.shutdown()
    if executor is not None:
        executor.ray.shutdown()
    return {"jobs_per_min": jobs / took * 60, "seconds": took, "latency_ms": statistics.median(latencies) * 1000}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=12)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--size", type=int, default=64)
    args = p.parse_args(argv)
    demo = REPO / "models" / "Stable-diffusion" / "demo-shapes.safetensors"
    with tempfile.TemporaryDirectory(prefix="sdbench-cluster-") as tmp:
        data = Path(tmp)
        (data / "models" / "Stable-diffusion").mkdir(parents=True)
        shutil.copy(demo, data / "models" / "Stable-diffusion" / demo.name)
        print(f"demo model, {args.size}x{args.size}, {args.steps} steps, {args.jobs} jobs, 1 torch thread per worker")
        results = {}
        for workers in (0, 1, 2):
            label = "in-process queue" if workers == 0 else f"cluster, {workers} worker(s)"
            results[workers] = r = run(data, workers, args.jobs, args.steps, args.size)
            print(f"{label:<22} {r['jobs_per_min']:7.1f} jobs/min  ({r['seconds']:.1f} s)  "
                  f"one job alone {r['latency_ms']:6.1f} ms (median of 5)")
        print(f"2 workers vs 1: x{results[2]['jobs_per_min'] / results[1]['jobs_per_min']:.2f} jobs/min; "
              f"1 worker vs in-process: x{results[1]['jobs_per_min'] / results[0]['jobs_per_min']:.2f}; "
              f"dispatch overhead per job: {results[1]['latency_ms'] - results[0]['latency_ms']:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

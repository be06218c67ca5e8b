"""The cluster test's scenario (tests/test_cluster.py runs it as a process of its own, in a network namespace that
has only `lo`): a head engine and two CPU workers on Ray over one data folder with the tiny models X and Y.

Prints one JSON object: per job its worker, retries, and whether its picture equals the head's in-process picture
of the same request; the workers' model loads; progress seen; the interrupt; the lost worker's job."""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The failover job's size: the SIGKILL must land while it runs (~1 s of steps after the first one is seen)
LOST_SIZE = 128
sys.path.insert(0, str(ROOT))


def main(data_dir: str) -> dict:
    import argparse

    import numpy as np

    from modules.cluster.executor import start_cluster
    from modules import cmd_args
    from modules.engine import Engine
    from modules.job_queue import ensure_queue
    from modules.request_types import Txt2ImgRequest

    argv = ["--data-dir", data_dir, "--skip-install", "--threads", "1"]
    head = Engine.from_args(cmd_args.parse_args(argv, env={}))
    queue = ensure_queue(head)
    started = time.time()
    executor = start_cluster(head, argparse.Namespace(cluster="auto", cluster_workers=2), argv)
    out: dict = {"start_s": round(time.time() - started, 1)}

    def request(model: str, seed: int, steps: int = 3, size: int = 64) -> Txt2ImgRequest:
        return Txt2ImgRequest.from_dict({"prompt": f"a red circle on {model}", "steps": steps, "width": size,
                                         "height": size, "seed": seed, "sampler_name": "Euler",
                                         "override_settings": {"sd_model_checkpoint": model},
                                         "do_not_save_grid": True})

    def submit(req):
        return queue.submit("txt2img", {"prompt": req.prompt}, "test", "scenario", request=req,
                            work=lambda: head.generate(req))

    def picture(result) -> np.ndarray:
        return np.asarray(result.images[0])

    # X, Y, X, Y, X: each model loads once per worker that needs it, X always where X is loaded
    queue.pause()
    plan = [("X", 1), ("Y", 2), ("X", 3), ("Y", 4), ("X", 5)]
    jobs = [submit(request(m, s)) for m, s in plan]
    queue.resume()
    for job in jobs:
        queue.wait(job.id, timeout=300)
    executor_workers = {w["name"]: w for w in executor.workers()}
    loads = {name: executor.ray.get(executor.handles[name].info.remote())["loads"] for name in executor.handles}
    # the head's own in-process runs, one model after the other (with one checkpoint loaded at a time each switch
    # reads it again): Y's, with the failover job's below, then X's, which stays loaded for the runs that follow
    lost_request = request("Y", 21, steps=30, size=LOST_SIZE)
    references = {}
    for model in ("Y", "X"):
        for m, seed in plan:
            if m == model:
                references[seed] = head.generate(request(model, seed))
        if model == "Y":
            lost_reference = head.generate(lost_request)
    same = [bool(job.status == "done" and np.array_equal(picture(job.result), picture(references[seed])))
            for (_, seed), job in zip(plan, jobs)]
    out["affinity"] = {"workers": [j.worker for j in jobs], "statuses": [j.status for j in jobs],
                       "loads": {n: {Path(k).stem: v for k, v in d.items()} for n, d in loads.items()},
                       "same_as_in_process": same,
                       "saved_indexed": sum(1 for _ in head.history.pictures_on_disk()) == head.history.count(),
                       "listed": sorted(executor_workers)}

    # "Batch count" fanned out over both workers: the pictures, seeds, infotexts and grid of a single run
    head.settings.set("cluster_fan_out", True)
    done_before = {w["name"]: w["jobs_done"] for w in executor.workers()}
    fanned = Txt2ImgRequest.from_dict({"prompt": "a blue square", "steps": 3, "width": 64, "height": 64, "seed": 31,
                                       "n_iter": 4, "sampler_name": "Euler",
                                       "override_settings": {"sd_model_checkpoint": "X"}})
    job = submit(fanned)
    queue.wait(job.id, timeout=300)
    head.settings.set("cluster_fan_out", False)
    single = head.generate(Txt2ImgRequest.from_dict({**{k: getattr(fanned, k) for k in (
        "prompt", "steps", "width", "height", "seed", "n_iter", "sampler_name")},
        "override_settings": {"sd_model_checkpoint": "X"}}))
    result = job.result
    out["fan_out"] = {"status": job.status, "images": len(result.images) if result else 0,
                      "same_pictures": bool(result and len(result.images) == len(single.images) and all(
                          np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(result.images, single.images))),
                      "same_infotexts": bool(result and result.infotexts == single.infotexts),
                      "seeds": result.all_seeds if result else None, "grid_first": bool(
                          result and result.index_of_first_image == 1),
                      "workers_used": sorted(w["name"] for w in executor.workers()
                                             if w["jobs_done"] is not None and w["jobs_done"] > done_before[w["name"]])}

    # the X/Y/Z plot (a script: it runs on the head) with fan-out on: its cells on the idle workers at once, the
    # plot the same as when the head draws every cell itself
    from modules import extension_runtime
    from webui import a1111 as ui_a1111
    from webui import gradio_compat, script_ui
    from tests.test_builtin_scripts import xyz_args

    gradio_compat.install()
    ui_a1111.install()
    extension_runtime.start(head, cmd_args.parse_args(argv, env={}))
    script_ui.compute_defaults(head.scripts)
    plot = {"prompt": "a red circle", "steps": 2, "width": 64, "height": 64, "seed": 7, "sampler_name": "Euler",
            "override_settings": {"sd_model_checkpoint": "X"}, "script_name": "X/Y/Z plot",
            "script_args": xyz_args(x_type="Steps", x_values="1, 2", y_type="Seed", y_values="7, 8")}
    head.settings.set("cluster_fan_out", True)
    done_before = {w["name"]: w["jobs_done"] for w in executor.workers()}
    plot_req = Txt2ImgRequest.from_dict(plot)
    job = queue.submit("txt2img", {"prompt": plot_req.prompt}, "test", "scenario", request=plot_req,
                       work=lambda: head.generate(Txt2ImgRequest.from_dict(plot)))
    queue.wait(job.id, timeout=300)
    head.settings.set("cluster_fan_out", False)
    alone = head.generate(Txt2ImgRequest.from_dict(plot))
    out["xyz"] = {"status": job.status, "error": job.error, "worker": job.worker or "local",
                  "same": bool(job.result and len(job.result.images) == len(alone.images) and all(
                      np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(job.result.images, alone.images))),
                  "cells_on": sorted(w["name"] for w in executor.workers()
                                     if w["jobs_done"] is not None and w["jobs_done"] > done_before[w["name"]])}

    # progress while a longer job runs on a worker, then an interrupt after a step
    job = submit(request("X", 11, steps=40, size=192))
    seen: list[int] = []
    at, asked, last_step, previews = None, time.time(), None, 0
    deadline = time.time() + 120
    while job.status in ("queued", "running") and time.time() < deadline:
        p = job.progress
        if p and p.get("image") is not None:
            previews += 1
        if p and p.get("sampling_step") and (not seen or seen[-1] != p["sampling_step"]):
            seen.append(p["sampling_step"])
            if at is not None:
                last_step = p["sampling_step"]
        if len(seen) >= 3 and previews and not head.state.interrupted:
            at = seen[-1]
            asked = time.time()
            head.interrupt()
        time.sleep(0.02)
    out["interrupt"] = {"status": job.status, "steps_seen": seen[:6], "interrupted": bool(
        job.result is not None and job.result.interrupted), "returned_s": round(time.time() - asked, 2),
        "asked_at_step": at, "worker": job.worker, "previews": previews, "progress_head_after": head.state.active,
        "last": last_step if last_step is not None else at}
    again = submit(request("X", 12))
    queue.wait(again.id, timeout=120)
    out["after_interrupt"] = {"status": again.status, "worker": again.worker}

    # SIGKILL the worker running a job: it runs again on the other, retried once, the queue answers throughout
    job = submit(lost_request)
    deadline = time.time() + 120
    while not (job.progress or {}).get("sampling_step") and time.time() < deadline:
        time.sleep(0.02)
    victim = job.worker
    pid = executor.ray.get(executor.handles[victim].pid.remote())
    os.kill(pid, signal.SIGKILL)
    answers = []
    stop = threading.Event()

    def keep_asking():
        while not stop.is_set():
            t = time.time()
            queue.jobs()
            answers.append(time.time() - t)
            time.sleep(0.05)

    asker = threading.Thread(target=keep_asking, daemon=True)
    asker.start()
    queue.wait(job.id, timeout=300)
    stop.set()
    asker.join()
    with head.history._lock:
        stored = head.history._writer.execute("SELECT worker, retried FROM jobs WHERE id = ?", (job.id,)).fetchone()
    out["failover"] = {"status": job.status, "victim": victim, "ran_on": job.worker, "retried": job.retried,
                       "stored": [stored[0], stored[1]],
                       "same_as_in_process": bool(job.status == "done" and np.array_equal(
                           picture(job.result), picture(lost_reference))),
                       "slowest_listing_s": round(max(answers or [0]), 3)}
    # a worker with a data folder of its own (no models, its own outputs): the checkpoint is copied to it (sha256
    # checked) and the pictures it makes are saved and indexed on the head. It joins the same Ray session in place
    # of the two workers (start_cluster finds Ray running; a second Ray start and stop would cost ~3.5 s)
    for handle in executor.handles.values():
        executor.ray.kill(handle, no_restart=True)
    import hashlib

    own = Path(data_dir) / "worker-own"
    own.mkdir()
    import torch
    from safetensors.torch import save_file

    (Path(data_dir) / "embeddings").mkdir(exist_ok=True)
    save_file({"emb_params": torch.zeros(1, 128)}, str(Path(data_dir) / "embeddings" / "inkstyle.safetensors"))
    head.settings.set("cluster_copy_models", True)
    executor = start_cluster(head, argparse.Namespace(cluster="auto", cluster_workers=1),
                             ["--data-dir", str(own), "--skip-install", "--threads", "1"])
    before = set(head.history.pictures_on_disk())
    job = submit(request("X", 41))
    queue.wait(job.id, timeout=300)
    copied = own / "models" / "Stable-diffusion" / "X.safetensors"
    original = Path(data_dir) / "models" / "Stable-diffusion" / "X.safetensors"
    new = set(head.history.pictures_on_disk()) - before
    from modules.history import Query

    newest = head.history.search(Query(q="circle X"))[0][0]["path"]
    reference = head.generate(request("X", 41))
    out["copy"] = {"status": job.status, "error": job.error, "copied": copied.is_file() and hashlib.sha256(
        copied.read_bytes()).hexdigest() == hashlib.sha256(original.read_bytes()).hexdigest(),
        "no_part_left": not list(own.rglob("*.part")),
        "embedding_copied": (own / "embeddings" / "inkstyle.safetensors").read_bytes() == (
            Path(data_dir) / "embeddings" / "inkstyle.safetensors").read_bytes(),
        "same_as_in_process": bool(job.status == "done" and np.array_equal(picture(job.result), picture(reference))),
        "saved_on_head": len(new) == 1 and all(str(p).startswith(data_dir) for p in job.result.saved_paths),
        "indexed": len(new) == 1 and newest == str(next(iter(new)))}
    queue.shutdown()
    executor.ray.shutdown()
    return out


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(sys.argv[1])), flush=True)

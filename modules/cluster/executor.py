"""The visible queue's jobs on a Ray cluster: one actor per device (modules/cluster/worker.py), dispatched with model
affinity (modules/cluster/dispatch.py), followed while they run, requeued once when their worker is lost.

`start_cluster(engine, args)` connects (`--cluster auto`: a local Ray instance with one worker per GPU, or
`--cluster-workers` CPU workers; `--cluster ray://HOST:PORT` or `address=HOST:PORT`: an existing cluster) and sets
itself as the queue's executor. A job whose typed request a worker can run alone goes to a worker; one that needs
the head's extension scripts runs on the head (the local lane). Each running remote job is followed from a thread
of its own: its worker's JobState is read a few times a second into the job (the page's progress line and
preview) and into the head's JobState (`/sdapi/v1/progress`); Interrupt and Skip on the head reach the workers."""
from __future__ import annotations

import io
import logging
import threading
import time
from pathlib import Path
from typing import Any

from modules.cluster import fan_out, files
from modules.cluster.dispatch import WorkerView, assign

log = logging.getLogger(__name__)

LOCAL = "local"  # the head's own lane
POLL_S = 0.2  # how often a running job's progress is read from its worker


class _Lost(Exception):
    """The worker (named) died while running a request."""


class ClusterExecutor:
    def __init__(self, engine, handles: dict[str, Any]):
        import ray

        self.ray = ray
        self.engine = engine
        self.handles = handles
        self.views = {name: WorkerView(name=name) for name in handles}
        self.local_busy = False
        self._borrowed: dict[str, list[str]] = {}  # a fanned-out job's other workers
        self._lock = threading.Lock()
        for name, handle in handles.items():
            self._refresh(name, ray.get(handle.info.remote()))
        engine.control_hooks = [*(engine.control_hooks or []), self.control]

    # -- choosing --------------------------------------------------------------------------------------------------

    def runs_remotely(self, job) -> bool:
        """A worker runs a job from its typed request alone: not one with a script selected, nor one an always-on
        extension script acts on (those run where the extensions are loaded: the head)."""
        req = job.request
        if req is None or getattr(req, "script_name", None) or req.external_alwayson_scripts():
            return False
        args = job.script_args
        if args and args[0] not in (0, None):
            return False
        scripts = self.engine.scripts.for_mode(job.mode) if self.engine.scripts is not None else None
        return not any(acts_on_generation(s) for s in getattr(scripts, "alwayson_scripts", None) or [])

    def checkpoint_of(self, job) -> str | None:
        """The checkpoint file the job will use (its override, else the head's current setting)."""
        name = (getattr(job.request, "override_settings", None) or {}).get("sd_model_checkpoint")
        try:
            return str(self.engine.models.resolve(name or None).filename)
        except LookupError:
            return None

    def assign(self, queued: list, queue) -> tuple[Any, str] | None:
        """The next (job, lane) to start: affinity for the jobs workers can run, the head's lane for the others,
        in queue order between the two."""
        with self._lock:
            remote = [j for j in queued if self.runs_remotely(j)]
            local = next((j for j in queued if not self.runs_remotely(j)), None)
            picked = assign([(j.id, self.checkpoint_of(j), loras_of(j.request)) for j in remote],
                            list(self.views.values()))
            job = next((j for j in remote if picked and j.id == picked[0]), None)
            if local is not None and not self.local_busy and (job is None or local.position < job.position):
                self.local_busy = True
                return local, LOCAL
            if job is None:
                return None
            view = picked[1]
            view.busy, view.job, view.last_used = True, job.id, time.time()
            idle = [v for v in self.views.values() if v.alive and not v.busy]
            if fan_out.eligible(job.request, bool(self.engine.settings.get("cluster_fan_out", False)), len(idle) + 1):
                extra = idle[:job.request.n_iter - 1]  # the batches also go to the other idle workers
                for other in extra:
                    other.busy, other.job, other.last_used = True, job.id, time.time()
                self._borrowed[job.id] = [v.name for v in extra]
            checkpoint = self.checkpoint_of(job)
            if checkpoint and checkpoint not in view.loaded:  # it will hold it once this job has loaded it
                view.loaded = (*view.loaded, checkpoint)
            view.loras = loras_of(job.request)
            job.worker = view.name
            return job, view.name

    def launch(self, job, lane: str, queue) -> None:
        target = self._run_local if lane == LOCAL else self._run_remote
        threading.Thread(target=target, args=(job, lane, queue), name=f"cluster job {job.id}", daemon=True).start()

    # -- running ---------------------------------------------------------------------------------------------------

    def _run_local(self, job, lane: str, queue) -> None:
        try:
            queue.run_here(job)
        finally:
            self.local_busy = False
            queue.wake()

    def _run_remote(self, job, name: str, queue) -> None:
        ray = self.ray
        names = [name] + self._borrowed.pop(job.id, [])
        settings = _plain(self.engine.settings.as_dict())
        try:
            if len(names) > 1:
                result = self._fan_out(job, names, settings)
            else:
                result = self._on(name, job, job.request, settings, lambda: self._follow(job, self.handles[name]))
        except _Lost as e:
            if job.retried == 0:
                queue.requeue(job, f"worker {e.args[0]} was lost")
            else:
                queue.finish(job, None, RuntimeError(f"worker {e.args[0]} was lost while running the job again"))
        except ray.exceptions.RayTaskError as e:  # the job's own error, raised in the worker
            queue.finish(job, None, _cause(e))
        except Exception as e:  # noqa: BLE001 - reaching the cluster failed: the job fails, the queue goes on
            queue.finish(job, None, e)
        else:
            self._keep_pictures(job.request, result)
            self.engine._index(result)  # the head indexes the pictures the workers saved
            queue.finish(job, job.convert(result) if job.convert is not None else result, None)
        finally:
            with self._lock:
                for n in names:
                    self.views[n].busy, self.views[n].job = False, ""
            self._end_mirror()
            queue.wake()

    def _on(self, name: str, job, request, settings: dict, follow):
        """Run `request` on worker `name` and wait, following its progress; its result (or _Lost)."""
        ray = self.ray
        try:
            if settings.get("cluster_copy_models"):
                self._send_files(name, request)
            ref = self.handles[name].run.remote(request, settings, None)
            while True:
                ready, _ = ray.wait([ref], timeout=POLL_S)
                if ready:
                    out = ray.get(ref)
                    break
                follow()
        except ray.exceptions.RayActorError:
            self._lost(name)
            raise _Lost(name) from None
        self._done(name, out)
        return out["result"]

    def _send_files(self, name: str, request) -> None:
        """The checkpoint and LoRAs the request needs, copied to the worker if it lacks them (sha256 checked)."""
        handle = self.handles[name]
        wanted = files.needed(self.engine, request)
        lacking = {f.rel for f in self.ray.get(handle.missing.remote([f for f, _ in wanted]))}
        for f, path in wanted:
            if f.rel not in lacking:
                continue
            log.info("cluster: copying %s (%.1f MiB) to %s", f.rel, f.size / 2**20, name)
            offset = 0
            for data in files.chunks(path):
                self.ray.get(handle.write.remote(f.rel, offset, data))
                offset += len(data)
            self.ray.get(handle.commit.remote(f.rel, f.sha256))

    def _keep_pictures(self, request, result) -> None:
        """A worker with outputs of its own (no shared data folder): the pictures it saved are saved here too, as
        the head would have saved them, and those are the job's files."""
        from modules import images as images_mod
        from modules import processing

        outputs = self.engine._outputs(request)
        here = Path(outputs.samples).resolve()
        if not result.saved_paths or all(Path(p).resolve().is_relative_to(here) for p in result.saved_paths):
            return  # saved where the head saves (a shared data folder)
        fmt = self.engine.settings.get("samples_format", "png")
        first = result.index_of_first_image
        kept = []
        for i, text in enumerate(result.saved_infotexts):
            seed = result.all_seeds[i] if i < len(result.all_seeds) else result.seed
            picture = result.images[first + i]
            fields = processing.result_name_fields(result, i, picture)
            kept.append(images_mod.save_sample(picture, outputs.samples, seed, text, fmt=fmt, options=outputs.save,
                                               fields=fields))
            if self.engine.settings.get("save_txt", False):
                images_mod.save_parameters_file(kept[-1], text)
        result.saved_paths = kept
        if result.grid_path is not None and not Path(result.grid_path).is_file() and first == 1:
            result.grid_path = images_mod.save_grid(result.images[0], outputs.grids, result.infotexts[0],
                                                    self.engine.settings.get("grid_format", "png"),
                                                    options=outputs.grid_save,
                                                    fields=processing.result_name_fields(result, 0, result.images[0]))

    def _done(self, name: str, out: dict) -> None:
        with self._lock:
            view = self.views[name]
            self._refresh(name, out)
            view.jobs_done += 1
            view.its = out["steps"] / out["seconds"] if out.get("seconds") else None

    def run_many(self, requests: list, on_done=None) -> list | None:
        """Requests made by a script running on the head (the X/Y/Z plot's cells) on the idle workers at once, in
        order; None when no worker is idle (the script then runs them itself). `on_done(i)` after each."""
        with self._lock:
            idle = [v for v in self.views.values() if v.alive and not v.busy]
            for view in idle:
                view.busy, view.job, view.last_used = True, "cells", time.time()
        if not idle:
            return None
        names = [v.name for v in idle]
        settings = _plain(self.engine.settings.as_dict())
        try:
            results = self._spread(requests, names, settings, on_done)
        finally:
            with self._lock:
                for name in names:
                    self.views[name].busy, self.views[name].job = False, ""
            queue = getattr(self.engine, "visible_queue", None)
            if queue is not None:
                queue.wake()
        for request, result in zip(requests, results):
            if result is not None:
                self._keep_pictures(request, result)
                self.engine._index(result)
        return results

    def _spread(self, requests: list, names: list[str], settings: dict, on_done=None, follow=None) -> list:
        """Each request on the next free worker of `names` (a request whose worker is lost runs again on another,
        once); the results in the requests' order (None for those an interrupt left out)."""
        from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

        results: list = [None] * len(requests)
        pending, free, again = list(range(len(requests))), list(names), set()
        running: dict = {}
        with ThreadPoolExecutor(max_workers=len(names)) as pool:
            while pending or running:
                while pending and free and not self.engine.state.stopping_generation:
                    i, name = pending.pop(0), free.pop(0)
                    running[pool.submit(self._on, name, None, requests[i], settings, lambda: None)] = (i, name)
                if not running:
                    break
                done, _ = wait(list(running), timeout=POLL_S, return_when=FIRST_COMPLETED)
                if not done:
                    if follow is not None:
                        follow(min(running.values()), sum(r is not None for r in results))
                    continue
                for future in done:
                    i, name = running.pop(future)
                    try:
                        results[i] = future.result()
                    except _Lost:
                        if i in again:
                            raise
                        again.add(i)
                        pending.insert(0, i)
                        continue
                    free.append(name)
                    if on_done is not None:
                        on_done(i)
                    if results[i].interrupted:
                        pending.clear()
        return results

    def _fan_out(self, job, names: list[str], settings: dict):
        """The request's batches over the workers `names` (each takes the next batch when it is free; a batch
        whose worker is lost runs again on another, once), merged in batch order."""
        parts = fan_out.split(job.request)

        def follow(running, finished):
            i, name = running
            self._follow(job, self.handles[name], finished=finished, parts=len(parts))

        results = self._spread(parts, names, settings, follow=follow)
        return fan_out.merge(job.request, [r for r in results if r is not None], self.engine)

    def _follow(self, job, handle, finished: int = 0, parts: int = 1) -> None:
        """The worker's progress into the job and the head's JobState (of a fanned-out job: its first running
        batch's, counted among the `parts` batches of which `finished` are done)."""
        try:
            snap = self.ray.get(handle.state.remote(), timeout=5)
        except Exception:  # noqa: BLE001 - a slow or lost worker: the run's own result says what happened
            return
        if parts > 1:
            snap["job_count"], snap["job_no"] = parts, finished
            snap["progress"] = (finished + float(snap.get("progress", 0.0))) / parts
        preview = snap.pop("preview", None)
        if preview is not None:
            from PIL import Image

            with Image.open(io.BytesIO(preview)) as im:
                snap["image"] = im.copy()
        elif job.progress is not None:
            snap["image"] = job.progress.get("image")
        job.progress = snap
        st = self.engine.state
        st.job, st.job_count, st.job_no = snap["job"], snap["job_count"], snap["job_no"]
        st.sampling_steps, st.sampling_step = snap["sampling_steps"], snap["sampling_step"]
        st.textinfo = snap["textinfo"]
        if snap["active"] and st.time_start is None:
            st.time_start = time.time()
        if snap.get("image") is not None:
            st.current_image, st.current_image_step = snap["image"], snap["preview_step"]

    def _end_mirror(self) -> None:
        if not any(v.busy for v in self.views.values()) and not self.local_busy:
            self.engine.state.end()
            self.engine.state.interrupted = self.engine.state.skipped = self.engine.state.stopping = False

    def control(self, what: str) -> None:
        """Interrupt or Skip on the head: every worker running a job gets it."""
        for name, view in list(self.views.items()):
            if view.busy and view.alive:
                getattr(self.handles[name], what).remote()

    def _lost(self, name: str) -> None:
        """A worker died: out of the dispatch until Ray has restarted it (then it takes jobs again)."""
        view = self.views[name]
        with self._lock:
            view.alive, view.loaded = False, ()

        def wait_for_restart():
            try:
                info = self.ray.get(self.handles[name].info.remote(), timeout=300)
            except Exception:  # noqa: BLE001 - it stays lost
                log.warning("cluster: worker %s did not come back", name)
                return
            with self._lock:
                self._refresh(name, info)
                view.alive = True
            log.info("cluster: worker %s is back", name)
            queue = getattr(self.engine, "visible_queue", None)
            if queue is not None:
                queue.wake()

        log.warning("cluster: worker %s was lost", name)
        threading.Thread(target=wait_for_restart, daemon=True, name=f"cluster restart {name}").start()

    def _refresh(self, name: str, info: dict) -> None:
        view = self.views[name]
        view.device = info.get("device", view.device)
        view.memory = info.get("memory", view.memory)
        view.loaded = tuple(info.get("loaded", view.loaded))

    def grow(self, make_worker, gpus_per_worker: int = 1) -> list[str]:
        """Start a worker for each GPU the cluster has gained since the last look (a machine that joined with
        `launch.py --worker`); they take jobs as soon as they have started. Returns their names."""
        total = int(self.ray.cluster_resources().get("GPU", 0))
        with self._lock:
            missing = total // gpus_per_worker - len(self.handles)
            names = [f"worker-{len(self.handles) + i + 1}" for i in range(max(missing, 0))]
        started = []
        for name in names:
            handle = make_worker(name)
            info = self.ray.get(handle.info.remote(), timeout=600)
            with self._lock:
                self.handles[name] = handle
                self.views[name] = WorkerView(name=name)
                self._refresh(name, info)
            started.append(name)
            log.info("cluster: %s started on a GPU that joined the cluster", name)
        queue = getattr(self.engine, "visible_queue", None)
        if started and queue is not None:
            queue.wake()
        return started

    def watch(self, make_worker, every_s: float = 15.0) -> None:
        """Look for joined GPUs every `every_s` seconds (a daemon thread)."""
        def loop():
            while True:
                time.sleep(every_s)
                try:
                    self.grow(make_worker)
                except Exception as e:  # noqa: BLE001 - the cluster went away: the next look tries again
                    log.warning("cluster: could not look for new GPUs (%s)", e)

        threading.Thread(target=loop, daemon=True, name="cluster watch").start()

    def workers(self) -> list[dict]:
        """What `GET /sdapi/v1/workers` and the Queue panel show."""
        with self._lock:
            local = {"name": LOCAL, "device": str(self.engine.device_config.device), "loaded": [
                str(m.filename) for m in self.engine.models.loaded], "busy": self.local_busy, "alive": True,
                "jobs_done": None, "job": None, "it_s": None, "memory": ""}
            return [local] + [v.public() for v in self.views.values()]


def loras_of(req) -> tuple[str, ...]:
    """The LoRA names a request's prompt asks for (what its worker's weights will carry after it)."""
    from modules.networks import extra_networks

    _, networks = extra_networks.parse_prompt(str(getattr(req, "prompt", "") or ""))
    return tuple(sorted(p.items[0] for p in networks.get("lora", []) + networks.get("lyco", []) if p.items))


SCRIPT_HOOKS = ("setup", "before_process", "process", "before_process_batch", "after_extra_networks_activate",
                "process_before_every_sampling", "process_batch", "postprocess_batch", "postprocess_batch_list",
                "on_mask_blend", "postprocess_image", "postprocess_maskoverlay", "postprocess_image_after_composite",
                "postprocess", "before_hr")


def acts_on_generation(script) -> bool:
    """Whether an always-on script has a hook into the generation (the built-in ControlNet script, a shim whose
    units travel in the request, has none)."""
    from modules import scripts

    return any(getattr(type(script), hook, None) is not getattr(scripts.Script, hook, None) for hook in SCRIPT_HOOKS)


def _plain(settings: dict) -> dict:
    """The settings a worker can take (plain values)."""
    import json

    out = {}
    for name, value in settings.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        out[name] = value
    return out


def _cause(error) -> BaseException:
    try:
        return error.as_instanceof_cause()
    except Exception:  # noqa: BLE001 - Ray could not rebuild the original type
        return RuntimeError(str(error))


class ClusterUnreachable(ConnectionError):
    """No Ray cluster answers at the address --cluster names."""


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """HOST:PORT (or ray://HOST:PORT) answers a TCP connection, else ClusterUnreachable saying what to do."""
    import socket

    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ClusterUnreachable(f"--cluster {address}: expected auto, address=HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ClusterUnreachable(
            f"--cluster: no Ray cluster answers at {hostport} ({e.strerror or e}); start its head there with "
            f"`ray start --head --port={port}`, or use --cluster auto for this machine's GPUs") from None


def start_cluster(engine, args, argv: list[str] | None = None):
    """Connect to (or start) Ray, start the workers (with the head's flags, `cmd_args.worker_argv`, unless `argv`
    is given), and make them the queue's executor. Returns the executor."""
    import os

    # Ray's C++ crash handler would take SIGTERM from the server (a stack dump instead of a graceful stop)
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the machine
    try:
        import ray
    except ImportError as e:
        raise SystemExit(f"--cluster needs Ray: pip install -r requirements-cluster.txt ({e})") from None
    from modules.job_queue import ensure_queue

    address = str(args.cluster)
    if address.startswith("address="):
        address = address.split("=", 1)[1]
    if address != "auto":
        check_reachable(address)  # Ray itself would retry an unreachable address for minutes
    init = dict(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    if address == "auto":
        import torch

        gpus = torch.cuda.device_count()
        count = int(args.cluster_workers or gpus or 2)
        ray.init(num_cpus=max(count, 1), num_gpus=gpus, _node_ip_address="127.0.0.1", **init)
    else:
        ray.init(address=address, **init)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        count = int(args.cluster_workers or gpus or 1)
    Worker = ray.remote(max_concurrency=4, max_restarts=-1)(
        __import__("modules.cluster.worker", fromlist=["EngineWorker"]).EngineWorker)
    options = {"num_gpus": 1} if gpus else {"num_cpus": 1}
    threads = [] if gpus else ["--threads", "1"]  # CPU workers split the cores
    from modules import cmd_args

    base = list(argv) if argv is not None else cmd_args.worker_argv(args)
    def make_worker(name: str):
        return Worker.options(**options).remote(base + threads, name)

    handles = {f"worker-{i + 1}": make_worker(f"worker-{i + 1}") for i in range(count)}
    executor = ClusterExecutor(engine, handles)
    if gpus and not args.cluster_workers:  # one worker per GPU: GPUs that join later get theirs too
        executor.watch(make_worker)
    queue = ensure_queue(engine)
    queue.executor = executor
    queue.wake()
    log.info("cluster: %d worker(s) on %s", count, address)
    return executor

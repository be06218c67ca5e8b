"""The job queue on a Ray cluster (modules/cluster, `--cluster`): a head and two CPU workers in a network namespace
that has only `lo` (so nothing leaves the machine and Ray registers its workers on loopback). The scenario runs as
a process of its own (tests/cluster_scenario.py); this test checks what it reports. Skipped without Ray or without
the rights to make a namespace."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from modules.cluster.dispatch import WorkerView, assign, pick_worker

ROOT = Path(__file__).resolve().parent.parent


def _views(*specs) -> list[WorkerView]:
    return [WorkerView(name=n, loaded=tuple(loaded), busy=busy, last_used=used) for n, loaded, busy, used in specs]


def test_dispatch_prefers_the_worker_holding_the_model_and_looks_down_the_queue_for_one():
    a_x, b_y = _views(("a", ["X"], False, 1.0), ("b", ["Y"], False, 2.0))
    assert pick_worker("X", [a_x, b_y]) is a_x and pick_worker("Y", [a_x, b_y]) is b_y
    assert pick_worker("Z", [a_x, b_y]) is a_x  # nobody holds it: the least recently used loads it
    a_x.busy = True
    assert pick_worker("X", [a_x, b_y], holders_only=True) is None
    # the X worker is busy: the Y worker takes the Y job further down rather than loading X
    assert assign([("j1", "X"), ("j2", "Y")], [a_x, b_y]) == ("j2", b_y)
    # no job fits an idle holder: the first in line goes to the idle worker, which loads its model
    assert assign([("j1", "X"), ("j3", "X")], [a_x, b_y]) == ("j1", b_y)
    b_y.busy = True
    assert assign([("j1", "X")], [a_x, b_y]) is None  # all busy: it waits
    a_x.busy, a_x.alive = False, False
    assert assign([("j1", "X")], [a_x, b_y]) is None  # a lost worker takes nothing
    # two workers hold X: the one whose weights carry the job's LoRAs already takes it
    plain, styled = _views(("p", ["X"], False, 1.0), ("s", ["X"], False, 2.0))
    styled.loras = ("ink",)
    assert assign([("j", "X", ("ink",))], [plain, styled]) == ("j", styled)
    assert assign([("j", "X", ())], [plain, styled]) == ("j", plain)


def test_a_worker_gets_the_heads_flags_but_not_its_logins_ports_or_cluster(tmp_path):
    from modules import cmd_args

    ns = cmd_args.parse_args(["--data-dir", str(tmp_path), "--cluster", "auto", "--cluster-workers=2", "--threads", "1",
                              "--no-half-vae", "--api-auth", "alice:s3cret", "--port", "7000", "--listen",
                              "--medvram", "--use-cpu", "all"], env={})
    argv = cmd_args.worker_argv(ns)
    assert "s3cret" not in " ".join(argv) and "--port" not in argv and "--cluster" not in argv
    again = cmd_args.parse_args(argv, env={})
    assert (str(again.data_dir), again.threads, again.no_half_vae, again.medvram, again.use_cpu) == (
        str(tmp_path), 1, True, True, ["all"])


def _namespace_ok() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow  # a Ray head and two workers: about a minute on 2 cores
def test_two_workers_affinity_identical_pictures_progress_interrupt_and_failover(tmp_path, tiny_models):
    pytest.importorskip("ray")
    if not _namespace_ok():
        pytest.skip("cannot make a network namespace here (unshare -n needs root or user namespaces)")
    ckpt = tmp_path / "models" / "Stable-diffusion"
    ckpt.mkdir(parents=True)
    for name in ("X", "Y"):
        shutil.copy(tiny_models.path("sd1.safetensors"), ckpt / f"{name}.safetensors")
    script = f"ip link set lo up && exec {sys.executable} {ROOT / 'tests' / 'cluster_scenario.py'} {tmp_path}"
    proc = subprocess.run(["unshare", "-n", "bash", "-c", script], capture_output=True, text=True, timeout=420,
                          env={**__import__("os").environ, "RAY_USAGE_STATS_ENABLED": "0"})
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, (proc.stdout[-3000:], proc.stderr[-5000:])
    out = json.loads(line[len("RESULT "):])

    aff = out["affinity"]
    assert aff["statuses"] == ["done"] * 5 and all(aff["same_as_in_process"]), aff  # the queue is transparent
    assert aff["workers"][0] != aff["workers"][1], aff  # X and Y start side by side
    # each model is read once per worker that needs it: a job runs where its model is loaded; only when no
    # queued job fits an idle worker (its model's worker still busy) does that worker load another
    assert all(count == 1 for loads in aff["loads"].values() for count in loads.values()), aff
    assert sum(len(loads) for loads in aff["loads"].values()) <= 3, aff
    assert aff["saved_indexed"] and aff["listed"] == ["local", "worker-1", "worker-2"]

    fan = out["fan_out"]  # Batch count 4 over both workers: exactly the single run, grid first
    assert fan["status"] == "done" and fan["images"] == 5 and fan["grid_first"], fan
    assert fan["same_pictures"] and fan["same_infotexts"] and fan["seeds"] == [31, 32, 33, 34], fan
    assert fan["workers_used"] == ["worker-1", "worker-2"], fan

    xyz = out["xyz"]  # the X/Y/Z plot runs on the head, its four cells on both workers: the same plot
    assert xyz["status"] == "done" and xyz["worker"] == "local" and xyz["same"], xyz
    assert xyz["cells_on"] == ["worker-1", "worker-2"], xyz

    stop = out["interrupt"]
    assert stop["status"] == "done" and stop["interrupted"], stop
    assert len(set(stop["steps_seen"])) >= 3 and stop["previews"], stop  # progress and previews from the worker
    assert stop["last"] <= stop["asked_at_step"] + 2 or stop["returned_s"] < 2, stop  # within ~2 steps
    assert out["after_interrupt"]["status"] == "done"  # the worker kept its model and goes on

    copy = out["copy"]  # a worker without the models folder: copied, checked, and the pictures kept on the head
    assert copy["status"] == "done" and copy["copied"] and copy["no_part_left"] and copy["embedding_copied"], copy
    assert copy["same_as_in_process"] and copy["saved_on_head"] and copy["indexed"], copy

    lost = out["failover"]
    assert lost["status"] == "done" and lost["retried"] == 1 and lost["ran_on"] != lost["victim"], lost
    assert lost["stored"] == [lost["ran_on"], 1]  # the jobs table records where it ran and that it was retried
    assert lost["same_as_in_process"] and lost["slowest_listing_s"] < 1.0, lost


def test_the_workers_view_lists_this_process_and_a_clusters_workers(engine):
    from modules.job_queue import ensure_queue, workers_of
    from webui import queue_panel

    queue = ensure_queue(engine)
    (local,) = workers_of(engine)
    assert local["name"] == "local" and local["device"] == "cpu" and local["alive"]
    assert queue_panel.workers_html(engine) == ""  # one process: nothing more to show

    class Cluster:  # what ClusterExecutor.workers() answers
        def workers(self):
            return [local, WorkerView("worker-1", "cuda:0", ("/m/X.safetensors",), busy=True, job="abc",
                                      jobs_done=3, its=12.5, memory="3.1/24.0 GiB").public(),
                    WorkerView("worker-2", "cuda:1", alive=False).public()]

    queue.executor = Cluster()
    try:
        table = queue_panel.workers_html(engine)
    finally:
        queue.executor = None
    assert "worker-1" in table and "running abc" in table and "X" in table and "12.50 it/s" in table
    assert "3 done" in table and "3.1/24.0 GiB" in table and "lost" in table


def test_worker_flag_joins_the_heads_cluster_with_this_machines_gpus(tmp_path, capsys):
    from modules import cmd_args
    from modules.cluster.node import join_as_node, node_command

    cmd = node_command("10.0.0.5:6379", 2)
    assert cmd[1:] == ["start", "--address=10.0.0.5:6379", "--block", "--disable-usage-stats", "--num-gpus=2"]
    ns = cmd_args.parse_args(["--data-dir", str(tmp_path), "--worker"], env={})
    assert join_as_node(ns) == 2 and "--cluster address=HOST:PORT" in capsys.readouterr().err


def test_a_job_goes_to_a_worker_unless_a_script_of_the_heads_acts_on_it():
    """The page always sends script arguments: a job with no script picked, whose always-on scripts have no hook
    into the generation (the built-in ControlNet shim), still runs on a worker."""
    from types import SimpleNamespace

    from modules import scripts
    from modules.cluster.executor import ClusterExecutor
    from modules.request_types import Txt2ImgRequest

    class Shim(scripts.Script):
        def title(self):
            return "ControlNet"

    class Watermark(scripts.Script):
        def postprocess_image(self, p, pp, *args):
            pass

    always = [Shim()]
    engine = SimpleNamespace(scripts=SimpleNamespace(for_mode=lambda mode: SimpleNamespace(alwayson_scripts=always)))
    executor = ClusterExecutor.__new__(ClusterExecutor)
    executor.engine = engine

    def job(args, **fields):
        return SimpleNamespace(request=Txt2ImgRequest.from_dict({"prompt": "x", **fields}), script_args=args,
                               mode="txt2img")

    assert executor.runs_remotely(job([0, 1, 2]))  # no script picked; the shim does nothing to the generation
    assert executor.runs_remotely(job(None))  # an API call
    assert not executor.runs_remotely(job([3, "X/Y/Z args"]))  # X/Y/Z plot picked: it runs on the head
    assert not executor.runs_remotely(job(None, script_name="x/y/z plot"))
    always.append(Watermark())
    assert not executor.runs_remotely(job([0]))  # an extension's always-on hook: the head runs it
    assert not executor.runs_remotely(SimpleNamespace(request=None, script_args=None, mode="txt2img"))


def test_gpus_that_join_the_cluster_later_get_workers_that_take_jobs():
    from types import SimpleNamespace

    from modules.cluster.executor import ClusterExecutor

    gpus = {"GPU": 2.0}
    fake_ray = SimpleNamespace(cluster_resources=lambda: dict(gpus), get=lambda ref, timeout=None: ref)

    def make_worker(name):
        return SimpleNamespace(info=SimpleNamespace(remote=lambda: {"device": "cuda:0", "loaded": []}))

    woken = []
    executor = ClusterExecutor.__new__(ClusterExecutor)
    executor.ray, executor._lock = fake_ray, __import__("threading").Lock()
    executor.handles = {"worker-1": make_worker("worker-1"), "worker-2": make_worker("worker-2")}
    executor.views = {name: WorkerView(name=name) for name in executor.handles}
    executor.engine = SimpleNamespace(visible_queue=SimpleNamespace(wake=lambda: woken.append(1)))
    assert executor.grow(make_worker) == [] and not woken  # nothing new
    gpus["GPU"] = 4.0  # a machine with two GPUs joined (launch.py --worker)
    assert executor.grow(make_worker) == ["worker-3", "worker-4"] and woken
    assert pick_worker(None, list(executor.views.values())).name == "worker-1"  # all idle: they can take jobs
    assert executor.views["worker-3"].device == "cuda:0"


def test_an_address_where_no_cluster_answers_is_a_clear_start_up_error_not_a_hang():
    import socket

    from modules.cluster.executor import ClusterUnreachable, check_reachable

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ClusterUnreachable, match=f"no Ray cluster answers at 127.0.0.1:{port}.*ray start --head"):
        check_reachable(f"127.0.0.1:{port}", timeout_s=2)
    with pytest.raises(ClusterUnreachable, match="expected auto, address=HOST:PORT"):
        check_reachable("somewhere")
    assert issubclass(ClusterUnreachable, OSError)  # the start-up reports it in one line, without a traceback

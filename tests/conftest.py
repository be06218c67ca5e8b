"""Shared fixtures: tiny random-weight models of the real architectures, written once per test session in the
real on-disk formats (A1111 single-file `.safetensors` / `.ckpt`, a diffusers folder), loaded through the same
code a user's checkpoint goes through."""
from __future__ import annotations

import gc
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
# The servers the tests start would open the desktop's browser (A1111's auto_launch_browser is Local by default): the
# `true` command stands in for it (Python's webbrowser runs $BROWSER)
os.environ["BROWSER"] = "true"
from tests.allocator import reuse_freed_memory  # noqa: E402 - the repository is on sys.path now

reuse_freed_memory()  # here, in xdist's controller: the workers it starts next inherit it


def pytest_configure(config):
    """Test files run in parallel (pytest.ini): each worker computes on one thread, which is also what the engine's
    thread policy picks for these tiny models (modules/cpu_threads.py). Only the processes that run tests import
    torch: xdist's controller starts the workers ~2 s sooner without it."""
    if getattr(config, "workerinput", None) is None and config.getoption("numprocesses", None) not in (None, 0):
        return  # the controller of parallel workers
    gc.disable()  # collecting imports and builds a large heap of live objects: no full passes over it meanwhile
    import torch

    from modules import cpu_threads

    torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1)))
    # Engines made here see one usable core, so every job runs on one thread unless a test sets --threads or the
    # setting: the automatic count follows other processes' load, which a parallel run changes from moment to
    # moment, and the same picture computed on 1 and then 2 threads differed by 1 in some pixels (a bit-for-bit
    # comparison failed ~1 run in 3); a second thread also only spins on cores the other workers keep busy.
    cpu_threads.usable_cores = lambda: 1


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker per physical core, at most 4, plus one when the run includes the slow tests. Browser
    tests spend part of their time waiting on Chromium and the server, which a third worker fills on 2 cores
    (measured: 280 s with 3 workers, 370 s with 2); the quick tests (`-m "not slow"`) wait on nothing, and an extra
    worker only adds its ~10 CPU-s of collection (measured: 68 s with 2 workers, 84 s with 3)."""
    from modules.cpu_threads import usable_cores

    cores = usable_cores()
    quick_only = "not slow" in (config.getoption("markexpr", "") or "")
    return max(1, min(4, cores if quick_only else cores + 1))


# The files each family is written as (file name in models/Stable-diffusion → family).
MODEL_FILES = {
    "sd1.safetensors": "sd1",
    "sd1-inpainting.safetensors": "sd1_inpaint",
    "sd2-v.safetensors": "sd2",
    "sdxl.safetensors": "sdxl",
    "sdxl-refiner.safetensors": "sdxl_refiner",
    "sd1-ckpt.ckpt": "sd1",
}


@dataclass
class TinyModels:
    """Where the session's tiny models live, and the diffusers components they were written from."""

    data_dir: Path
    ckpt_dir: Path
    components: dict[str, dict]

    def path(self, name: str) -> Path:
        return self.ckpt_dir / name


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> TinyModels:
    from tests.tiny_models import build_tiny, write_diffusers_folder, write_single_file

    data = tmp_path_factory.mktemp("data")
    ckpt_dir = data / "models" / "Stable-diffusion"
    ckpt_dir.mkdir(parents=True)
    components = {}
    for name, family in MODEL_FILES.items():
        comps = components.setdefault(family, build_tiny(family))
        write_single_file(comps, family, ckpt_dir / name)
    # SD2.x eps vs v cannot be told from shapes: A1111 reads a .yaml beside the checkpoint.
    (ckpt_dir / "sd2-v.yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    write_diffusers_folder(components["sd1"], ckpt_dir / "sd1-diffusers", family="sd1")
    return TinyModels(data_dir=data, ckpt_dir=ckpt_dir, components=components)


@pytest.fixture(scope="session")
def load_tiny(tiny_models):
    """Load a tiny checkpoint by file name through the user's loading path (cached per session)."""
    from modules import devices
    from modules.models import loader

    cache = {}

    def load(name: str):
        if name not in cache:
            cache[name] = loader.load_model(tiny_models.path(name), devices.cpu(), name=name, shorthash="0123456789")
        return cache[name]

    return load


_last_file = {"path": None}


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """At each file's first test, what exists (imports, collected tests, session fixtures) is moved out of the cyclic
    collector's sight (tests/frozen_gc.py): its full passes, automatic or the model manager's `gc.collect()` on each
    model it drops, then look only at what the file makes. Each pass over a worker's whole heap took ~0.3 s: they
    added up to ~100 of a run's ~580 CPU-s (16 of them while collecting, which now runs with the collector off);
    now ~27."""
    path = item.fspath.strpath
    if path != _last_file["path"]:
        _last_file["path"] = path
        gc.collect()
        gc.freeze()
        gc.enable()


@pytest.fixture
def frozen_gc():
    """`gc_frozen()` (tests/frozen_gc.py) for one test."""
    from tests.frozen_gc import gc_frozen

    with gc_frozen():
        yield


@pytest.fixture
def data_dir(tmp_path, tiny_models) -> Path:
    """A fresh A1111 data dir whose models/Stable-diffusion links to the session's tiny checkpoints."""
    ckpt = tmp_path / "models" / "Stable-diffusion"
    ckpt.mkdir(parents=True)
    for name in ("sd1.safetensors", "sdxl.safetensors"):
        os.symlink(tiny_models.path(name), ckpt / name)
    return tmp_path


@pytest.fixture
def engine(data_dir):
    from modules.engine import Engine
    from modules.paths import Paths
    from modules import cmd_args

    ns = cmd_args.parse_args(["--data-dir", str(data_dir), "--skip-install"], env={})
    return Engine.create(Paths.from_args(ns))


# module fixtures that start `launch.py` (file → fixture name)
SERVER_FIXTURES = {"test_api.py": "api", "test_page_compat.py": "site", "test_security.py": "servers",
                   "test_webui.py": "server", "test_openapi.py": "server", "test_controlnet_ui.py": "server"}


# Seconds each test file took in a whole run on 2 cores (3 workers; 2026-12-05, files over 4 s). Only the order
# files are handed out in depends on it: re-measure with `--durations=0` when a file's time changes a lot.
FILE_SECONDS = {"test_webui.py": 134, "test_cluster.py": 52, "test_launch.py": 48,
                "test_controlnet_preprocessors.py": 47, "test_ui_feedback_browser.py": 40, "test_controlnet_ui.py": 35,
                "test_security.py": 31, "test_settings_ui.py": 31, "test_loading.py": 29, "test_installers.py": 27,
                "test_api.py": 23, "test_queue_ui.py": 22, "test_prompt_parser.py": 19, "test_extensions_browser.py": 19,
                "test_openapi.py": 19, "test_memory.py": 17, "test_processing.py": 17, "test_controlnet.py": 16,
                "test_demo_model.py": 15, "test_flow_loading.py": 14, "test_page_compat.py": 13, "test_training.py": 13,
                "test_controlnet_annotators_more.py": 12, "test_extra_networks_ui.py": 12,
                "test_face_restoration.py": 11, "test_merge.py": 11, "test_extensions_ui.py": 10,
                "test_controlnet_segmentation.py": 9, "test_lora.py": 9, "test_extras_ui.py": 8,
                "test_controlnet_reference.py": 8, "test_flow_parity.py": 8, "test_hires_checkpoint.py": 8,
                "test_demo_controlnet.py": 8, "test_refiner.py": 8, "test_queue.py": 5, "test_parity.py": 5,
                "test_controlnet_pulid_face.py": 5}


# The same for the quick loop (`-m "not slow"`; 2 workers, 2026-12-05, files over 1.5 s).
QUICK_SECONDS = {"test_controlnet.py": 12, "test_refiner.py": 7, "test_memory.py": 5, "test_flow_loading.py": 5,
                 "test_startup.py": 4, "test_loading.py": 4, "test_hires_checkpoint.py": 4, "test_flow_parity.py": 4,
                 "test_training.py": 3, "test_queue.py": 3, "test_face_restoration.py": 3,
                 "test_extensions_runtime.py": 3, "test_extensions_compat.py": 3, "test_sd3_controlnet.py": 2,
                 "test_processing.py": 2, "test_merge.py": 2, "test_ldm_export.py": 2, "test_instruct_pix2pix.py": 2,
                 "test_img2img_batch.py": 2, "test_hypernetworks.py": 2, "test_flux_controlnet.py": 2,
                 "test_flow_lora.py": 2, "test_demo_model.py": 2, "test_controlnet_pulid_face.py": 2,
                 "test_controlnet_preprocessors.py": 2, "test_controlnet_instantid.py": 2,
                 "test_controlnet_faceid.py": 2, "test_controlnet_external_code.py": 2, "test_controlnet_api.py": 2,
                 "test_controlnet_annotators_more.py": 2, "test_cluster.py": 2, "test_builtin_scripts.py": 2}


def pytest_collection_modifyitems(session, config, items):
    """Files in order of their measured time in this kind of run, longest first (in a whole run the rest by their
    number of slow tests): xdist hands out whole files in this order (pytest.ini turns off its own reordering by
    test count), so the long ones start at once instead of finishing alone at the end."""
    for item in items:  # a server behind a module fixture costs a second or two to start
        if SERVER_FIXTURES.get(item.fspath.basename) in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
    quick = "not slow" in (config.getoption("markexpr", "") or "")
    seconds = QUICK_SECONDS if quick else FILE_SECONDS
    weight: dict[str, float] = {}
    for item in items:
        key = item.fspath.strpath
        weight.setdefault(key, float(seconds.get(item.fspath.basename, 0)))
        if not quick and item.fspath.basename not in seconds and item.get_closest_marker("slow") is not None:
            weight[key] += 0.5
    items.sort(key=lambda item: -weight[item.fspath.strpath])

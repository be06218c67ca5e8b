"""The CPU thread policy: 1 thread for small work, free cores for large work, the user's count when set."""
from __future__ import annotations

import subprocess
import sys
import threading
import time

import torch

from modules import cpu_threads
from modules.cpu_threads import Work, choose

DEMO_64 = Work(channels=32, latent_pixels=8 * 8, rows=2)  # the demo model at 64x64 with CFG
DEMO_128 = Work(channels=32, latent_pixels=16 * 16, rows=2)  # already worth a second core when it is free
SD15_512 = Work(channels=320, latent_pixels=64 * 64, rows=2)  # SD1.5 at 512x512 with CFG


def test_policy_table():
    assert choose(DEMO_64, cores=8, busy_others=0).threads == 1
    assert choose(SD15_512, cores=8, busy_others=0).threads == 8
    assert choose(DEMO_128, cores=2, busy_others=0).threads == 2
    assert choose(DEMO_128, cores=2, busy_others=1.0).threads == 1
    assert choose(SD15_512, cores=2, busy_others=1.0).threads == 1  # one core kept busy by another program
    assert choose(SD15_512, cores=8, busy_others=2.6).threads == 5
    assert choose(SD15_512, cores=4, busy_others=9).threads == 1  # never fewer than one
    assert choose(SD15_512, cores=8, busy_others=0, forced=3).threads == 3
    assert choose(DEMO_64, cores=8, busy_others=0, forced=6).threads == 6  # the user's count is never second-guessed
    assert choose(None, cores=4, busy_others=0).threads == 4


def test_work_from_the_model_config():
    class Config:
        block_out_channels = [320, 640, 1280, 1280]

    work = Work.for_job(Config(), 512, 768, batch=2, cfg=True)
    assert (work.channels, work.latent_pixels, work.rows) == (320, 64 * 96, 4)
    assert Work.for_job(Config(), 512, 512, batch=1, cfg=False).op_flops < SD15_512.op_flops


def test_other_programs_load_is_seen():
    load = cpu_threads.OtherLoad(every_s=0.1).start()
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        deadline = time.time() + 10
        while load.busy_cores() < 0.5 and time.time() < deadline:
            time.sleep(0.1)
        assert load.busy_cores() >= 0.5
    finally:
        busy.kill()
        busy.wait()


def _threads_in_a_job(engine, **options) -> int:
    """torch's thread count seen inside the sampling loop of a job run in a fresh thread (as the server does)."""
    seen = []
    unet = engine.models.get().unet
    original = unet.forward

    def forward(*a, **kw):
        seen.append(torch.get_num_threads())
        return original(*a, **kw)

    unet.forward = forward
    try:
        req = dict(prompt="apple", steps=1, width=64, height=64, do_not_save_samples=True, do_not_save_grid=True,
                   override_settings=options)
        worker = threading.Thread(target=lambda: engine.txt2img(req))
        worker.start()
        worker.join(120)
    finally:
        del unet.forward
    return seen[0]


def test_engine_applies_the_policy_in_the_job_thread(engine):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert _threads_in_a_job(engine) == 1  # a tiny model: one thread
        assert _threads_in_a_job(engine, cpu_threads=2) == 2  # the setting decides when set
        engine.threads.forced = 3
        assert _threads_in_a_job(engine, cpu_threads=2) == 3  # --threads beats the setting
    finally:
        engine.threads.forced = 0
        torch.set_num_threads(before)


def test_threads_flag_reaches_the_jobs(data_dir):
    from modules import cmd_args
    from modules.engine import Engine

    ns = cmd_args.parse_args(["--data-dir", str(data_dir), "--skip-install", "--threads", "2"], env={})
    engine = Engine.from_args(ns)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert _threads_in_a_job(engine) == 2  # a tiny model would get 1 thread without the flag
    finally:
        torch.set_num_threads(before)


def test_bad_thread_counts_are_refused(capsys):
    import pytest

    from modules import cmd_args
    from modules.settings import Settings

    with pytest.raises(SystemExit):
        cmd_args.parse_args(["--threads", "-1"], env={})
    assert "--threads" in capsys.readouterr().err
    with pytest.raises(ValueError, match="cpu_threads"):
        Settings().set("cpu_threads", -2)


def test_a_transformer_job_is_sized_by_its_width_and_tokens():
    """Flux/SD3 configs have no conv widths: a tiny test transformer is small work (1 thread), Flux dev at 1024²
    is not."""
    from types import SimpleNamespace

    from modules.cpu_threads import SMALL_WORK_FLOPS, Work

    tiny = Work.for_job(SimpleNamespace(num_attention_heads=2, attention_head_dim=16), 64, 64, 1, cfg=False)
    flux = Work.for_job(SimpleNamespace(num_attention_heads=24, attention_head_dim=128), 1024, 1024, 1, cfg=False)
    assert tiny.op_flops < SMALL_WORK_FLOPS < flux.op_flops
    assert flux.op_flops == 2 * 3072 * 3072 * (64 * 64 + 256)

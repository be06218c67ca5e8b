"""How many CPU threads torch uses for a job: chosen per job from the work's size and the cores other programs
leave free, because torch's default (every core, always) is the slowest choice on a shared desktop.

Measured on a 2-core machine (bench/bench_cpu_threads.py, bench/README.md): small work (the demo model) runs
fastest on 1 thread, and when another program keeps one core busy, 2 threads made it 5-24x slower (the intra-op
pool waits on a descheduled thread for each of thousands of tiny ops). Large work (SD1.5 at 512) gains from every
idle core. So:

- ``--threads N`` or the setting ``cpu_threads`` (> 0) decides, always;
- else work whose typical operation (a 3x3 convolution of the denoiser's first block, over the job's latent and
  batch) is below ``SMALL_WORK_FLOPS`` gets 1 thread;
- larger work gets the usable physical cores minus those other processes keep busy (at least 1).

Other processes' load is sampled in the background (system CPU time minus this process's own, every half
second), so choosing costs nothing at job start. Thread counts are per thread in torch's OpenMP build, so the
policy is applied in the thread that runs the job (``apply``), for generation and training alike.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

# Per-op FLOPs below which one thread wins, measured on 2 idle cores (bench/bench_cpu_threads.py, bench/README.md):
# the demo model at 64x64 (2.4 MFLOP per op) is 1.2-1.5x faster on 1 thread; at 128x128 (9.4 MFLOP) 2 threads win
# by 14%, at 256 by 25%, at 512 by 37%; SD1.5 at 256 (3.8 GFLOP) and above gains from every core.
SMALL_WORK_FLOPS = 5e6
SAMPLE_EVERY_S = 0.5


@dataclass(frozen=True)
class Work:
    """The size of one denoiser call, told by its typical operation: a 3x3 convolution at the first block's
    width over the latent (rows = batch, doubled with CFG)."""

    channels: int
    latent_pixels: int
    rows: int = 1
    kernel: int = 9  # 3x3 convolution (UNet); 1 for a transformer's linear layer over its tokens

    @property
    def op_flops(self) -> float:
        return 2.0 * self.kernel * self.channels * self.channels * self.latent_pixels * self.rows

    @classmethod
    def for_job(cls, unet_config, width: int, height: int, batch: int, cfg: bool, vae_scale: int = 8) -> "Work":
        rows = batch * (2 if cfg else 1)
        heads = getattr(unet_config, "num_attention_heads", None)
        head_dim = getattr(unet_config, "attention_head_dim", None)
        if isinstance(heads, int) and isinstance(head_dim, int) and not hasattr(unet_config, "block_out_channels"):
            # Flux/SD3: a linear layer of the model's width over the image's 2x2 patches and ~256 text tokens
            tokens = (width // vae_scale // 2) * (height // vae_scale // 2) + 256
            return cls(heads * head_dim, tokens, rows, kernel=1)
        channels = (getattr(unet_config, "block_out_channels", None) or [320])[0]
        return cls(int(channels), max(1, (width // vae_scale) * (height // vae_scale)), rows)


def usable_cores() -> int:
    """Physical cores this process may run on (affinity and cgroup-free count; SMT siblings do not help here)."""
    try:
        logical = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        logical = os.cpu_count() or 1
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or logical
        per_core = max(1, (psutil.cpu_count(logical=True) or logical) // physical)
    except Exception:  # noqa: BLE001 - psutil missing or unsupported platform: count logical cores
        per_core = 1
    return max(1, logical // per_core)


class OtherLoad:
    """How many cores other processes keep busy, as a moving average sampled by a daemon thread."""

    def __init__(self, every_s: float = SAMPLE_EVERY_S):
        self.every_s = every_s
        self._busy = 0.0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        """(wall, all processes' busy CPU seconds, this process's CPU seconds), or None where unknown."""
        try:
            import psutil

            t = psutil.cpu_times()
        except Exception:  # noqa: BLE001
            return None
        busy = sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))
        own = os.times()
        return time.monotonic(), busy, own.user + own.system

    def _run(self) -> None:
        last = self._sample()
        while last is not None:
            time.sleep(self.every_s)
            now = self._sample()
            if now is None:
                return
            wall = now[0] - last[0]
            if wall > 0:
                others = max(0.0, ((now[1] - last[1]) - (now[2] - last[2])) / wall)
                with self._lock:
                    self._busy = 0.3 * self._busy + 0.7 * others
            last = now

    def start(self) -> "OtherLoad":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="cpu-load-sampler", daemon=True)
            self._thread.start()
        return self

    def busy_cores(self) -> float:
        self.start()
        with self._lock:
            return self._busy


@dataclass(frozen=True)
class Choice:
    threads: int
    reason: str


def choose(work: Work | None, cores: int, busy_others: float, forced: int = 0,
           small_flops: float = SMALL_WORK_FLOPS) -> Choice:
    """The policy, pure: forced count, else 1 for small work, else the cores others leave free (at least 1)."""
    if forced > 0:
        return Choice(forced, "set by --threads / the cpu_threads setting")
    if work is not None and work.op_flops < small_flops:
        return Choice(1, f"small work ({work.op_flops / 1e9:.2g} GFLOP per op)")
    free = max(1, min(cores, int(cores - busy_others + 0.5)))
    why = f"{cores} core{'s' if cores != 1 else ''}"
    if free < cores:
        why += f", {cores - free} kept busy by other programs"
    return Choice(free, why)


_SHARED_LOAD: OtherLoad | None = None
_SHARED_LOCK = threading.Lock()


def shared_load() -> OtherLoad:
    """One sampler per process, started at once so it has seen the machine before the first job."""
    global _SHARED_LOAD
    with _SHARED_LOCK:
        if _SHARED_LOAD is None:
            _SHARED_LOAD = OtherLoad().start()
        return _SHARED_LOAD


class ThreadPolicy:
    """The engine's policy object: ``apply(work)`` sets torch's thread count for the calling thread. `watch`
    starts the load sampler now (the engine does so on the CPU)."""

    def __init__(self, forced: int = 0, cores: int | None = None, load: OtherLoad | None = None,
                 watch: bool = False):
        self.forced = max(0, int(forced or 0))
        self.cores = cores or usable_cores()
        self.load = load or (shared_load() if watch else None)
        self.last: Choice | None = None

    def choose(self, work: Work | None, setting: int = 0) -> Choice:
        forced = self.forced or max(0, int(setting or 0))
        small = work is not None and work.op_flops < SMALL_WORK_FLOPS
        if forced or small or self.cores == 1:
            busy = 0.0
        else:
            self.load = self.load or shared_load()
            busy = self.load.busy_cores()
        return choose(work, self.cores, busy, forced)

    def apply(self, work: Work | None, setting: int = 0) -> Choice:
        import torch

        choice = self.choose(work, setting)
        if torch.get_num_threads() != choice.threads:
            torch.set_num_threads(choice.threads)
        if choice != self.last:
            log.info("CPU threads: %d (%s)", choice.threads, choice.reason)
        self.last = choice
        return choice

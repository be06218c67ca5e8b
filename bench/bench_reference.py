#!/usr/bin/env python
"""Reference units' cost, side by side in one run: our txt2img without a unit and with reference_only,
reference_adain and reference_adain+attn (each runs the UNet twice per step inside its window: the reference pass,
then the real one), with the peak CUDA memory of each and a check that the pictures are finite (fp16 AdaIN and
attention banks). No diffusers pipeline implements the extension's algorithm, so there is no "theirs" side.

    python bench/bench_reference.py                                  # CPU: SD1.5 size, 256x256, 10 steps
    python bench/bench_reference.py --device cuda --dtype fp16 --size 512 --steps 20 --rounds 3
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for p in (str(REPO), str(REPO / "bench")):
    if p not in sys.path:
        sys.path.insert(0, p)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench_controlnet import control_picture, sd15_args  # noqa: E402
from bench_txt2img import NEGATIVE, PROMPT, device_config, ensure_model_file, sync  # noqa: E402

MODULES = ("none", "reference_only", "reference_adain", "reference_adain+attn")


def main(argv=None) -> int:
    args = sd15_args(__doc__.split("\n\n")[0], argv, rounds=2)
    from modules.engine import Engine
    from modules.paths import Paths

    tmp = tempfile.TemporaryDirectory(prefix="sdbench-ref-")
    paths = Paths.from_args(argparse.Namespace(data_dir=tmp.name, ckpt=str(ensure_model_file(args))))
    engine = Engine.create(paths, device_config=device_config(args), no_hashing=True)
    engine.models.get()
    picture = control_picture(args.size)

    def run(module: str):
        req = dict(prompt=PROMPT, negative_prompt=NEGATIVE, seed=args.seed, steps=args.steps, width=args.size,
                   height=args.size, sampler_name="Euler", cfg_scale=7.0, do_not_save_samples=True,
                   do_not_save_grid=True)
        if module != "none":
            req["alwayson_scripts"] = {"controlnet": {"args": [{"enabled": True, "image": picture, "module": module,
                                                                "save_detected_map": False}]}}
        return engine.txt2img(req).images[0]

    print(f"torch {torch.__version__} | {args.device} {args.dtype} | threads {torch.get_num_threads()} | "
          f"{args.size}x{args.size}, {args.steps} steps, Euler, CFG 7", flush=True)
    cuda = args.device.startswith("cuda")
    times = {m: [] for m in MODULES}
    peaks, stats = {}, {}
    for m in MODULES:
        run(m)  # warm-up
    for r in range(args.rounds):
        for m in MODULES:
            gc.collect()
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            sync(args.device)
            t = time.perf_counter()
            image = run(m)
            sync(args.device)
            times[m].append(time.perf_counter() - t)
            if cuda:
                peaks[m] = torch.cuda.max_memory_allocated() / 2**20
            pixels = np.asarray(image, dtype=np.float32)
            stats[m] = (bool(np.isfinite(pixels).all()), float(pixels.mean()), float(pixels.std()))
        print(f"round {r + 1}: " + "  ".join(f"{m} {times[m][-1]:.2f}s" for m in MODULES), flush=True)
    base = statistics.median(times["none"])
    print()
    for m in MODULES:
        med = statistics.median(times[m])
        peak = f"  peak CUDA {peaks[m]:.0f} MiB" if m in peaks else ""
        finite, mean, std = stats[m]
        print(f"{m:22s} median {med:.2f}s/img  x{med / base:.2f} of no unit{peak}  picture mean {mean:.1f} "
              f"std {std:.1f}{'' if finite else '  NOT FINITE'}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())

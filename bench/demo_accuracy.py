#!/usr/bin/env python
"""How well the bundled demo model draws what it is asked: every one of the 90 prompt combinations × 2 seeds.

    python bench/demo_accuracy.py                       # Euler, 20 steps, CFG 5, 64×64, seeds 1 and 2
    python bench/demo_accuracy.py --cfg 3 --steps 30 --ckpt /path/to/other-demo.safetensors

Each picture is read back with `modules.training.shapes.read_scene`: the centre colour must be the shape's colour,
the corner colour the background's, and the fill ratio of the foreground's bounding box tells the shape (circle
≈ 0.785, square ≈ 1, triangle ≈ 0.5). The model is loaded through `Engine`, as a user's checkpoint is.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from modules.training.shapes import all_scenes, read_scene  # noqa: E402

DEFAULT_CKPT = REPO / "models" / "Stable-diffusion" / "demo-shapes.safetensors"


def make_engine(ckpt: Path):
    """An Engine over a throwaway data dir whose only checkpoint is `ckpt`."""
    from modules import cmd_args
    from modules.engine import Engine
    from modules.paths import Paths

    data = Path(tempfile.mkdtemp(prefix="demo-accuracy-"))
    (data / "models" / "Stable-diffusion").mkdir(parents=True)
    os.symlink(ckpt.resolve(), data / "models" / "Stable-diffusion" / ckpt.name)
    ns = cmd_args.parse_args(["--data-dir", str(data), "--skip-install"], env={})
    return Engine.create(Paths.from_args(ns), no_hashing=True)


def measure(engine, seeds: list[int], steps: int, cfg: float, size: int, sampler: str) -> dict:
    counts, misses = Counter(), []
    started = time.perf_counter()
    for scene in all_scenes():
        for seed in seeds:
            result = engine.txt2img({"prompt": scene.caption, "seed": seed, "steps": steps, "cfg_scale": cfg,
                                     "width": size, "height": size, "sampler_name": sampler})
            seen = read_scene(result.images[0])
            hits = {"colour": seen.colour == scene.colour, "background": seen.background == scene.background,
                    "shape": seen.shape == scene.shape}
            counts.update(k for k, ok in hits.items() if ok)
            counts["all"] += all(hits.values())
            counts["images"] += 1
            if not all(hits.values()):
                misses.append(f"{scene.caption} (seed {seed}): saw {seen.colour} {seen.shape} "
                              f"(fill {seen.fill_ratio:.2f}) on {seen.background}")
    n = counts["images"]
    return {
        "images": n,
        "colour_accuracy": round(counts["colour"] / n, 4),
        "background_accuracy": round(counts["background"] / n, 4),
        "shape_accuracy": round(counts["shape"] / n, 4),
        "all_correct": round(counts["all"] / n, 4),
        "seconds": round(time.perf_counter() - started, 1),
        "misses": misses,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, default=DEFAULT_CKPT)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=5.0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--sampler", default="Euler")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if not args.ckpt.is_file():
        parser.error(f"{args.ckpt} not found: train it with python -m modules.training.demo_recipe")
    torch.set_num_threads(args.threads)
    engine = make_engine(args.ckpt)
    figures = measure(engine, args.seeds, args.steps, args.cfg, args.size, args.sampler)
    print(json.dumps({k: v for k, v in figures.items() if k != "misses"}, indent=2))
    for line in figures["misses"]:
        print("miss:", line)
    return figures


if __name__ == "__main__":
    main()

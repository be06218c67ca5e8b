#!/usr/bin/env python
"""Does the bundled demo ControlNet make the map decide the shape? The acceptance measure of
`modules.training.controlnet_recipe`, with more seeds or other sampling if asked.

    python bench/demo_controlnet_accuracy.py                       # 20 seeds from 1000, Euler 20 steps, CFG 5
    python bench/demo_controlnet_accuracy.py --seeds 50 --controlnet /tmp/candidate.safetensors

"a red circle on a white background" with a canny unit on a drawn square / triangle, and without a unit; each
case is one batch request through an Engine over a throwaway data dir holding both files. Prints the rates as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from modules.training.controlnet_recipe import DEMO_CHECKPOINT, DEMO_CONTROLNET, make_engine, measure  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", type=Path, default=DEMO_CHECKPOINT)
    parser.add_argument("--controlnet", type=Path, default=DEMO_CONTROLNET)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=5.0)
    parser.add_argument("--sampler", default="Euler")
    args = parser.parse_args(argv)
    data = Path(tempfile.mkdtemp(prefix="demo-cn-accuracy-"))
    engine = make_engine(data, args.ckpt, args.controlnet)
    started = time.perf_counter()
    rates = measure(engine, seeds=args.seeds, seed=args.seed,
                    sampling={"steps": args.steps, "cfg_scale": args.cfg, "sampler_name": args.sampler})
    summary = {case: {k: v for k, v in r.items() if k != "shapes"} for case, r in rates.items()}
    summary["seconds"] = round(time.perf_counter() - started, 1)
    summary["controlnet"] = str(args.controlnet)
    print(json.dumps(summary, indent=1))
    for case, r in rates.items():
        print(case, " ".join(r["shapes"]))
    return rates


if __name__ == "__main__":
    main()

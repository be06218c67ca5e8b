#!/usr/bin/env python
"""ControlNet's cost, side by side in one run: our txt2img with one ControlNet unit, the same without it, and
diffusers' StableDiffusionControlNetPipeline on the same model, ControlNet, map, seed and sampler.

    python bench/bench_controlnet.py                   # CPU: SD1.5 size, 256x256, 10 steps, 3 rounds, 1 thread
    python bench/bench_controlnet.py --device cuda --dtype fp16 --size 512 --steps 20 --rounds 5

The checkpoint is bench_txt2img.py's (real SD1.5 architecture, random weights, A1111 single file); the ControlNet
is the real SD1.5 ControlNet architecture (`ControlNetModel.from_unet`, 361M parameters, random residual convs)
written in lllyasviel's original layout (`control_model.*`) and loaded by our ControlNet loader from
models/ControlNet, as a user's control_v11p_sd15_canny.pth would be. The unit's map is a canny map made by our
preprocessor, so the timed request includes preprocessing as a user's does.
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
from PIL import Image, ImageDraw  # noqa: E402

from bench_txt2img import DTYPES, NEGATIVE, PROMPT, device_config, ensure_model_file, max_pixel_diff, sync  # noqa: E402


def control_picture(size: int) -> Image.Image:
    im = Image.new("RGB", (size, size), "black")
    d = ImageDraw.Draw(im)
    d.rectangle((size // 4, size // 4, size * 3 // 4, size * 3 // 4), outline="white", width=max(1, size // 64))
    d.ellipse((size // 8, size // 2, size // 2, size * 7 // 8), fill="white")
    return im


class Sides:
    def __init__(self, args, ckpt: Path):
        from diffusers import StableDiffusionControlNetPipeline

        from modules.controlnet import preprocessors
        from modules.engine import Engine
        from modules.paths import Paths
        from tests import tiny_controlnets as tc

        self.args = args
        self._tmp = tempfile.TemporaryDirectory(prefix="sdbench-cn-")
        paths = Paths.from_args(argparse.Namespace(data_dir=self._tmp.name, ckpt=str(ckpt)))
        self.engine = Engine.create(paths, device_config=device_config(args), no_hashing=True)
        self.model = m = self.engine.models.get()
        t = time.perf_counter()
        net = tc.build_controlnet(m.unet, 0)
        tc.write_original(net, m.unet, paths.controlnet_dirs[0] / "control_v11p_sd15_canny.safetensors")
        del net
        self.title = self.engine.controlnets.titles(refresh=True)[0]
        self.build_s = time.perf_counter() - t
        self.picture = control_picture(args.size)
        canny = preprocessors.get("canny")
        self.map = Image.fromarray(canny.run(np.asarray(self.picture), args.size, 100, 200))
        loaded = self.engine.controlnets.load(self.title, m.device, m.dtype, m.unet.config, m.family)
        self.net = loaded.model
        self.pipe = StableDiffusionControlNetPipeline(
            vae=m.vae, text_encoder=m.text_encoder, tokenizer=m.tokenizer, unet=m.unet, controlnet=self.net,
            scheduler=None, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        self.pipe.set_progress_bar_config(disable=True)

    def request(self, unit: bool) -> dict:
        a = self.args
        req = dict(prompt=PROMPT, negative_prompt=NEGATIVE, seed=a.seed, steps=a.steps, width=a.size,
                   height=a.size, sampler_name="Euler", cfg_scale=7.0, do_not_save_samples=True,
                   do_not_save_grid=True)
        if unit:
            req["alwayson_scripts"] = {"controlnet": {"args": [{
                "enabled": True, "image": self.picture, "module": "canny", "model": self.title,
                "processor_res": a.size, "threshold_a": 100, "threshold_b": 200, "save_detected_map": False}]}}
        return req

    def ours(self, unit: bool = True) -> list:
        res = self.engine.txt2img(self.request(unit))
        return res.images[res.index_of_first_image:]

    def theirs(self) -> list:
        from modules.sampling import samplers

        a, m = self.args, self.model
        self.pipe.scheduler = samplers.build_scheduler(*samplers.resolve("Euler", None), m.scheduler_config).scheduler
        return self.pipe(prompt=PROMPT, negative_prompt=NEGATIVE, image=self.map, num_inference_steps=a.steps,
                         guidance_scale=7.0, width=a.size, height=a.size,
                         generator=[torch.Generator(m.device).manual_seed(a.seed)]).images


def sd15_args(description: str, argv=None, rounds: int = 3):
    """The options the SD1.5-size side-by-side benches share (the checkpoint is bench_txt2img.py's file); threads
    set as asked."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--rounds", type=int, default=rounds)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: fp16 on CUDA, fp32 on CPU")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (0: torch's default)")
    p.add_argument("--cache-dir", default="/tmp/sdbench")
    args = p.parse_args(argv)
    args.dtype = args.dtype or ("fp16" if args.device.startswith("cuda") else "fp32")
    args.file_dtype, args.ckpt, args.no_half_vae = "fp16", None, False
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def main(argv=None) -> int:
    args = sd15_args(__doc__.split("\n\n")[0], argv)
    sides = Sides(args, ensure_model_file(args))
    print(f"torch {torch.__version__} | {args.device} {args.dtype} | threads {torch.get_num_threads()} | "
          f"{args.size}x{args.size}, {args.steps} steps, Euler, CFG 7 | ControlNet "
          f"{sum(x.numel() for x in sides.net.parameters()) / 1e6:.0f}M params (written+listed in "
          f"{sides.build_s:.0f}s)", flush=True)
    runs = {"ours": lambda: sides.ours(True), "plain": lambda: sides.ours(False), "diffusers": sides.theirs}
    warm = {k: f() for k, f in runs.items()}
    diffs = [max_pixel_diff(warm["ours"], warm["diffusers"])]
    times: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(args.rounds):
        got = {}
        for name, f in runs.items():
            gc.collect()
            sync(args.device)
            t = time.perf_counter()
            got[name] = f()
            sync(args.device)
            times[name].append(time.perf_counter() - t)
        diffs.append(max_pixel_diff(got["ours"], got["diffusers"]))
        print(f"round {r + 1}: ours+unit {times['ours'][-1]:.2f}s  ours plain {times['plain'][-1]:.2f}s  "
              f"diffusers ControlNet pipeline {times['diffusers'][-1]:.2f}s  "
              f"ratio {times['ours'][-1] / times['diffusers'][-1]:.3f}  max|px diff| {diffs[-1]}", flush=True)
    med = statistics.median
    ratio = med([o / d for o, d in zip(times["ours"], times["diffusers"])])
    print(f"\nmedian per image: ours with one unit {med(times['ours']):.2f}s, without {med(times['plain']):.2f}s "
          f"(unit costs x{med(times['ours']) / med(times['plain']):.2f}); diffusers' ControlNet pipeline "
          f"{med(times['diffusers']):.2f}s; ratio ours/diffusers {ratio:.3f}; max|px diff| {max(diffs)}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())

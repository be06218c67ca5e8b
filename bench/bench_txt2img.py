#!/usr/bin/env python
"""Time our txt2img against diffusers' own StableDiffusionPipeline on the same model, seed, sampler and steps.

    python bench/bench_txt2img.py                      # CPU: 256x256, 10 steps, Euler a, CFG 7, batch 1, 3 rounds
    python bench/bench_txt2img.py --device cuda --dtype fp16 --size 512 --steps 20 --rounds 5

The model is the real SD1.5 architecture (configs from modules/models/configs/sd1: UNet 860M, CLIP-L, the real VAE)
with random weights, written once as an A1111 single file (`components_to_ldm` + safetensors) and loaded by our own
loader through `Engine`, as a user's checkpoint would be. Diffusers' pipeline is built over the very same loaded
components, so both sides run identical weights. See bench/README.md for what is timed and how RSS is measured.
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PROMPT = "a photograph of an astronaut riding a horse"
NEGATIVE = "blurry, low quality"


# ---------------------------------------------------------------------------------------------------------------
# The model file


def model_path(args) -> Path:
    if getattr(args, "ckpt", None):
        return Path(args.ckpt)
    return Path(args.cache_dir) / f"sd15-random-{args.file_dtype}.safetensors"


def make_model_file(path: Path, file_dtype: torch.dtype, seed: int = 0) -> None:
    """Real SD1.5 architecture, random weights (seeded), written in A1111's single-file layout."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from modules.models.ldm_export import components_to_ldm

    cfg_dir = REPO / "modules" / "models" / "configs" / "sd1"
    unet_cfg = json.loads((cfg_dir / "unet" / "config.json").read_text())
    vae_cfg = json.loads((cfg_dir / "vae" / "config.json").read_text())
    te_cfg = json.loads((cfg_dir / "text_encoder" / "config.json").read_text())
    te_cfg = {k: v for k, v in te_cfg.items() if not k.startswith("_") and k != "architectures"}
    t = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(unet_cfg).eval()
        vae = AutoencoderKL.from_config(vae_cfg).eval()
        te = CLIPTextModel(CLIPTextConfig(**te_cfg)).eval()
    sd = components_to_ldm("sd1", unet, vae, te)
    sd = {k: (v.to(file_dtype) if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
    del unet, vae, te
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(sd, str(tmp))
    os.replace(tmp, path)
    n = sum(v.numel() for v in sd.values())
    print(f"wrote {path} ({n / 1e6:.0f}M parameters, {path.stat().st_size / 2**30:.2f} GiB) "
          f"in {time.perf_counter() - t:.0f}s", flush=True)


def ensure_model_file(args) -> Path:
    path = model_path(args)
    if not path.is_file() and not args.ckpt:
        # A child process, so the main process (which later loads the model) does not keep the builder's memory.
        cmd = [sys.executable, __file__, "--_make-model", "--cache-dir", str(args.cache_dir),
               "--file-dtype", args.file_dtype]
        subprocess.run(cmd, check=True)
    return path


# ---------------------------------------------------------------------------------------------------------------
# The two sides


def device_config(args):
    from modules.devices import DeviceConfig

    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    vae_dtype = torch.float32 if args.no_half_vae else dtype
    return DeviceConfig(device=device, dtype=dtype, vae_dtype=vae_dtype)


class Sides:
    """Our Engine (from a throwaway data dir, the model given as --ckpt) and diffusers' pipeline over its model."""

    def __init__(self, args, ckpt: Path):
        from diffusers import StableDiffusionPipeline

        from modules.engine import Engine
        from modules.paths import Paths

        self.args = args
        self._tmp = tempfile.TemporaryDirectory(prefix="sdbench-data-")
        paths = Paths.from_args(argparse.Namespace(data_dir=self._tmp.name, ckpt=str(ckpt)))
        # no_hashing: the sha256 of a multi-GB file is a one-off start-up cost, not part of a request.
        self.engine = Engine.create(paths, device_config=device_config(args), no_hashing=True)
        t = time.perf_counter()
        self.model = self.engine.models.get()  # loaded by our loader, exactly as the first request would
        self.load_s = time.perf_counter() - t
        m = self.model
        self.pipe = StableDiffusionPipeline(
            vae=m.vae, text_encoder=m.text_encoder, tokenizer=m.tokenizer, unet=m.unet, scheduler=None,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        self.pipe.set_progress_bar_config(disable=True)
        self.seeds = [args.seed + i for i in range(args.batch)]

    def request(self) -> dict:
        a = self.args
        return dict(prompt=PROMPT, negative_prompt=NEGATIVE, seed=a.seed, steps=a.steps, width=a.size,
                    height=a.size, sampler_name=a.sampler, cfg_scale=a.cfg, batch_size=a.batch, n_iter=1,
                    do_not_save_samples=True, do_not_save_grid=True)

    def ours(self) -> list:
        res = self.engine.txt2img(self.request())
        return res.images[res.index_of_first_image:]

    def theirs(self) -> list:
        from modules.sampling import samplers

        a, m = self.args, self.model
        bundle = samplers.build_scheduler(*samplers.resolve(a.sampler, None), m.scheduler_config, seed=a.seed)
        self.pipe.scheduler = bundle.scheduler
        gens = [torch.Generator(m.device).manual_seed(s) for s in self.seeds]  # our "GPU" RNG source
        return self.pipe(prompt=[PROMPT] * a.batch, negative_prompt=[NEGATIVE] * a.batch,
                         num_inference_steps=a.steps, guidance_scale=a.cfg, width=a.size, height=a.size,
                         generator=gens, output_type="pil").images

    def run(self, side: str) -> list:
        return self.ours() if side == "ours" else self.theirs()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def max_pixel_diff(a: list, b: list) -> int:
    if len(a) != len(b):
        raise SystemExit(f"image count differs: ours {len(a)}, diffusers {len(b)}")
    return max(int(np.abs(np.asarray(x, dtype=np.int16) - np.asarray(y, dtype=np.int16)).max()) for x, y in zip(a, b))


class DecodeInputs:
    """Record what each side hands the (shared) VAE's decode: the final latents, to compare more finely than
    8-bit pixels. Installed for the warm-up calls only, never while timing."""

    def __init__(self, vae):
        self.vae, self.seen = vae, []

    def __enter__(self):
        original = self.vae.decode

        def decode(z, *a, **kw):
            self.seen.append(z.detach().float().cpu().clone())
            return original(z, *a, **kw)

        self.vae.decode = decode
        return self

    def __exit__(self, *exc):
        del self.vae.decode  # back to the class method


class ModelTimer:
    """--breakdown: wall time spent inside the shared models (UNet, text encoder, VAE decode), so the rest, the
    per-request overhead of each side's own code, can be compared apart from the (noisy) model compute."""

    def __init__(self, model):
        self.targets = [(model.unet, "forward", "unet"), (model.text_encoder, "forward", "text_encoder"),
                        (model.vae, "decode", "vae_decode")]
        self.acc: dict[str, float] = {}

    def __enter__(self):
        for obj, attr, name in self.targets:
            setattr(obj, attr, self._wrap(getattr(obj, attr), name))
        return self

    def _wrap(self, fn, name):
        def timed(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.acc[name] = self.acc.get(name, 0.0) + time.perf_counter() - t
        return timed

    def __exit__(self, *exc):
        for obj, attr, _ in self.targets:
            delattr(obj, attr)

    def take(self) -> dict[str, float]:
        out, self.acc = self.acc, {}
        return out


# ---------------------------------------------------------------------------------------------------------------
# Memory


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Linux: writing 5 to /proc/self/clear_refs resets VmHWM (the peak RSS) to the current RSS."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_child(args, side: str) -> None:
    """Run in a fresh process: load the model, reset the peak, run `side` --rss-runs times, report JSON."""
    ckpt = model_path(args)
    sides = Sides(args, ckpt)
    gc.collect()
    after_load = _status_kib("VmRSS")
    reset_ok = _reset_peak_rss()
    for _ in range(args.rss_runs):
        sides.run(side)
        sync(args.device)
    gc.collect()
    out = dict(side=side, after_load_kib=after_load, peak_run_kib=_status_kib("VmHWM") if reset_ok else None,
               end_kib=_status_kib("VmRSS"), lifetime_peak_kib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    print("RSS_JSON " + json.dumps(out), flush=True)


def measure_rss(args) -> dict[str, dict]:
    results = {}
    for side in ("ours", "theirs"):
        cmd = [sys.executable, __file__, "--_rss-child", side] + _forward(args)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RSS_JSON ")), None)
        if proc.returncode != 0 or line is None:
            print(f"RSS child for {side} failed (rc {proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
            continue
        results[side] = json.loads(line[len("RSS_JSON "):])
    return results


def _forward(args) -> list[str]:
    out = ["--steps", str(args.steps), "--size", str(args.size), "--sampler", args.sampler, "--device", args.device,
           "--dtype", args.dtype, "--cfg", str(args.cfg), "--batch", str(args.batch), "--seed", str(args.seed),
           "--cache-dir", str(args.cache_dir), "--file-dtype", args.file_dtype, "--rss-runs", str(args.rss_runs)]
    if args.no_half_vae:
        out.append("--no-half-vae")
    if args.ckpt:
        out += ["--ckpt", str(args.ckpt)]
    if args.threads:
        out += ["--threads", str(args.threads)]
    return out


# ---------------------------------------------------------------------------------------------------------------
# Main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--size", type=int, default=256, help="width = height, pixels")
    p.add_argument("--rounds", type=int, default=3, help="timed (ours, diffusers) pairs after one warm-up pair")
    p.add_argument("--sampler", default="Euler a", help="A1111 sampler name")
    p.add_argument("--cfg", type=float, default=7.0)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu | cuda[:N]")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                   help="compute dtype (default: fp16 on CUDA, fp32 on CPU)")
    p.add_argument("--no-half-vae", action="store_true", help="keep the VAE in fp32 (A1111's --no-half-vae)")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    p.add_argument("--ckpt", default=None, help="time this checkpoint instead (e.g. the bundled demo model: "
                                                "models/Stable-diffusion/demo-shapes.safetensors)")
    p.add_argument("--cache-dir", default="/tmp/sdbench", help="where the random SD1.5 checkpoint is written once")
    p.add_argument("--file-dtype", choices=["fp16", "fp32"], default="fp16", help="dtype of the cached file")
    p.add_argument("--breakdown", action="store_true",
                   help="also time the shared models' calls and report each side's time outside them")
    p.add_argument("--no-rss", action="store_true", help="skip the per-side subprocess RSS measurement")
    p.add_argument("--rss-runs", type=int, default=1, help="generations per RSS subprocess")
    p.add_argument("--_make-model", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--_rss-child", choices=["ours", "theirs"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.dtype is None:
        args.dtype = "fp16" if args.device.startswith("cuda") else "fp32"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    return args


def _mib(kib) -> str:
    return "n/a" if kib is None else f"{kib / 1024:8.0f} MiB"


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    file_dtype = DTYPES[args.file_dtype]
    if args._make_model:
        make_model_file(model_path(args), file_dtype)
        return 0
    if args._rss_child:
        rss_child(args, args._rss_child)
        return 0

    ckpt = ensure_model_file(args)
    print(f"torch {torch.__version__} | device {args.device} {args.dtype}"
          f"{' (VAE fp32)' if args.no_half_vae else ''} | threads {torch.get_num_threads()} | "
          f"{args.size}x{args.size}, {args.steps} steps, {args.sampler}, CFG {args.cfg}, batch {args.batch}, "
          f"seed {args.seed}, {args.rounds} rounds", flush=True)

    sides = Sides(args, ckpt)
    print(f"model {ckpt.name} loaded by our loader in {sides.load_s:.1f}s "
          f"(UNet {sum(p.numel() for p in sides.model.unet.parameters()) / 1e6:.0f}M params)", flush=True)
    cuda = args.device.startswith("cuda")

    # Warm-up pair (untimed), with the final latents recorded for the equality check.
    with DecodeInputs(sides.model.vae) as rec:
        warm = {}
        for side in ("ours", "theirs"):
            t = time.perf_counter()
            warm[side] = sides.run(side)
            sync(args.device)
            print(f"warm-up {side:6s} {time.perf_counter() - t:7.2f}s", flush=True)
    latent_diff = float((rec.seen[0] - rec.seen[1]).abs().max()) if len(rec.seen) == 2 else float("nan")
    diffs = [max_pixel_diff(warm["ours"], warm["theirs"])]

    times: dict[str, list[float]] = {"ours": [], "theirs": []}  # wall seconds per image
    cpu: dict[str, list[float]] = {"ours": [], "theirs": []}  # process CPU seconds (all threads) per image
    gpu_peak: dict[str, int] = {"ours": 0, "theirs": 0}
    got: dict[str, list] = {}
    inside: dict[str, list[dict]] = {"ours": [], "theirs": []}
    timer = ModelTimer(sides.model) if args.breakdown else None
    if timer:
        timer.__enter__()
    for r in range(args.rounds):
        for side in ("ours", "theirs"):
            gc.collect()
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            sync(args.device)
            c, t = time.process_time(), time.perf_counter()
            got[side] = sides.run(side)
            sync(args.device)
            dt, dc = time.perf_counter() - t, time.process_time() - c
            if cuda:
                gpu_peak[side] = max(gpu_peak[side], torch.cuda.max_memory_allocated())
            times[side].append(dt / args.batch)
            cpu[side].append(dc / args.batch)
            if timer:
                parts = timer.take()
                parts["other"] = dt - sum(parts.values())
                inside[side].append({k: v / args.batch for k, v in parts.items()})
        diffs.append(max_pixel_diff(got["ours"], got["theirs"]))
        print(f"round {r + 1}: ours {times['ours'][-1]:7.3f}s/img (cpu {cpu['ours'][-1]:7.3f}s)   "
              f"diffusers {times['theirs'][-1]:7.3f}s/img (cpu {cpu['theirs'][-1]:7.3f}s)   "
              f"ratio {times['ours'][-1] / times['theirs'][-1]:.3f}   max|px diff| {diffs[-1]}", flush=True)
    del got
    if timer:
        timer.__exit__(None, None, None)

    img = np.asarray(warm["ours"][0], dtype=np.float32)
    print(f"\nsame output: max |pixel diff| {max(diffs)} (0-255) over {len(diffs)} pairs (warm-up included); "
          f"final-latent max |diff| {latent_diff:.3g} (warm-up pair); image mean {img.mean():.1f}, std {img.std():.1f}")
    if args.rounds > 0:
        med = statistics.median
        for label, data in (("wall", times), ("cpu ", cpu)):
            mo, mt = med(data["ours"]), med(data["theirs"])
            pair = med([o / t for o, t in zip(data["ours"], data["theirs"])])
            print(f"per-image {label} time, median of {args.rounds}: ours {mo:.3f}s   diffusers {mt:.3f}s   "
                  f"ratio ours/diffusers {mo / mt:.3f} ({(mo / mt - 1) * 100:+.1f}%)   "
                  f"median of per-round ratios {pair:.3f}")
        spread = max(max(v) / min(v) for v in times.values())
        if spread > 1.10:
            print(f"  note: wall times of one side vary by up to {(spread - 1) * 100:.0f}% between rounds (other "
                  "processes on the machine?); a ratio within that noise says nothing. The per-round "
                  "ratios, more --rounds, --threads 1 and --breakdown help.")
        if timer:
            print("  breakdown, median s/img (wall inside the shared models; 'other' = everything else):")
            for side in ("ours", "theirs"):
                keys = ["text_encoder", "unet", "vae_decode", "other"]
                cells = "  ".join(f"{k} {med([d.get(k, 0.0) for d in inside[side]]):8.3f}" for k in keys)
                print(f"    {'ours     ' if side == 'ours' else 'diffusers'}: {cells}")
        if cuda:
            print(f"peak CUDA memory allocated during a request: ours {gpu_peak['ours'] / 2**20:.0f} MiB   "
                  f"diffusers {gpu_peak['theirs'] / 2**20:.0f} MiB")

    if not args.no_rss:
        del sides, warm
        gc.collect()
        print("\nRSS (each side in its own fresh process: load the model, reset the peak, run "
              f"{args.rss_runs} request(s)) ...", flush=True)
        rss = measure_rss(args)
        for side in ("ours", "theirs"):
            if side not in rss:
                continue
            r = rss[side]
            label = "ours     " if side == "ours" else "diffusers"
            extra = "" if r["peak_run_kib"] is None else \
                f"  peak while generating {_mib(r['peak_run_kib'])} (+{(r['peak_run_kib'] - r['after_load_kib']) / 1024:.0f} MiB over loaded)"
            print(f"  {label}: after load {_mib(r['after_load_kib'])}{extra}  lifetime peak {_mib(r['lifetime_peak_kib'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

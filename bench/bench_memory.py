#!/usr/bin/env python
"""Memory modes side by side: our resident / model offload / sequential offload / fp8 weights / tiled VAE against
diffusers' pipeline eager, with `enable_model_cpu_offload`, group offloading and `enable_sequential_cpu_offload`,
on the same SD1.5-size random-weight model (bench/bench_txt2img.py writes it), in one run: seconds per picture,
it/s, and peak `torch.cuda.max_memory_allocated`. With --sdxl, also an SDXL-size model at 1024² under a 4 GiB cap
(`torch.cuda.set_per_process_memory_fraction`): the plan must pick a mode that completes.

    python bench/bench_memory.py --device cuda --dtype fp16 --size 512 --steps 20 --rounds 2 [--sdxl]
    python bench/bench_memory.py --device cpu --size 64 --steps 2 --rounds 1   # smoke run: modes work, no GPU figures
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
import bench_txt2img as bt  # noqa: E402

OURS = [("resident", {"memory_mode": "Everything on the GPU"}),
        ("model offload", {"memory_mode": "Model offload (--medvram)"}),
        ("sequential offload", {"memory_mode": "Sequential offload (--lowvram)"}),
        ("sequential, async swap, pinned", {"memory_mode": "Sequential offload (--lowvram)",
                                             "forge_async_loading": "Async", "forge_pin_shared_memory": "Shared"}),
        ("fp8 weights", {"memory_mode": "Everything on the GPU", "forge_unet_storage_dtype": "float8-e4m3fn"}),
        ("tiled VAE", {"memory_mode": "Everything on the GPU", "vae_tiling": "Always"})]
DEFAULTS = {"memory_mode": "Automatic", "forge_unet_storage_dtype": "Automatic", "vae_tiling": "Automatic",
            "forge_async_loading": "Queue", "forge_pin_shared_memory": "CPU"}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_mib(device: torch.device) -> str:
    return f"{torch.cuda.max_memory_allocated(device) / 2**20:7.0f} MiB" if device.type == "cuda" else "    n/a"


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def timed(fn, device, rounds: int) -> tuple[float, list]:
    fn()  # warm-up (and the mode's first move of weights)
    reset_peak(device)
    times, images = [], None
    for _ in range(rounds):
        sync(device)
        t = time.perf_counter()
        images = fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times), images


def engine_for(ckpt: Path, args):
    from modules.engine import Engine
    from modules.paths import Paths

    tmp = tempfile.mkdtemp(prefix="sdbench-memory-")
    paths = Paths.from_args(argparse.Namespace(data_dir=tmp, ckpt=str(ckpt)))
    return Engine.create(paths, device_config=bt.device_config(args), no_hashing=True)


def request(args, size: int) -> dict:
    return dict(prompt=bt.PROMPT, negative_prompt=bt.NEGATIVE, seed=args.seed, steps=args.steps, width=size,
                height=size, sampler_name="Euler", cfg_scale=7.0, do_not_save_samples=True, do_not_save_grid=True)


def ours(args, ckpt: Path) -> tuple[list[str], list]:
    device = torch.device(args.device)
    engine = engine_for(ckpt, args)
    lines, reference = [], None
    for label, settings in OURS:
        for name, value in {**DEFAULTS, **settings}.items():
            engine.settings.set(name, value)
        try:
            s, images = timed(lambda: engine.txt2img(request(args, args.size)).images, device, args.rounds)
        except Exception as e:  # noqa: BLE001 - one mode failing must not hide the others' figures
            lines.append(f"ours {label:<22} failed: {type(e).__name__}: {str(e)[:200]}")
            continue
        same = ""
        if reference is None:
            reference = images
        else:
            same = f"  max|px diff| vs resident {bt.max_pixel_diff(images, reference)}"
        lines.append(f"ours {label:<22} {s:6.2f} s/img  {args.steps / s:6.2f} it/s  peak {peak_mib(device)}"
                     f"  ({engine.memory.summary()}){same}")
    for name, value in DEFAULTS.items():
        engine.settings.set(name, value)
    model = engine.models.get()
    engine.memory.apply(model, "resident")
    return lines, [engine, model, reference]


def theirs(args, engine, model, reference) -> list[str]:
    """Diffusers' pipeline over the same loaded components, in its own offload modes (eager first; sequential
    last, since accelerate leaves the modules on `meta` after it)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    device = torch.device(args.device)
    pipe = StableDiffusionPipeline(vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer,
                                   unet=model.unet, scheduler=EulerDiscreteScheduler.from_config(
                                       model.scheduler_config), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def run():
        g = torch.Generator(device).manual_seed(args.seed)
        return pipe(prompt=bt.PROMPT, negative_prompt=bt.NEGATIVE, num_inference_steps=args.steps,
                    guidance_scale=7.0, width=args.size, height=args.size, generator=g).images

    def eager():
        pipe.to(device)

    def model_offload():
        pipe.to("cpu")
        pipe.enable_model_cpu_offload(device=device)

    def group_offload():
        pipe.remove_all_hooks()
        pipe.to("cpu")
        pipe.enable_group_offload(onload_device=device, offload_device=torch.device("cpu"),
                                  offload_type="block_level", num_blocks_per_group=1)

    def sequential():
        pipe.remove_all_hooks()
        pipe.to("cpu")
        pipe.enable_sequential_cpu_offload(device=device)

    lines = []
    for label, setup in (("eager", eager), ("model cpu offload", model_offload), ("group offload", group_offload),
                         ("sequential cpu offload", sequential)):
        if device.type != "cuda" and label != "eager":
            lines.append(f"diffusers {label:<22} skipped: its hooks need a CUDA device")
            continue
        try:
            setup()
            s, images = timed(run, device, args.rounds)
        except Exception as e:  # noqa: BLE001
            lines.append(f"diffusers {label:<22} failed: {type(e).__name__}: {str(e)[:200]}")
            continue
        lines.append(f"diffusers {label:<17} {s:6.2f} s/img  {args.steps / s:6.2f} it/s  peak {peak_mib(device)}")
    return lines


def sdxl_under_cap(args) -> list[str]:
    """An SDXL-size model at 1024² with the process capped at 4 GiB: the plan picks what fits and it completes."""
    device = torch.device(args.device)
    if device.type != "cuda":
        return ["sdxl under 4 GiB: skipped (needs CUDA)"]
    ckpt = Path(args.cache_dir) / "sdxl-random-fp16.safetensors"
    if not ckpt.is_file():
        make_sdxl_file(ckpt)
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, 4 * 2**30 / total), device)
    try:
        engine = engine_for(ckpt, args)
        reset_peak(device)
        t = time.perf_counter()
        res = engine.txt2img(request(args, 1024))
        s = time.perf_counter() - t
        return [f"sdxl 1024x1024 under a 4 GiB cap: {s:6.1f} s, peak {peak_mib(device)}, "
                f"{engine.memory.last_plan.describe()}, {len(res.images)} picture(s)"]
    except Exception as e:  # noqa: BLE001
        return [f"sdxl under 4 GiB: failed: {type(e).__name__}: {str(e)[:300]}"]
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)


def make_sdxl_file(path: Path) -> None:
    """Real SDXL architecture (configs from modules/models/configs/sdxl), random weights, A1111's file layout."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from modules.models.ldm_export import components_to_ldm

    cfg = REPO / "modules" / "models" / "configs" / "sdxl"

    def conf(part):
        data = json.loads((cfg / part / "config.json").read_text())
        return {k: v for k, v in data.items() if not k.startswith("_") and k != "architectures"}

    torch.manual_seed(0)
    with torch.device("cpu"):
        unet = UNet2DConditionModel.from_config(conf("unet")).half().eval()
        vae = AutoencoderKL.from_config(conf("vae")).half().eval()
        te = CLIPTextModel(CLIPTextConfig(**conf("text_encoder"))).half().eval()
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**conf("text_encoder_2"))).half().eval()
    sd = components_to_ldm("sdxl", unet, vae, te, te2)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path.with_suffix(".tmp")))
    os.replace(path.with_suffix(".tmp"), path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(bt.DTYPES), default=None)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--sdxl", action="store_true", help="also SDXL 1024² under a 4 GiB cap")
    p.add_argument("--cache-dir", default="/tmp/sdbench")
    args = p.parse_args(argv)
    args.dtype = args.dtype or ("fp16" if args.device.startswith("cuda") else "fp32")
    args.no_half_vae, args.ckpt, args.file_dtype = False, None, "fp16"
    ckpt = bt.ensure_model_file(args)
    print(f"SD1.5-size random weights, {args.size}x{args.size}, {args.steps} steps, Euler, CFG 7, {args.dtype}, "
          f"{args.device}", flush=True)
    lines, (engine, model, reference) = ours(args, ckpt)
    for line in lines:
        print(line, flush=True)
    for line in theirs(args, engine, model, reference):
        print(line, flush=True)
    if args.sdxl:
        del engine, model
        for line in sdxl_under_cap(args):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

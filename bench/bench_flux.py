#!/usr/bin/env python
"""Time our txt2img on a Flux.1-architecture model against diffusers' FluxPipeline, and the memory of loading fp8.

    python bench/bench_flux.py                  # CPU: reduced-size Flux dev, 256x256, 4 steps, Euler, 3 rounds
    python bench/bench_flux.py --device cuda --dtype bf16 --size 1024 --steps 20 --full-size
    python bench/bench_flux.py --load-rss       # peak RSS while loading an fp8 all-in-one file / its size

The model is Flux.1 dev's architecture (128-wide heads, Flux's rope axes, guidance embedder, 16-channel VAE with
the real config, CLIP-L) with random weights; by default at reduced depth and width (2 double + 4 single blocks of
8 heads, a 4-layer T5 of width 1024) so a CPU can run it; `--full-size` uses the released sizes. It is written as
a ComfyUI/Forge all-in-one file (BFL layout) and loaded by our loader through `Engine` as a user's file would be;
FluxPipeline runs over the very same loaded components. Same method as bench_txt2img.py: an untimed warm-up pair,
then alternating timed pairs; the ratio is ours/diffusers per image (median).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for p in (REPO, REPO / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import torch  # noqa: E402

from bench_txt2img import _reset_peak_rss, _status_kib, max_pixel_diff, sync  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PROMPT = "a photograph of an astronaut riding a horse"


def build_components(full_size: bool, seed: int = 0) -> dict:
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from modules.models.detect import load_template

    sizes = (dict(num_layers=19, num_single_layers=38, heads=24, t5=(4096, 24, 64, 10240))
             if full_size else dict(num_layers=2, num_single_layers=4, heads=8, t5=(1024, 4, 16, 2816)))
    d_model, t5_layers, t5_heads, d_ff = sizes["t5"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=sizes["num_layers"],
            num_single_layers=sizes["num_single_layers"], attention_head_dim=128,
            num_attention_heads=sizes["heads"], joint_attention_dim=d_model, pooled_projection_dim=768,
            guidance_embeds=True, axes_dims_rope=(16, 56, 56))
        vae_cfg = {k: v for k, v in load_template("flux", "vae").items() if not k.startswith("_")}
        vae = AutoencoderKL(**vae_cfg)
        te_cfg = {k: v for k, v in load_template("sd1", "text_encoder").items()
                  if not k.startswith("_") and k != "architectures"}
        clip = CLIPTextModel(CLIPTextConfig(**te_cfg))
        t5 = T5EncoderModel(T5Config(vocab_size=32128, d_model=d_model, d_kv=d_model // t5_heads, d_ff=d_ff,
                                     num_layers=t5_layers, num_heads=t5_heads, feed_forward_proj="gated-gelu",
                                     is_encoder_decoder=False, tie_word_embeddings=False))
        for p in (*transformer.parameters(), *t5.parameters()):  # default inits are too small to draw anything
            p.data.mul_(2.0)
    return {"transformer": transformer.eval(), "vae": vae.eval(), "text_encoder": clip.eval(),
            "text_encoder_2": t5.eval()}


def write_model(path: Path, full_size: bool, fp8: bool) -> None:
    from tests import tiny_flow_models as tfm

    comps = build_components(full_size)
    if fp8:  # as fp8 checkpoints are shipped: transformer and T5 in fp8, CLIP and VAE in fp16
        from safetensors.torch import save_file

        tfm.write_all_in_one(comps, path, dtype=torch.float16)
        from safetensors.torch import load_file

        sd = load_file(str(path))
        sd = {k: (v.to(torch.float8_e4m3fn) if k.startswith(("model.diffusion_model.", "text_encoders.t5xxl"))
                  and v.ndim == 2 else v).contiguous() for k, v in sd.items()}
        save_file(sd, str(path))
    else:
        tfm.write_all_in_one(comps, path, dtype=torch.float16)


def model_file(args, fp8: bool = False) -> Path:
    name = f"flux-{'full' if args.full_size else 'reduced'}-{'fp8' if fp8 else 'fp16'}.safetensors"
    path = Path(args.cache_dir) / name
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, __file__, "--_write", str(path)] + (["--full-size"] if args.full_size else []) + \
              (["--_fp8"] if fp8 else [])
        subprocess.run(cmd, check=True)
    return path


class Sides:
    def __init__(self, args, ckpt: Path):
        from diffusers import FluxPipeline

        from modules.devices import DeviceConfig
        from modules.engine import Engine
        from modules.paths import Paths

        self.args = args
        self._tmp = tempfile.TemporaryDirectory(prefix="sdbench-flux-")
        paths = Paths.from_args(argparse.Namespace(data_dir=self._tmp.name, ckpt=str(ckpt)))
        dtype = DTYPES[args.dtype]
        dc = DeviceConfig(device=torch.device(args.device), dtype=dtype, vae_dtype=dtype)
        self.engine = Engine.create(paths, device_config=dc, no_hashing=True)
        t = time.perf_counter()
        self.model = self.engine.models.get()
        self.load_s = time.perf_counter() - t
        m = self.model
        self.pipe = FluxPipeline(transformer=m.unet, scheduler=None, vae=m.vae, text_encoder=m.text_encoder,
                                 tokenizer=m.tokenizer, text_encoder_2=m.text_encoder_2, tokenizer_2=m.tokenizer_2)
        self.pipe.set_progress_bar_config(disable=True)

    def ours(self) -> list:
        a = self.args
        res = self.engine.txt2img(dict(prompt=PROMPT, seed=a.seed, steps=a.steps, width=a.size, height=a.size,
                                       sampler_name="Euler", cfg_scale=1, distilled_cfg_scale=3.5,
                                       do_not_save_samples=True, do_not_save_grid=True))
        return res.images[res.index_of_first_image:]

    def theirs(self) -> list:
        from diffusers import FlowMatchEulerDiscreteScheduler

        a, m = self.args, self.model
        self.pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(m.scheduler_config)
        gen = [torch.Generator(m.device).manual_seed(a.seed)]
        return self.pipe(PROMPT, num_inference_steps=a.steps, guidance_scale=3.5, width=a.size, height=a.size,
                         generator=gen, max_sequence_length=512).images

    def run(self, side: str) -> list:
        return self.ours() if side == "ours" else self.theirs()


def load_rss(args) -> None:
    """In this (fresh) process: peak RSS while our loader reads an fp8 all-in-one file, against the file's size."""
    ckpt = model_file(args, fp8=True)
    from modules.devices import DeviceConfig
    from modules.models import loader

    import diffusers  # noqa: F401 - import cost is not loading cost
    loader.import_model_classes()
    from diffusers import FluxTransformer2DModel  # noqa: F401
    from transformers import T5EncoderModel  # noqa: F401

    import ctypes

    dtype = DTYPES[args.dtype]
    config = DeviceConfig(device=torch.device("cpu"), dtype=dtype, vae_dtype=dtype)
    # One load first, so that what every process pays once (the tokenizers' vocabularies, lazily imported model
    # code, the allocator's arenas) is not counted as the cost of reading a file; then measure a second load.
    loader.load_model(ckpt, config)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    before, anon_before = _status_kib("VmRSS"), _status_kib("RssAnon")
    _reset_peak_rss()
    model = loader.load_model(ckpt, config)
    peak, after, anon_after = _status_kib("VmHWM"), _status_kib("VmRSS"), _status_kib("RssAnon")
    size = ckpt.stat().st_size
    fp8 = sum(p.numel() for p in model.unet.parameters() if p.dtype == torch.float8_e4m3fn)
    # RSS counts the file's pages mapped by safetensors (reclaimable page cache; fp8 weights are used in place)
    # as well as anonymous memory (tensors converted to another dtype): both are shown.
    print(json.dumps({"file_mib": size / 2**20, "peak_growth_mib": (peak - before) / 1024,
                      "kept_mib": (after - before) / 1024, "kept_anon_mib": (anon_after - anon_before) / 1024,
                      "ratio_peak_to_file": (peak - before) * 1024 / size,
                      "transformer_fp8_share": fp8 / sum(p.numel() for p in model.unet.parameters()),
                      "compute_dtype": args.dtype}))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--full-size", action="store_true", help="Flux.1 dev's released sizes (12B; a big GPU)")
    p.add_argument("--load-rss", action="store_true", help="measure peak RSS of loading an fp8 all-in-one file")
    p.add_argument("--cache-dir", default="/tmp/sdbench")
    p.add_argument("--_write", help=argparse.SUPPRESS)
    p.add_argument("--_fp8", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.dtype = args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._write:
        write_model(Path(args._write), args.full_size, args._fp8)
        return 0
    if args.load_rss:
        load_rss(args)
        return 0

    ckpt = model_file(args)
    sides = Sides(args, ckpt)
    n = sum(x.numel() for x in sides.model.unet.parameters())
    print(f"torch {torch.__version__} | {args.device} {args.dtype} | threads {torch.get_num_threads()} | "
          f"{args.size}x{args.size}, {args.steps} steps, Euler, distilled CFG 3.5 | transformer {n / 1e6:.0f}M "
          f"params, loaded in {sides.load_s:.1f}s", flush=True)
    warm = {side: sides.run(side) for side in ("ours", "theirs")}
    diffs = [max_pixel_diff(warm["ours"], warm["theirs"])]
    times: dict[str, list[float]] = {"ours": [], "theirs": []}
    for r in range(args.rounds):
        got = {}
        for side in ("ours", "theirs"):
            gc.collect()
            sync(args.device)
            t = time.perf_counter()
            got[side] = sides.run(side)
            sync(args.device)
            times[side].append(time.perf_counter() - t)
        diffs.append(max_pixel_diff(got["ours"], got["theirs"]))
        print(f"round {r + 1}: ours {times['ours'][-1]:.3f}s  diffusers {times['theirs'][-1]:.3f}s  "
              f"ratio {times['ours'][-1] / times['theirs'][-1]:.3f}  max|px diff| {diffs[-1]}", flush=True)
    med = statistics.median
    ratio = med([o / t for o, t in zip(times["ours"], times["theirs"])])
    print(f"\nmedian per image: ours {med(times['ours']):.3f}s  diffusers {med(times['theirs']):.3f}s  "
          f"ratio {ratio:.3f}  max|px diff| {max(diffs)}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())

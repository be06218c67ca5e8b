#!/usr/bin/env python
"""Per-image time with one LoRA vs none, alternating (issue 4's target: ≤ 5% slower after the first image).

    python bench/bench_lora.py                       # CPU: mid-size SD1 (~1/4 of SD1.5 UNet), 256x256, 8 steps
    python bench/bench_lora.py --size 512 --steps 20 --rounds 6 --device cuda

The model is an SD1-architecture checkpoint with random weights (UNet channels 160/320/640, CLIP width 768), written
as an A1111 single file and loaded through `Engine`; the LoRA is a kohya file (rank 16, alpha 8) on every attention,
feed-forward and projection layer of the UNet and every text-encoder linear. Requests alternate none / LoRA, so every
LoRA image pays the patching and every plain image pays the restore; the first image of each kind is reported apart.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import torch  # noqa: E402


def make_model(path: Path, seed: int = 0) -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from modules.models.ldm_export import components_to_ldm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=32, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(160, 320, 640),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=8, cross_attention_dim=768, norm_num_groups=32).eval()
        vae = AutoencoderKL(block_out_channels=(32, 64, 64, 64), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=1,
                            norm_num_groups=32, scaling_factor=0.18215).eval()
        te = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                          num_attention_heads=12, num_hidden_layers=12, max_position_embeddings=77,
                                          hidden_act="quick_gelu", projection_dim=768, bos_token_id=0,
                                          eos_token_id=2, pad_token_id=1)).eval()
    sd = {k: v.contiguous() for k, v in components_to_ldm("sd1", unet, vae, te).items()}
    save_file(sd, str(path))
    print(f"model: {sum(p.numel() for p in unet.parameters()) / 1e6:.0f}M UNet parameters", flush=True)


def make_lora(model, path: Path, rank: int = 16, alpha: float = 8.0, seed: int = 1) -> int:
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    sd = {}
    for comp, net, prefix in (("unet", model.unet, "lora_unet_"), ("te", model.text_encoder, "lora_te_text_model_")):
        for name, m in net.named_modules():
            if not isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                continue
            if comp == "unet" and not any(s in name for s in ("attn", "ff.net", "proj_in", "proj_out")):
                continue
            if comp == "te" and "layers" not in name:
                continue
            w = m.weight
            key = prefix + name.replace(".", "_")
            ks = list(w.shape[2:])
            sd[key + ".lora_down.weight"] = (torch.randn(rank, w.shape[1], *ks, generator=g) * 0.01).half()
            sd[key + ".lora_up.weight"] = (torch.randn(w.shape[0], rank, *([1] * len(ks)), generator=g) * 0.01).half()
            sd[key + ".alpha"] = torch.tensor(alpha)
    save_file(sd, str(path))
    return len(sd) // 3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=4, help="pairs of (none, LoRA) images")
    ap.add_argument("--sampler", default="Euler")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from modules import cmd_args
    from modules.engine import Engine
    from modules.paths import Paths

    with tempfile.TemporaryDirectory() as d:
        data = Path(d)
        (data / "models" / "Stable-diffusion").mkdir(parents=True)
        (data / "models" / "Lora").mkdir(parents=True)
        make_model(data / "models" / "Stable-diffusion" / "mid.safetensors")
        engine = Engine.create(Paths.from_args(cmd_args.parse_args(["--data-dir", d, "--skip-install"], env={})))
        model = engine.models.get()
        n = make_lora(model, data / "models" / "Lora" / "bench.safetensors")
        print(f"LoRA: {n} modules, rank 16; {args.size}x{args.size}, {args.steps} steps, {args.sampler}, CFG 7",
              flush=True)
        base = {"prompt": "a photograph of an astronaut riding a horse", "negative_prompt": "blurry",
                "steps": args.steps, "width": args.size, "height": args.size, "sampler_name": args.sampler,
                "seed": 1, "do_not_save_samples": True, "do_not_save_grid": True}
        times: dict[str, list[float]] = {"none": [], "lora": []}
        for i in range(args.rounds * 2):
            kind = "lora" if i % 2 else "none"
            prompt = base["prompt"] + (" <lora:bench:0.8>" if kind == "lora" else "")
            t = time.perf_counter()
            r = engine.txt2img({**base, "prompt": prompt})
            times[kind].append(time.perf_counter() - t)
            assert not r.warnings, r.warnings
            print(f"  image {i + 1:2d} {kind:4s} {times[kind][-1]:.2f}s", flush=True)
        t = time.perf_counter()
        from modules.networks import lora

        lora.state_of(model).signature = ()  # force one re-patch to time it alone (deltas cached)
        lora.apply_networks(model, [lora.ActiveNetwork(engine.loras.find("bench"), 0.8, 0.8)])
        patch = time.perf_counter() - t
        t = time.perf_counter()
        lora.apply_networks(model, [])
        unpatch = time.perf_counter() - t

    none, lo = times["none"][1:], times["lora"][1:]
    m_none, m_lora = statistics.median(none), statistics.median(lo)
    print(f"first image: none {times['none'][0]:.2f}s, LoRA {times['lora'][0]:.2f}s (includes reading the file)")
    print(f"after the first: median none {m_none:.2f}s, LoRA {m_lora:.2f}s, ratio {m_lora / m_none:.3f} "
          f"({(m_lora / m_none - 1) * 100:+.1f}%)")
    print(f"after the first: best none {min(none):.2f}s, LoRA {min(lo):.2f}s, ratio {min(lo) / min(none):.3f} "
          "(the best of each is the least disturbed by other load on the machine)")
    print(f"re-patch (cached deltas) {patch * 1000:.0f} ms, restore {unpatch * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python
"""What to run on a machine with a GPU, in one go: CUDA facts, then our txt2img against diffusers' pipeline at
SD1.5 size in fp16 (speed, peak memory, same pixels), a reduced Flux.1 dev against FluxPipeline in bf16, the memory
modes against diffusers' offloads (and SDXL under a 4 GiB cap), then the start-up bench. Prints a Markdown block to paste
into bench/RESULTS.md (and appends it there with --write).

    python bench/gpu_check.py                 # about 5 minutes on a modern GPU (the SD1.5 file is built first)
    python bench/gpu_check.py --quick --write
"""
from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run(cmd: list[str], timeout: int) -> str:
    print("$", " ".join(cmd), flush=True)
    try:
        proc = subprocess.run(cmd, cwd=str(REPO), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"(timed out after {timeout} s)"
    out = proc.stdout + (f"\n(exit status {proc.returncode})\n{proc.stderr[-3000:]}" if proc.returncode else "")
    print(out, flush=True)
    return out


def cuda_facts() -> str:
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this script is for a GPU machine")
    props = torch.cuda.get_device_properties(0)
    return (f"torch {torch.__version__}, CUDA {torch.version.cuda}, {props.name}, "
            f"{props.total_memory / 2**30:.0f} GiB, bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds and steps")
    p.add_argument("--write", action="store_true", help="append the results to bench/RESULTS.md")
    args = p.parse_args(argv)
    rounds, steps = ("2", "10") if args.quick else ("5", "20")
    parts = [f"## GPU check {datetime.date.today().isoformat()}", "", cuda_facts(), ""]
    for size in ("512", "768") if not args.quick else ("512",):
        out = run([sys.executable, "bench/bench_txt2img.py", "--device", "cuda", "--dtype", "fp16", "--size", size,
                   "--steps", steps, "--rounds", rounds, "--breakdown"], timeout=1800)
        parts += [f"### bench_txt2img.py, SD1.5 random weights, {size}x{size}, {steps} steps, fp16", "", "```",
                  out.strip()[-4000:], "```", ""]
    size = "512" if args.quick else "1024"
    out = run([sys.executable, "bench/bench_flux.py", "--device", "cuda", "--dtype", "bf16", "--size", size,
               "--steps", "4" if args.quick else "20", "--rounds", rounds], timeout=1800)
    parts += [f"### bench_flux.py, Flux.1 dev architecture (reduced), {size}x{size}, bf16", "", "```",
              out.strip()[-3000:], "```", ""]
    out = run([sys.executable, "bench/bench_memory.py", "--device", "cuda", "--dtype", "fp16", "--size", "512",
               "--steps", "10" if args.quick else "20", "--rounds", "1" if args.quick else "2",
               *([] if args.quick else ["--sdxl"])], timeout=1800)
    parts += ["### bench_memory.py, memory modes against diffusers' offloads (SD1.5 random weights, 512x512, fp16"
              + ("" if args.quick else "; SDXL 1024x1024 under a 4 GiB cap") + ")", "", "```", out.strip()[-4000:],
              "```", ""]
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        out = "(skipped: gradio is not installed here; the start-up bench needs the whole app)"
    else:
        out = run([sys.executable, "bench/bench_startup.py", "--rounds", "2" if args.quick else "3"], timeout=1200)
    parts += ["### bench_startup.py", "", "```", out.strip()[-2000:], "```", ""]
    text = "\n".join(parts)
    print(text)
    if args.write:
        results = REPO / "bench" / "RESULTS.md"
        head = "" if results.exists() else "# Benchmark results from machines with a GPU\n\n"
        with results.open("a", encoding="utf-8") as f:
            f.write(head + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

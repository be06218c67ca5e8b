"""The recipe of the bundled demo ControlNet (canny) for the demo checkpoint, and the measure it is accepted by.

    python -m modules.training.controlnet_recipe --out models/ControlNet/demo-shapes-canny.safetensors

A diffusers ControlNetModel copied from the demo UNet's encoder (`ControlNetModel.from_unet`, a four-width hint
encoder so the original-layout converter's input_hint_block.0..14 exist), trained on CPU with the diffusion loss
(epsilon, scaled_linear, min-SNR-γ) while the demo UNet, text encoder and VAE stay frozen. Each sample is (latent
of a `shapes` picture, the canny map our preprocessor makes of that picture, caption); for `swap_rate` of the
samples the caption names another shape and for `empty_rate` it is empty, so the map, not the prompt's shape word,
decides the shape. The net is built with the config our loader reads back from its tensors (8 "heads", see
`modules.controlnet.detect.spec_from_diffusers`), so what was trained is what runs. Written as fp16 in diffusers'
layout; budgeted in steps with fixed seeds.

The acceptance measure (`measure`, used by tests/test_demo_controlnet.py and bench/demo_controlnet_accuracy.py)
runs through the user's path, an Engine over a data dir holding both files, "a red circle on a white background",
20 seeds in one batch each: with a unit whose image is a drawn square (canny preprocessor, processor_res 64) the
pictures must read as red squares, with a drawn triangle as triangles, and without a unit as circles.

The committed file is the defaults below (8/16/32/64 hint encoder, 687k parameters): 1200 steps of batch 32 at
lr 1e-3 (cosine, 100 warm-up), half the captions naming another shape, 15% empty, EMA 0.99, on 3000 pictures;
about 690 s of training (0.5 s a step on one shared CPU thread; 740 s with drawing and encoding), final loss
0.021, 1.39 MB (fp16). Measured (seeds 1000-1019, Euler 20 steps, CFG 5, 64 px): square map → 90% squares, 100%
red; triangle map → 100% triangles, 100% red; no unit → 100% red circles. Over seeds 5000-5049: 94% squares,
100% triangles, 100% circles without a unit, 100% red throughout.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# On a shared CPU, OpenMP threads that spin while waiting slow every step several-fold; must be set before torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from modules.fileio import atomic_path  # noqa: E402
from modules.training import scratch, shapes  # noqa: E402
from modules.training.demo_recipe import parse_recipe  # noqa: E402

log = logging.getLogger("controlnet_recipe")

ROOT = Path(__file__).resolve().parent.parent.parent
DEMO_CHECKPOINT = ROOT / "models" / "Stable-diffusion" / "demo-shapes.safetensors"
DEMO_CONTROLNET = ROOT / "models" / "ControlNet" / "demo-shapes-canny.safetensors"
METADATA_KEY = "demo_controlnet_recipe"

PROMPT = "a red circle on a white background"
SAMPLING = {"steps": 20, "cfg_scale": 5, "width": 64, "height": 64, "sampler_name": "Euler",
            "do_not_save_samples": True, "do_not_save_grid": True}


@dataclass
class Recipe:
    """Every knob of the run; the defaults are the committed file's."""

    seed: int = 4321
    images: int = 3000
    size: int = 64
    hint_widths: str = "8,16,32,64"  # conditioning_embedding_out_channels (four: 8x down to the latent)
    steps: int = 1200
    batch: int = 32
    lr: float = 1e-3
    warmup: int = 100
    swap_rate: float = 0.5  # captions naming another shape than the picture's (and its map's)
    empty_rate: float = 0.15  # empty captions (the CFG's negative rows see the map too)
    min_snr_gamma: float = 5.0
    ema_decay: float = 0.99
    canny_low: int = 100
    canny_high: int = 200
    threads: int = 1


def canny(rgb: np.ndarray, low: int = 100, high: int = 200) -> np.ndarray:
    """The map the canny preprocessor makes of one picture at its own size (uint8 H×W×3, edges 255)."""
    res = rgb.shape[0]
    try:
        from modules.controlnet import preprocessors
    except ImportError:  # the preprocessors module is optional for training: the same cv2 call
        import cv2

        return cv2.cvtColor(cv2.Canny(rgb, low, high), cv2.COLOR_GRAY2RGB)
    return preprocessors.get("canny").run(rgb, res, low, high)


def hint_tensor(maps: np.ndarray) -> torch.Tensor:
    """uint8 N×H×W×3 maps → float N×3×H×W in [0, 1] (what `ControlUnit.tensor` hands the model)."""
    return torch.from_numpy(maps).permute(0, 3, 1, 2).float().div(255.0).contiguous()


def build_controlnet(unet, hint_widths: tuple[int, ...]):
    """The UNet's encoder copy, rebuilt with the config the loader infers from the tensors (so the head count the
    loader picks is the one it was trained with)."""
    from diffusers import ControlNetModel

    from modules.controlnet import detect

    copied = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=tuple(hint_widths))
    state = copied.state_dict()
    net = ControlNetModel(**detect.spec_from_diffusers(state).config)
    net.load_state_dict(state)
    return net


def caption_table() -> tuple[list[str], dict]:
    """Every caption the training can use (the 90 scenes' and ""), and the index of each (shape, colour,
    background)."""
    captions = [s.caption for s in shapes.all_scenes()] + [""]
    index = {(s.shape, s.colour, s.background): i for i, s in enumerate(shapes.all_scenes())}
    return captions, index


@torch.no_grad()
def encode_captions(text_encoder, captions: list[str]) -> torch.Tensor:
    return text_encoder(scratch.tokenize(captions))[0]


def train(net, unet, means, stds, latent_scale: float, hints: torch.Tensor, caption_ids: torch.Tensor,
          swap_ids: torch.Tensor, empty_id: int, context_table: torch.Tensor, recipe: Recipe,
          log_every: int = 100) -> scratch.StageReport:
    """The ControlNet learns to predict, through the frozen UNet, the noise of (latent, map, caption).

    `caption_ids[i]`: picture i's own caption; `swap_ids[i]`: its captions with another shape word (2 per
    picture)."""
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    gen = torch.Generator().manual_seed(recipe.seed + 2)
    noise_schedule = DDPMScheduler(**scratch.SCHEDULE)
    snr = noise_schedule.alphas_cumprod / (1 - noise_schedule.alphas_cumprod)
    params = list(net.parameters())
    net.train()
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.0)
    sched = scratch._cosine_lr(opt, warmup=recipe.warmup, total=recipe.steps)
    ema = EMAModel(params, decay=recipe.ema_decay) if recipe.ema_decay > 0 else None
    started, loss_value, batch = time.perf_counter(), float("nan"), recipe.batch
    losses = []
    for step in range(1, recipe.steps + 1):
        idx = torch.randint(0, len(means), (batch,), generator=gen)
        latents = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)) * latent_scale
        ids = caption_ids[idx].clone()
        u = torch.rand(batch, generator=gen)
        swapped = u < recipe.swap_rate
        which = torch.randint(0, swap_ids.shape[1], (batch,), generator=gen)
        ids[swapped] = swap_ids[idx, which][swapped]
        ids[u >= 1 - recipe.empty_rate] = empty_id
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, noise_schedule.config.num_train_timesteps, (batch,), generator=gen)
        noisy = noise_schedule.add_noise(latents, noise, t)
        context = context_table[ids]
        down, mid = net(noisy, t, encoder_hidden_states=context, controlnet_cond=hints[idx],
                        conditioning_scale=1.0, return_dict=False)
        pred = unet(noisy, t, encoder_hidden_states=context, down_block_additional_residuals=down,
                    mid_block_additional_residual=mid).sample
        loss = scratch.min_snr_loss(pred, noise, snr[t], recipe.min_snr_gamma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if ema is not None:
            ema.step(params)
        losses.append(loss.item())
        loss_value = float(np.mean(losses[-log_every:]))
        scratch._progress("controlnet", step, recipe.steps, loss_value, started, log_every)
    if ema is not None:
        ema.copy_to(params)
    net.eval().requires_grad_(False)
    return scratch.StageReport(recipe.steps, time.perf_counter() - started, loss_value)


def write_controlnet(path: Path, net, recipe: Recipe) -> Path:
    """fp16, diffusers' ControlNetModel layout, written atomically; the recipe rides along as metadata."""
    from safetensors.torch import save_file

    sd = {k: v.to(torch.float16).contiguous() for k, v in net.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(sd, str(tmp), metadata={METADATA_KEY: json.dumps(asdict(recipe))})
    return path


@torch.no_grad()
def reload_drift(path: Path, net, unet, hints: torch.Tensor, context: torch.Tensor) -> float:
    """Load the written file as a user's ControlNet is loaded and compare its residuals with the trained net's
    (fp16 rounding only); a config the loader reads differently (heads, widths) fails here, not in the UI."""
    from modules import devices
    from modules.controlnet.models import load_file

    loaded = load_file(path, path.stem, devices.cpu().device, torch.float32).model
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((len(hints), unet.config.in_channels, hints.shape[-2] // 8, hints.shape[-1] // 8), generator=gen)
    t = torch.full((len(hints),), 500)
    ours = net(x, t, encoder_hidden_states=context, controlnet_cond=hints, return_dict=False)
    theirs = loaded(x, t, encoder_hidden_states=context, controlnet_cond=hints, return_dict=False)
    drift = max((a - b).abs().max().item() for a, b in zip([*ours[0], ours[1]], [*theirs[0], theirs[1]]))
    scale = max(a.abs().max().item() for a in [*ours[0], ours[1]])
    if drift > 0.02 * scale + 1e-3:
        raise RuntimeError(f"{path.name} reads back differently through the loader ({drift:.3g} vs {scale:.3g})")
    return drift


def run(recipe: Recipe, out: Path, checkpoint: Path = DEMO_CHECKPOINT) -> dict:
    """Train and write; returns the figures (seconds, loss, file size, parameters)."""
    from modules import devices
    from modules.models.loader import load_model

    torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    started, cpu_started = time.perf_counter(), time.process_time()
    model = load_model(checkpoint, devices.cpu())
    unet, vae, text_encoder = model.unet, model.vae, model.text_encoder
    for part in (unet, vae, text_encoder):
        part.eval().requires_grad_(False)

    pixels, scenes = shapes.make_dataset(recipe.images, recipe.seed, recipe.size)
    maps = np.stack([canny(p, recipe.canny_low, recipe.canny_high) for p in pixels])
    hints = hint_tensor(maps)
    means, stds = scratch.encode_moments(vae, pixels)
    captions, index = caption_table()
    context_table = encode_captions(text_encoder, captions)
    own = torch.tensor([index[(s.shape, s.colour, s.background)] for s in scenes])
    swaps = torch.tensor([[index[(other, s.colour, s.background)] for other in shapes.SHAPES if other != s.shape]
                          for s in scenes])
    log.info("drew, detected and encoded %d pictures in %.1f s", len(pixels), time.perf_counter() - started)

    net = build_controlnet(unet, tuple(int(w) for w in recipe.hint_widths.split(",")))
    report = train(net, unet, means, stds, float(vae.config.scaling_factor), hints, own, swaps, len(captions) - 1,
                   context_table, recipe)
    log.info("ControlNet: %d steps, %.0f s, final loss %.4f", report.steps, report.seconds, report.final_loss)
    write_controlnet(out, net, recipe)
    drift = reload_drift(out, net, unet, hints[:4], context_table[own[:4]])
    log.info("read back through the loader: largest residual difference %.2e", drift)
    figures = {"steps": report.steps, "train_seconds": round(report.seconds),
               "total_seconds": round(time.perf_counter() - started),
               "cpu_seconds": round(time.process_time() - cpu_started), "final_loss": round(report.final_loss, 4),
               "file_bytes": out.stat().st_size, "parameters": sum(p.numel() for p in net.parameters())}
    log.info("wrote %s: %s", out, json.dumps(figures))
    return figures


# --- the acceptance measure --------------------------------------------------------------------------------------

def make_engine(data: Path, checkpoint: Path = DEMO_CHECKPOINT, controlnet: Path = DEMO_CONTROLNET):
    """An Engine over `data` (a fresh folder) whose models/Stable-diffusion holds `checkpoint` and models/ControlNet
    holds `controlnet` (symlinked): the user's path to both files."""
    from modules import cmd_args
    from modules.engine import Engine
    from modules.paths import Paths

    for folder, file in (("Stable-diffusion", checkpoint), ("ControlNet", controlnet)):
        (data / "models" / folder).mkdir(parents=True, exist_ok=True)
        link = data / "models" / folder / Path(file).name
        if not link.exists():
            os.symlink(Path(file).resolve(), link)
    ns = cmd_args.parse_args(["--data-dir", str(data), "--skip-install"], env={})
    return Engine.create(Paths.from_args(ns))


def shape_picture(shape: str, size: int = 64):
    """The unit's input (a PIL image): a black `shape` on white, drawn as the training pictures are (fixed seed)."""
    return shapes.draw(shapes.Scene(shape, "black", "white"), np.random.default_rng(7), size)


def readings(engine, shape: str | None, seeds: int = 20, seed: int = 1000, prompt: str = PROMPT,
             sampling: dict | None = None, model: str | None = None) -> list:
    """`shapes.read_scene` of `seeds` pictures of `prompt` (one batch request), guided by a canny unit on a drawn
    `shape` (None: no unit) with ControlNet `model` (a title; default: the demo ControlNet, else the first)."""
    request = {**SAMPLING, **(sampling or {}), "prompt": prompt, "seed": seed, "batch_size": seeds}
    if shape is not None:
        titles = engine.controlnets.titles(refresh=True)
        title = model or next((t for t in titles if t.startswith(DEMO_CONTROLNET.stem)), titles[0])
        request["alwayson_scripts"] = {"controlnet": {"args": [{
            "enabled": True, "image": shape_picture(shape, request["width"]), "module": "canny", "model": title,
            "processor_res": request["width"]}]}}
    images = engine.txt2img(request).images[:seeds]  # a unit appends its detected map
    return [shapes.read_scene(im) for im in images]


def measure(engine, seeds: int = 20, seed: int = 1000, sampling: dict | None = None) -> dict:
    """The rates the file is accepted by: for the square map and the triangle map, how many pictures read as that
    shape and as red; without a unit, how many read as circles (and red)."""
    out = {}
    for shape in ("square", "triangle", None):
        seen = readings(engine, shape, seeds, seed, sampling=sampling)
        name = shape or "no_unit"
        target = shape or "circle"
        out[name] = {"shape_rate": sum(r.shape == target for r in seen) / len(seen),
                     "red_rate": sum(r.colour == "red" for r in seen) / len(seen),
                     "circle_rate": sum(r.shape == "circle" for r in seen) / len(seen),
                     "shapes": [r.shape for r in seen]}
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Train the bundled demo ControlNet (canny) on CPU.")
    parser.add_argument("--out", type=Path, default=Path("models/ControlNet/demo-shapes-canny.safetensors"))
    parser.add_argument("--checkpoint", type=Path, default=DEMO_CHECKPOINT)
    recipe, args = parse_recipe(parser, Recipe, argv)
    return run(recipe, args.out, args.checkpoint)


if __name__ == "__main__":
    main()

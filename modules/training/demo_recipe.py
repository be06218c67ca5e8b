"""The recipe of the bundled demo checkpoint: draw the shapes data set, train VAE, UNet and text encoder from
scratch on CPU, and write an A1111 single-file checkpoint (fp16) that carries its own architecture.

    python -m modules.training.demo_recipe --out models/Stable-diffusion/demo-shapes.safetensors

Budgeted in steps with fixed seeds (about 45 minutes on 2 idle CPU cores: VAE 9, UNet + text encoder 35), so the
result does not depend on the machine's speed.
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

import torch  # noqa: E402

from modules.fileio import atomic_path  # noqa: E402
from modules.models.detect import ARCHITECTURE_KEY  # noqa: E402
from modules.models.ldm_export import components_to_ldm  # noqa: E402
from modules.training import scratch, shapes  # noqa: E402

log = logging.getLogger("demo_recipe")

DEMO_MESSAGE = ("demo model: draws coloured shapes; add a real Stable Diffusion checkpoint in "
                "models/Stable-diffusion or download one in Models")


@dataclass
class Recipe:
    """Every knob of the run; the defaults are the committed checkpoint's."""

    seed: int = 1234
    images: int = 9000
    held_out: int = 512  # pictures the VAE's reconstruction PSNR is measured on (a report, not training)
    size: int = 64
    vae_steps: int = 900
    vae_batch: int = 32
    vae_lr: float = 1e-3
    unet_steps: int = 4000
    unet_batch: int = 64
    unet_lr: float = 1e-3
    empty_rate: float = 0.1
    offset_noise: float = 0.1
    ema_decay: float = 0.999
    min_snr_gamma: float = 5.0
    default_cfg: float = 5.0
    threads: int = 2


def architecture_metadata(arch: scratch.Architecture, vae, recipe: Recipe) -> dict:
    """What the loader needs beyond the shapes (head counts, norm groups, latent scale, sample size) plus the
    UI's defaults and the demo marker."""
    return {
        "family": "sd1",
        "prediction_type": "epsilon",
        "unet": arch.unet,
        "vae": {**arch.vae, "scaling_factor": vae.config.scaling_factor},
        "text_encoder": arch.text_encoder,
        "default_cfg": recipe.default_cfg,
        "default_size": recipe.size,
        "demo": True,
        "description": DEMO_MESSAGE,
        "recipe": asdict(recipe),
    }


def write_checkpoint(path: Path, unet, vae, text_encoder, metadata: dict) -> Path:
    """fp16 A1111 single file, written atomically."""
    from safetensors.torch import save_file

    sd = {k: v.to(torch.float16).contiguous() for k, v in components_to_ldm("sd1", unet, vae, text_encoder).items()}
    with atomic_path(path) as tmp:
        save_file(sd, str(tmp), metadata={ARCHITECTURE_KEY: json.dumps(metadata)})
    return path


def _vae_knobs(recipe: Recipe, arch: scratch.Architecture) -> dict:
    knobs = {k: getattr(recipe, k) for k in ("seed", "images", "size", "vae_steps", "vae_batch", "vae_lr", "threads")}
    return {**knobs, "architecture": json.dumps(arch.vae, sort_keys=True)}


def trained_vae(arch: scratch.Architecture, pixels, recipe: Recipe, cache: Path | None):
    """Train the VAE, or load it from `cache` when that file came from the same VAE settings (the stage is
    deterministic, so this only saves its minutes when trying UNet settings); returns (vae, seconds)."""
    vae = scratch.build_vae(arch)
    if cache is not None and cache.is_file():
        try:
            saved = torch.load(cache, map_location="cpu", weights_only=True)
            matches = isinstance(saved, dict) and saved.get("knobs") == _vae_knobs(recipe, arch)
            if matches:
                vae.load_state_dict(saved["state"])
        except Exception as e:  # unreadable or foreign file: it is only a cache, so train and replace it
            log.warning("VAE cache %s is unreadable (%s); training", cache, e)
            matches = False
        if matches:
            log.info("VAE loaded from %s (trained in %.0f s)", cache, saved["seconds"])
            return vae.eval().requires_grad_(False), saved["seconds"]
        log.info("VAE cache %s is not for these settings; training", cache)
    report = scratch.train_vae(vae, pixels, recipe.vae_steps, recipe.vae_batch, recipe.vae_lr, seed=recipe.seed)
    if cache is not None:
        with atomic_path(cache) as tmp:
            torch.save({"knobs": _vae_knobs(recipe, arch), "state": vae.state_dict(), "seconds": report.seconds}, tmp)
    return vae, report.seconds


def run(recipe: Recipe, out: Path, vae_cache: Path | None = None) -> dict:
    """Train and write; returns the figures (seconds per stage, PSNR, loss, file size)."""
    torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    arch = scratch.Architecture()
    arch.vae["sample_size"] = recipe.size
    arch.unet["sample_size"] = recipe.size // 8

    started = time.perf_counter()
    pixels, scenes = shapes.make_dataset(recipe.images, recipe.seed, recipe.size)
    held_out, _ = shapes.make_dataset(recipe.held_out, recipe.seed + 1, recipe.size)
    log.info("drew %d pictures in %.1f s", len(pixels), time.perf_counter() - started)

    vae, vae_seconds = trained_vae(arch, pixels, recipe, vae_cache)
    psnr = scratch.reconstruction_psnr(vae, held_out)
    log.info("VAE: %.0f s, held-out PSNR %.1f dB", vae_seconds, psnr)

    means, stds = scratch.encode_moments(vae, pixels)
    scale = scratch.scaling_factor(means, stds)
    vae.register_to_config(scaling_factor=scale)
    log.info("latent scaling factor %.4f", scale)

    caption_ids = scratch.tokenize([s.caption for s in scenes])
    empty_ids = scratch.tokenize([""])[0]
    unet, text_encoder = scratch.build_unet(arch), scratch.build_text_encoder(arch)
    unet_report = scratch.train_unet_and_text_encoder(
        unet, text_encoder, means, stds, scale, caption_ids, empty_ids, recipe.unet_steps, recipe.unet_batch,
        recipe.unet_lr, recipe.empty_rate, recipe.offset_noise, recipe.ema_decay,
        min_snr_gamma=recipe.min_snr_gamma, seed=recipe.seed + 2)
    log.info("UNet + text encoder: %.0f s, final loss %.4f", unet_report.seconds, unet_report.final_loss)

    write_checkpoint(out, unet, vae, text_encoder, architecture_metadata(arch, vae, recipe))
    figures = {
        "vae_seconds": round(vae_seconds), "vae_psnr_db": round(psnr, 2),
        "unet_te_seconds": round(unet_report.seconds), "unet_final_loss": round(unet_report.final_loss, 4),
        "total_seconds": round(time.perf_counter() - started), "file_bytes": out.stat().st_size,
        "parameters": {name: sum(p.numel() for p in m.parameters())
                       for name, m in (("vae", vae), ("unet", unet), ("text_encoder", text_encoder))},
    }
    log.info("wrote %s: %s", out, json.dumps(figures))
    return figures


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Train the bundled demo checkpoint from scratch (CPU).")
    parser.add_argument("--out", type=Path, default=Path("models/Stable-diffusion/demo-shapes.safetensors"))
    parser.add_argument("--vae-cache", type=Path, default=None,
                        help="reuse (or write) the trained VAE here when only the UNet settings change")
    recipe, args = parse_recipe(parser, Recipe, argv)
    return run(recipe, args.out, args.vae_cache)


def parse_recipe(parser: argparse.ArgumentParser, recipe_class, argv: list[str] | None):
    """Every knob of a recipe dataclass as a `--knob` flag (its default the committed file's); logging on."""
    defaults = recipe_class()
    for name, value in asdict(defaults).items():
        parser.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    return recipe_class(**{name: getattr(args, name) for name in asdict(defaults)}), args


if __name__ == "__main__":
    main()

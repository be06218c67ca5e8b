"""Train a tiny Stable-Diffusion-architecture model from scratch: VAE, then UNet and CLIP text encoder together.

The components are the real diffusers/transformers classes (AutoencoderKL, UNet2DConditionModel, CLIPTextModel
with the real 49408-token vocabulary), so the result exports to an A1111 SD1.x single file and samples through the
same engine as any user checkpoint. Everything is budgeted in steps with fixed seeds, so a run is reproducible
whatever the machine's speed.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from modules.models.tokenizer import MAX_LENGTH, build_clip_tokenizer

log = logging.getLogger(__name__)

# SD 1.x training noise schedule (scaled_linear); the sampler side reads the family's scheduler template.
SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


@dataclass
class Architecture:
    """Configs of the three parts; the checkpoint embeds them (`demo_recipe.architecture_metadata`) for the loader.

    The VAE keeps SD's four channels per GroupNorm group: with one channel per group (instance norm) a flat colour
    normalises to nothing, and the decoder learns to paint a blob into every picture to carry it.
    """

    vae: dict = field(default_factory=lambda: dict(
        in_channels=3, out_channels=3, block_out_channels=[16, 32, 64, 64],
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
        layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=64, scaling_factor=1.0,
        mid_block_add_attention=True, force_upcast=False,
    ))
    unet: dict = field(default_factory=lambda: dict(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=[32, 64, 64], layers_per_block=1,
        down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        cross_attention_dim=64, attention_head_dim=4, norm_num_groups=32, use_linear_projection=False,
    ))
    text_encoder: dict = field(default_factory=lambda: dict(
        vocab_size=49408, hidden_size=64, intermediate_size=256, num_attention_heads=1, num_hidden_layers=4,
        max_position_embeddings=MAX_LENGTH, hidden_act="quick_gelu", projection_dim=64,
        bos_token_id=0, eos_token_id=2, pad_token_id=1,  # eos 2: pool at argmax(ids), as SD's CLIP-L config does
    ))


@dataclass
class StageReport:
    """How one training stage went (for the recipe's log and the closing figures)."""

    steps: int
    seconds: float
    final_loss: float
    extra: dict = field(default_factory=dict)


def build_vae(arch: Architecture):
    from diffusers import AutoencoderKL

    return AutoencoderKL(**arch.vae)


def build_unet(arch: Architecture):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**arch.unet)


def build_text_encoder(arch: Architecture):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(**arch.text_encoder))


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """uint8 N×H×W×3 → float N×3×H×W in [-1, 1] (the VAE's range)."""
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).contiguous()


def _cosine_lr(optimizer, warmup: int, total: int):
    from diffusers.optimization import get_cosine_schedule_with_warmup

    return get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=warmup, num_training_steps=total)


def _progress(stage: str, step: int, total: int, loss: float, started: float, every: int) -> None:
    if step % every == 0 or step == total:
        log.info("%s step %d/%d loss %.5f (%.0f s)", stage, step, total, loss, time.perf_counter() - started)


def train_vae(vae, pixels: np.ndarray, steps: int, batch: int = 32, lr: float = 1e-3, kl_weight: float = 1e-6,
              seed: int = 0, log_every: int = 100) -> StageReport:
    """Reconstruction (MSE + L1) with SD's small KL term; batches drawn with a seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = _cosine_lr(opt, warmup=min(100, steps // 10), total=steps)
    started, loss_value = time.perf_counter(), float("nan")
    for step in range(1, steps + 1):
        x = to_tensor(pixels[torch.randint(0, len(pixels), (batch,), generator=gen).numpy()])
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
        y = vae.decode(z).sample
        loss = F.mse_loss(y, x) + 0.5 * F.l1_loss(y, x) + kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        loss_value = loss.item()
        _progress("vae", step, steps, loss_value, started, log_every)
    vae.eval().requires_grad_(False)
    return StageReport(steps, time.perf_counter() - started, loss_value)


@torch.no_grad()
def encode_moments(vae, pixels: np.ndarray, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every picture (the UNet stage samples latents from them each step)."""
    means, stds = [], []
    for i in range(0, len(pixels), batch):
        posterior = vae.encode(to_tensor(pixels[i:i + batch])).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def reconstruction_psnr(vae, pixels: np.ndarray, batch: int = 256) -> float:
    """PSNR (dB, on [0, 1]) of decode(mean latent) against the pictures."""
    errors = []
    for i in range(0, len(pixels), batch):
        x = to_tensor(pixels[i:i + batch])
        y = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
        errors.append(((y - x) / 2).pow(2).mean(dim=(1, 2, 3)))
    mse = torch.cat(errors).mean().item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def scaling_factor(means: torch.Tensor, stds: torch.Tensor) -> float:
    """SD's latent scale: 1 / std of sampled latents, so the UNet sees unit-variance inputs."""
    gen = torch.Generator().manual_seed(0)
    sample = means + stds * torch.randn(means.shape, generator=gen)
    return float(1.0 / sample.std())


def tokenize(captions: list[str]) -> torch.Tensor:
    """Ids as A1111 builds them for a one-chunk prompt: BOS, tokens, EOS, padded with EOS to 77."""
    tokenizer = build_clip_tokenizer()
    return tokenizer(captions, padding="max_length", max_length=MAX_LENGTH, truncation=True,
                     return_tensors="pt").input_ids


def min_snr_loss(pred: torch.Tensor, noise: torch.Tensor, snr: torch.Tensor, gamma: float) -> torch.Tensor:
    """The epsilon MSE per sample, weighted by min(SNR, γ)/SNR (Min-SNR-γ; γ = 0: plain MSE), averaged."""
    per_sample = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
    if gamma > 0:
        per_sample = per_sample * snr.clamp(max=gamma) / snr
    return per_sample.mean()


def train_unet_and_text_encoder(unet, text_encoder, means: torch.Tensor, stds: torch.Tensor, latent_scale: float,
                                caption_ids: torch.Tensor, empty_ids: torch.Tensor, steps: int, batch: int = 64,
                                lr: float = 1e-3, empty_rate: float = 0.1, offset_noise: float = 0.1,
                                ema_decay: float = 0.999, min_snr_gamma: float = 5.0, seed: int = 0,
                                log_every: int = 100) -> StageReport:
    """Epsilon prediction on the scaled_linear schedule, with offset noise, caption dropout (so CFG works) and EMA.

    Min-SNR-γ weighting (Hang et al. 2023; 0 turns it off) moves the effort from fine detail at low noise to the
    high-noise steps where colour and layout, what a prompt names, are decided. `caption_ids[i]` is the tokenized
    caption of picture i. The EMA weights are copied into both models at the end.
    """
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    gen = torch.Generator().manual_seed(seed)
    noise_schedule = DDPMScheduler(**SCHEDULE)
    snr = noise_schedule.alphas_cumprod / (1 - noise_schedule.alphas_cumprod)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    unet.train()
    text_encoder.train()
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = _cosine_lr(opt, warmup=min(200, steps // 10), total=steps)
    ema = EMAModel(params, decay=ema_decay)
    started, loss_value = time.perf_counter(), float("nan")
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(means), (batch,), generator=gen)
        latents = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)) * latent_scale
        ids = caption_ids[idx].clone()
        drop = torch.rand(batch, generator=gen) < empty_rate
        ids[drop] = empty_ids
        noise = torch.randn(latents.shape, generator=gen)
        noise += offset_noise * torch.randn((batch, latents.shape[1], 1, 1), generator=gen)
        t = torch.randint(0, noise_schedule.config.num_train_timesteps, (batch,), generator=gen)
        noisy = noise_schedule.add_noise(latents, noise, t)
        context = text_encoder(ids)[0]
        pred = unet(noisy, t, encoder_hidden_states=context).sample
        loss = min_snr_loss(pred, noise, snr[t], min_snr_gamma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ema.step(params)
        loss_value = loss.item()
        _progress("unet+te", step, steps, loss_value, started, log_every)
    ema.copy_to(params)
    unet.eval().requires_grad_(False)
    text_encoder.eval().requires_grad_(False)
    return StageReport(steps, time.perf_counter() - started, loss_value)

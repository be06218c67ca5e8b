"""ReVision (SDXL; revision_clipvision / revision_ignore_prompt): a picture as the prompt's pooled embedding.

As the extension does it: the picture's projected CLIP-G image embedding (the encoder found by width in
models/clip_vision), noise-augmented once per generation (the "Noise Augmentation" slider picks the timestep of a
1000-step linear DDPM schedule, 1e-4 to 2e-2 — ldm's AbstractLowScaleModel), times each unit's weight and summed
over units, replaces the pooled text embedding of the prompt's rows inside the units' guidance windows, and the
negative prompt's rows get zeros. revision_ignore_prompt, or a request whose prompt and negative prompt are both
empty, also zeroes the text tokens, so the picture alone guides.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

MODULES = ("revision_clipvision", "revision_ignore_prompt")


@dataclass
class RevisionSpec:
    """A ReVision unit's embedding (already noise-augmented) and whether it silences the prompt."""

    embedding: torch.Tensor  # (1, width)
    ignore_prompt: bool


def _alphas_cumprod() -> torch.Tensor:
    betas = torch.linspace(1e-4 ** 0.5, 2e-2 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def noise_augmented(embedding: torch.Tensor, level: float, generator: torch.Generator) -> torch.Tensor:
    """q_sample at timestep `level`·1000 (clipped to 0-999), with noise from `generator` (on the CPU)."""
    t = max(0, min(999, int(level * 1000)))
    a = _alphas_cumprod()[t]
    noise = torch.randn(embedding.shape, generator=generator, dtype=torch.float32).to(embedding.device)
    return (a.sqrt() * embedding.float() + (1 - a).sqrt() * noise).to(embedding.dtype)


def apply(units: list, step: int, total: int, embeds: torch.Tensor, added: dict | None, uncond_rows: int):
    """(embeds, added) for this UNet call with the ReVision units active at `step` applied."""
    active = [u for u in units if u.kind == "revision" and u.active_at(step, total)]
    if not active or added is None or "text_embeds" not in added:
        return embeds, added
    pooled = added["text_embeds"]
    total_embedding = sum(u.model.embedding.to(pooled.device, pooled.dtype) * float(u.weight) for u in active)
    replaced = total_embedding.expand(pooled.shape[0], -1).clone()
    replaced[:uncond_rows] = 0
    if any(u.model.ignore_prompt for u in active):
        embeds = torch.zeros_like(embeds)
    return embeds, {**added, "text_embeds": replaced}

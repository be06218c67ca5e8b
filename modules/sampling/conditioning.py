"""Text conditioning: prompts → the tensors the UNet is conditioned on.

This is the plain encoder (one 77-token window per prompt, as A1111 encodes a short prompt without emphasis):
for SD1.x/SD2.x the final-layer-normed hidden state of the chosen layer, for SDXL the penultimate hidden states of
both encoders concatenated plus the bigG pooled output. Clip skip follows A1111: `CLIP_stop_at_last_layers = n`
uses the n-th layer from the end of SD1.x's CLIP-L; SD2.x and SDXL use their fixed penultimate layer.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Conditioning:
    """Per-image conditioning for one batch (rows follow the batch order)."""

    embeds: torch.Tensor  # (B, tokens, context_dim)
    pooled: torch.Tensor | None = None  # (B, pooled_dim) for SDXL

    def cat(self, other: "Conditioning") -> "Conditioning":
        pooled = None if self.pooled is None else torch.cat([self.pooled, other.pooled])
        return Conditioning(torch.cat([self.embeds, other.embeds]), pooled)


def _tokens(tokenizer, prompts: list[str], device) -> torch.Tensor:
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return ids.to(device)


def _encode_sd(model, prompts: list[str], clip_skip: int) -> Conditioning:
    te = model.text_encoder
    ids = _tokens(model.tokenizer, prompts, model.device)
    if clip_skip <= 1 or model.family != "sd1":  # A1111 applies clip skip to SD1.x's CLIP-L only
        embeds = te(ids)[0]
    else:
        out = te(ids, output_hidden_states=True)
        embeds = te.final_layer_norm(out.hidden_states[-clip_skip]) if hasattr(te, "final_layer_norm") \
            else te.text_model.final_layer_norm(out.hidden_states[-clip_skip])
    return Conditioning(embeds.to(model.dtype))


def _encode_sdxl(model, prompts: list[str], clip_skip: int) -> Conditioning:
    pairs = [(model.tokenizer, model.text_encoder), (model.tokenizer_2, model.text_encoder_2)]
    hidden, pooled = [], None
    for tokenizer, te in pairs:
        if te is None:
            continue
        out = te(_tokens(tokenizer, prompts, model.device), output_hidden_states=True)
        pooled = out[0]
        hidden.append(out.hidden_states[-2])  # A1111's SDXL default ignores clip skip
    return Conditioning(torch.cat(hidden, dim=-1).to(model.dtype), pooled.to(model.dtype))


@torch.inference_mode()
def encode(model, prompts: list[str], clip_skip: int = 1) -> Conditioning:
    """Encode a batch of prompts for `model` (a LoadedModel)."""
    clip_skip = max(1, int(clip_skip))
    if model.is_sdxl:
        return _encode_sdxl(model, prompts, clip_skip)
    return _encode_sd(model, prompts, clip_skip)


def sdxl_time_ids(model, width: int, height: int, original=None, crop=(0, 0), aesthetic: float | None = None,
                  batch: int = 1) -> torch.Tensor:
    """SDXL's size/crop conditioning (base: orig+crop+target; refiner: orig+crop+aesthetic score)."""
    original = original or (height, width)
    if model.family == "sdxl_refiner":
        ids = list(original) + list(crop) + [aesthetic if aesthetic is not None else 6.0]
    else:
        ids = list(original) + list(crop) + [height, width]
    return torch.tensor([ids] * batch, dtype=model.dtype, device=model.device)

"""Prompts → conditioning for Flux.1 and SD3/SD3.5, as their diffusers pipelines encode them, plus A1111's syntax.

Flux: the T5-XXL hidden states are the context, CLIP-L's pooled output the vector. SD3: CLIP-L and CLIP-G hidden
states (penultimate layer) side by side, zero-padded to T5's width, followed by T5's tokens; the two CLIPs' pooled
projections side by side are the vector.

A1111's prompt syntax applies as on SDXL: on the CLIP parts, 75-token chunks, BREAK and emphasis exactly as
`conditioning.encode` does them; on T5 (one window of the model's T5 length, 512 for Flux dev, 256 for schnell and
SD3), emphasis weights the tokens of each emphasised piece and restores the mean as A1111's "Original" mode does
(Forge does the same). A plain prompt takes exactly the pipelines' tokens and calls, so it gives their tensors.
Textual-inversion embeddings are SD1/SDXL only: they are not looked up for these families.
"""
from __future__ import annotations

import torch

from modules import prompt_parser
from modules.sampling import conditioning as cond_mod
from modules.sampling.conditioning import Conditioning, TextOptions


def t5_tokens(tokenizer, prompt: str, max_length: int, emphasis: str) -> tuple[list[int], list[float]]:
    """T5 ids (pieces tokenized in turn, `</s>` at the end, padded to `max_length`) and each token's weight."""
    parsed = prompt_parser.parse_prompt_attention(prompt) if emphasis != "None" else [[prompt, 1.0]]
    ids: list[int] = []
    weights: list[float] = []
    for text, weight in parsed:
        if text == "BREAK" and weight == -1:
            continue
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        weights += [float(weight)] * len(piece)
    ids, weights = ids[:max_length - 1] + [tokenizer.eos_token_id], weights[:max_length - 1] + [1.0]
    pad = max_length - len(ids)
    return ids + [tokenizer.pad_token_id] * pad, weights + [1.0] * pad


def _t5(model, te, tokenizer, prompts: list[str], opts: TextOptions) -> torch.Tensor:
    max_length = int(model.spec.defaults.get("t5_max_length", 256))
    rows = [t5_tokens(tokenizer, p, max_length, opts.emphasis) for p in prompts]
    ids = torch.tensor([r[0] for r in rows], device=model.device)
    z = te(ids)[0]
    return cond_mod._apply_emphasis(z, [r[1] for r in rows], opts.emphasis)


def _clip_chunks(model, tokenizer, te, prompts: list[str], opts: TextOptions, layer: int | None,
                 token_counts: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden states of every 77-token chunk side by side, pooled output of the first chunk) for one CLIP."""
    rows = [cond_mod.tokenize_line(tokenizer, p, opts.emphasis, opts.comma_padding_backtrack) for p in prompts]
    if token_counts is not None:
        token_counts.extend(count for _, count in rows)
    empty = cond_mod._empty_chunk(tokenizer)
    chunk_count = max(len(chunks) for chunks, _ in rows)
    zs, pooled = [], None
    for i in range(chunk_count):
        batch_chunk = [chunks[i] if i < len(chunks) else empty for chunks, _ in rows]
        ids = cond_mod._chunk_ids(tokenizer, [c.tokens for c in batch_chunk], model.device)
        out = te(ids, output_hidden_states=layer is not None)
        if i == 0:
            pooled = out[0] if hasattr(out, "text_embeds") else out.pooler_output
        if layer is not None:
            zs.append(cond_mod._apply_emphasis(out.hidden_states[layer], [c.multipliers for c in batch_chunk],
                                               opts.emphasis))
    hidden = torch.cat(zs, dim=1) if len(zs) > 1 else (zs[0] if zs else None)
    return hidden, pooled


@torch.inference_mode()
def encode(model, prompts: list[str], options: TextOptions | None = None, token_counts: list | None = None,
           use_t5: bool = True) -> Conditioning:
    """Encode a batch of prompts for a Flux/SD3 LoadedModel; `use_t5=False` (SD3 only) gives T5's part as zeros,
    as SD3's pipeline does without its third encoder."""
    opts = options or TextOptions()
    if model.family == "flux":
        _, pooled = _clip_chunks(model, model.tokenizer, model.text_encoder, prompts, opts, None, token_counts)
        t5 = _t5(model, model.text_encoder_2, model.tokenizer_2, prompts, opts)
        return Conditioning(t5.to(model.dtype), pooled.to(model.dtype), tail=t5.shape[1])
    layer = -(max(1, opts.clip_skip) + 1)  # A1111's clip skip 1 = diffusers' default penultimate layer
    hidden_l, pooled_l = _clip_chunks(model, model.tokenizer, model.text_encoder, prompts, opts, layer, token_counts)
    hidden_g, pooled_g = _clip_chunks(model, model.tokenizer_2, model.text_encoder_2, prompts, opts, layer)
    clip = torch.cat([hidden_l, hidden_g], dim=-1)
    width = int(model.unet.config.joint_attention_dim)
    if use_t5 and model.text_encoder_3 is not None:
        t5 = _t5(model, model.text_encoder_3, model.tokenizer_3, prompts, opts)
    else:
        length = int(model.spec.defaults.get("t5_max_length", 256))
        t5 = torch.zeros((len(prompts), length, width), device=model.device, dtype=clip.dtype)
    clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
    embeds = torch.cat([clip, t5.to(clip.dtype)], dim=-2)
    pooled = torch.cat([pooled_l, pooled_g], dim=-1)
    return Conditioning(embeds.to(model.dtype), pooled.to(model.dtype), tail=t5.shape[1])

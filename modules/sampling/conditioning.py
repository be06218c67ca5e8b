"""Text conditioning: prompts → the tensors the UNet is conditioned on, the way A1111 encodes them.

A prompt is parsed for emphasis (`modules.prompt_parser.parse_prompt_attention`), tokenized piece by piece and cut
into 75-token chunks (a chunk that fills up breaks after its last comma if that lies within the last
`comma_padding_backtrack` tokens; `BREAK` starts a new chunk); each chunk gets BOS/EOS/padding to 77 tokens, is
encoded on its own, weighted by the emphasis mode (`Original`: scale, then restore the mean; `No norm`: scale only;
`Ignore`: parse but don't weight; `None`: don't parse), and the chunks are concatenated. Textual inversion
embeddings are found in the token stream and their vectors spliced into the input embeddings.

For SD1.x/SD2.x the final-layer-normed hidden state of the chosen layer is used, for SDXL the penultimate hidden
states of both encoders concatenated, plus the bigG pooled output of the first chunk. Clip skip follows A1111:
`CLIP_stop_at_last_layers = n` uses the n-th layer from the end of SD1.x's CLIP-L; SD2.x and SDXL use their fixed
penultimate layer (SDXL's CLIP-L follows clip skip with `sdxl_clip_l_skip`).

A short prompt without emphasis goes through exactly the tokens and calls of diffusers' own encoding (one 77-token
window), so the plain case stays bit-identical to the pipelines.

`PromptSchedule` turns a batch's prompts into per-step (cond, uncond) pairs for the sampling loop: prompt editing
and alternation (A1111's step semantics), `AND` (a `MultiConditioning` the loop combines as A1111's CFGDenoiser),
and cond/uncond padded to the same number of chunks.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import torch

from modules import prompt_parser

CHUNK_LENGTH = 75
EMPHASIS_MODES = ("None", "Ignore", "Original", "No norm")


@dataclass
class Conditioning:
    """Per-image conditioning for one batch (rows follow the batch order)."""

    embeds: torch.Tensor  # (B, tokens, context_dim)
    pooled: torch.Tensor | None = None  # (B, pooled_dim) for SDXL, Flux, SD3
    tail: int = 0  # Flux/SD3: the last `tail` tokens are T5's fixed window; only the tokens before it are chunks

    def cat(self, other: "Conditioning") -> "Conditioning":
        pooled = None if self.pooled is None else torch.cat([self.pooled, other.pooled])
        return Conditioning(torch.cat([self.embeds, other.embeds]), pooled, self.tail)


@dataclass
class MultiConditioning(Conditioning):
    """`AND` prompts: one row per prompt part; `owners[k]` is the batch image row k belongs to, `weights[k]` its
    weight. The loop computes noise[b] = uncond[b] + Σ_k∈b weights[k]·cfg·(cond[k] − uncond[b])."""

    owners: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)


@dataclass
class TextOptions:
    """The settings that change how a prompt is encoded."""

    clip_skip: int = 1
    emphasis: str = "Original"
    comma_padding_backtrack: int = 20
    sdxl_clip_l_skip: bool = False
    use_t5: bool = True  # SD3: encode with T5-XXL (off: its part is zeros, as SD3 without its third encoder)

    @classmethod
    def from_options(cls, opt: Callable[[str, object], object]) -> "TextOptions":
        emphasis = str(opt("emphasis", "Original") or "Original")
        return cls(clip_skip=max(1, int(opt("CLIP_stop_at_last_layers", 1) or 1)),
                   emphasis=emphasis if emphasis in EMPHASIS_MODES else "Original",
                   comma_padding_backtrack=int(opt("comma_padding_backtrack", 20) or 0),
                   sdxl_clip_l_skip=bool(opt("sdxl_clip_l_skip", False)),
                   use_t5=bool(opt("sd3_enable_t5", True)))


# ---------------------------------------------------------------------------------------------------------------
# Tokenization into chunks


@dataclass
class PromptChunk:
    tokens: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)
    fixes: list[tuple[int, object]] = field(default_factory=list)  # (offset in tokens without BOS, Embedding)


def _special_ids(tokenizer) -> tuple[int, int, int, int | None]:
    id_start, id_end = tokenizer.bos_token_id, tokenizer.eos_token_id
    id_pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else id_end
    comma = tokenizer.convert_tokens_to_ids(",</w>")  # one look-up: get_vocab() copies the whole vocabulary
    if comma is None or comma == tokenizer.unk_token_id:
        comma = None
    return id_start, id_end, id_pad, comma


def tokenize_line(tokenizer, line: str, emphasis: str = "Original", comma_padding_backtrack: int = 20,
                  lookup: dict | None = None) -> tuple[list[PromptChunk], int]:
    """A1111's `tokenize_line`: the prompt's chunks (77 tokens each, with BOS/EOS, padded with EOS) and its token
    count. Padding ids for encoders that pad with something else than EOS are put in by `_chunk_ids`."""
    from modules.networks.embeddings import EmbeddingDatabase

    id_start, id_end, _, comma_token = _special_ids(tokenizer)
    parsed = prompt_parser.parse_prompt_attention(line) if emphasis != "None" else [[line, 1.0]]
    tokenized = tokenizer([text for text, _ in parsed], truncation=False, add_special_tokens=False)["input_ids"]

    chunks: list[PromptChunk] = []
    chunk = PromptChunk()
    token_count = 0
    last_comma = -1

    def next_chunk(is_last=False):
        nonlocal token_count, last_comma, chunk
        token_count += len(chunk.tokens) if is_last else CHUNK_LENGTH
        to_add = CHUNK_LENGTH - len(chunk.tokens)
        if to_add > 0:
            chunk.tokens += [id_end] * to_add
            chunk.multipliers += [1.0] * to_add
        chunk.tokens = [id_start] + chunk.tokens + [id_end]
        chunk.multipliers = [1.0] + chunk.multipliers + [1.0]
        last_comma = -1
        chunks.append(chunk)
        chunk = PromptChunk()

    for tokens, (text, weight) in zip(tokenized, parsed):
        if text == "BREAK" and weight == -1:
            next_chunk()
            continue
        position = 0
        while position < len(tokens):
            token = tokens[position]
            if token == comma_token:
                last_comma = len(chunk.tokens)
            elif (comma_padding_backtrack != 0 and len(chunk.tokens) == CHUNK_LENGTH and last_comma != -1
                  and len(chunk.tokens) - last_comma <= comma_padding_backtrack):
                break_location = last_comma + 1
                reloc_tokens = chunk.tokens[break_location:]
                reloc_mults = chunk.multipliers[break_location:]
                chunk.tokens = chunk.tokens[:break_location]
                chunk.multipliers = chunk.multipliers[:break_location]
                next_chunk()
                chunk.tokens = reloc_tokens
                chunk.multipliers = reloc_mults
            if len(chunk.tokens) == CHUNK_LENGTH:
                next_chunk()
            embedding, length = (EmbeddingDatabase.find_embedding_at_position(lookup, tokens, position)
                                 if lookup else (None, None))
            if embedding is None:
                chunk.tokens.append(token)
                chunk.multipliers.append(weight)
                position += 1
                continue
            emb_len = int(embedding.vectors)
            if len(chunk.tokens) + emb_len > CHUNK_LENGTH:
                next_chunk()
            chunk.fixes.append((len(chunk.tokens), embedding))
            chunk.tokens += [0] * emb_len
            chunk.multipliers += [weight] * emb_len
            position += length

    if chunk.tokens or not chunks:
        next_chunk(is_last=True)
    return chunks, token_count


def _empty_chunk(tokenizer) -> PromptChunk:
    id_start, id_end, _, _ = _special_ids(tokenizer)
    return PromptChunk([id_start] + [id_end] * (CHUNK_LENGTH + 1), [1.0] * (CHUNK_LENGTH + 2))


def _chunk_ids(tokenizer, rows: list[list[int]], device) -> torch.Tensor:
    """Chunk tokens → input ids; after the first EOS, an encoder whose pad token differs (OpenCLIP) gets pads."""
    _, id_end, id_pad, _ = _special_ids(tokenizer)
    ids = torch.asarray(rows)
    if id_end != id_pad:
        for b, row in enumerate(rows):
            ids[b, row.index(id_end) + 1:] = id_pad
    return ids.to(device)


# ---------------------------------------------------------------------------------------------------------------
# Encoding


@dataclass
class _Encoder:
    tokenizer: object
    te: torch.nn.Module
    key: str | None  # which vectors of an SDXL embedding file this encoder takes
    hidden: Callable  # (te, ids) → (hidden, pooled)


def _apply_fixes(te, key, fixes):
    """A forward hook that splices textual-inversion vectors into the token embeddings (A1111's EmbeddingsWithFixes)."""
    def hook(module, inputs, out):
        out = out.clone()
        for b, row_fixes in enumerate(fixes):
            for offset, emb in row_fixes:
                vec = emb.vectors_for(key).to(device=out.device, dtype=out.dtype)
                n = min(out.shape[1] - offset - 1, vec.shape[0])
                out[b, offset + 1:offset + 1 + n] = vec[:n]
        return out

    return te.get_input_embeddings().register_forward_hook(hook)


def _apply_emphasis(z: torch.Tensor, multipliers: list[list[float]], mode: str) -> torch.Tensor:
    if mode not in ("Original", "No norm") or all(m == 1.0 for row in multipliers for m in row):
        return z
    mult = torch.asarray(multipliers, dtype=z.dtype, device=z.device)
    if mode == "Original":
        original_mean = z.mean()
        z = z * mult.reshape(mult.shape + (1,)).expand(z.shape)
        new_mean = z.mean()
        return z * (original_mean / new_mean)
    return z * mult.reshape(mult.shape + (1,)).expand(z.shape)


def _encoders(model, opts: TextOptions) -> list[_Encoder]:
    clip_skip = opts.clip_skip
    if not model.is_sdxl:
        def hidden_sd(te, ids):
            if clip_skip <= 1 or model.family != "sd1":  # A1111 applies clip skip to SD1.x's CLIP-L only
                return te(ids)[0], None
            out = te(ids, output_hidden_states=True)
            norm = te.final_layer_norm if hasattr(te, "final_layer_norm") else te.text_model.final_layer_norm
            return norm(out.hidden_states[-clip_skip]), None

        return [_Encoder(model.tokenizer, model.text_encoder, None, hidden_sd)]

    def hidden_xl(layer):
        def fn(te, ids):
            out = te(ids, output_hidden_states=True)
            return out.hidden_states[layer], out[0]
        return fn

    l_layer = -clip_skip if opts.sdxl_clip_l_skip else -2
    pairs = [(model.tokenizer, model.text_encoder, "clip_l", hidden_xl(l_layer)),
             (model.tokenizer_2, model.text_encoder_2, "clip_g", hidden_xl(-2))]
    return [_Encoder(tok, te, key, fn) for tok, te, key, fn in pairs if te is not None]


@torch.inference_mode()
def encode(model, prompts: list[str], clip_skip: int = 1, *, options: TextOptions | None = None, embeddings=None,
           used: dict | None = None, token_counts: list | None = None) -> Conditioning:
    """Encode a batch of prompts for `model` (a LoadedModel).

    `embeddings`: an EmbeddingDatabase (already `load`ed for this model); the ones found are added to `used`
    (name → Embedding). `token_counts`, if given, receives each prompt's token count."""
    opts = dataclasses.replace(options or TextOptions(), clip_skip=max(1, int(clip_skip)))
    if getattr(model, "is_flow", False):
        from modules.sampling import flow_conditioning

        return flow_conditioning.encode(model, prompts, opts, token_counts, use_t5=opts.use_t5)
    encoders = _encoders(model, opts)
    per_encoder = []
    for enc in encoders:
        lookup = embeddings.lookup_for(enc.tokenizer) if embeddings is not None else None
        rows = [tokenize_line(enc.tokenizer, p, opts.emphasis, opts.comma_padding_backtrack, lookup)
                for p in prompts]
        per_encoder.append(rows)
    if token_counts is not None and per_encoder:
        token_counts.extend(count for _, count in per_encoder[0])
    chunk_count = max(len(chunks) for rows in per_encoder for chunks, _ in rows)

    hidden, pooled = [], None
    for enc, rows in zip(encoders, per_encoder):
        empty = _empty_chunk(enc.tokenizer)
        zs = []
        for i in range(chunk_count):
            batch_chunk = [chunks[i] if i < len(chunks) else empty for chunks, _ in rows]
            fixes = [c.fixes for c in batch_chunk]
            if used is not None:
                for row_fixes in fixes:
                    for _, emb in row_fixes:
                        used.setdefault(emb.name, emb)
            ids = _chunk_ids(enc.tokenizer, [c.tokens for c in batch_chunk], model.device)
            handle = _apply_fixes(enc.te, enc.key, fixes) if any(fixes) else None
            try:
                z, p = enc.hidden(enc.te, ids)
            finally:
                if handle is not None:
                    handle.remove()
            z = _apply_emphasis(z, [c.multipliers for c in batch_chunk], opts.emphasis)
            zs.append(z)
            if i == 0 and p is not None:
                pooled = p
        hidden.append(torch.cat(zs, dim=1) if len(zs) > 1 else zs[0])
    embeds = torch.cat(hidden, dim=-1) if len(hidden) > 1 else hidden[0]
    return Conditioning(embeds.to(model.dtype), None if pooled is None else pooled.to(model.dtype))


def pad_to_length(c: Conditioning, length: int, empty: Conditioning) -> Conditioning:
    """Append empty-prompt chunks (A1111's `pad_cond_uncond`) until `c` has `length` tokens (before T5's fixed
    window, where the model has one)."""
    have = c.embeds.shape[1]
    if have >= length:
        return c
    chunk = empty.embeds.shape[1] - empty.tail
    reps = (length - have) // chunk
    extra = empty.embeds[:1, :chunk].expand(c.embeds.shape[0], -1, -1).repeat(1, reps, 1)
    cut = have - c.tail
    return dataclasses.replace(c, embeds=torch.cat([c.embeds[:, :cut], extra, c.embeds[:, cut:]], dim=1))


# ---------------------------------------------------------------------------------------------------------------
# Per-step conditioning: editing, alternation, AND


def _entry_at(schedule: list, step: int) -> int:
    """Index of the schedule entry used at 0-based sampler step `step` (A1111's reconstruct_cond_batch)."""
    for j, (end_at, _) in enumerate(schedule):
        if step <= end_at:
            return j
    return len(schedule) - 1


class PromptSchedule:
    """(cond, uncond) for each step of one batch.

    `encode_fn(texts) → Conditioning` (the caller caches it). Prompt schedules come from
    `get_learned_conditioning_prompt_schedules(…, steps, hires_steps, use_old_scheduling)`; the step given to `at` is
    the 0-based index of the sampler step, as A1111's denoiser counts it.
    """

    def __init__(self, encode_fn: Callable[[list[str]], Conditioning], prompts: list[str], negatives: list[str],
                 steps: int, hires_steps: int | None = None, use_old_scheduling: bool = False,
                 with_uncond: bool = True):
        self.encode_fn = encode_fn
        self.with_uncond = with_uncond  # False: no negative prompt is encoded, `at` gives (cond, None)
        if not with_uncond:
            negatives = [""] * len(negatives)
        self.parts, flat, _ = prompt_parser.get_multicond_prompt_list(prompts)
        self.flat = list(flat)
        self.cond_schedules = prompt_parser.get_learned_conditioning_prompt_schedules(
            self.flat, steps, hires_steps, use_old_scheduling)
        self.neg_schedules = prompt_parser.get_learned_conditioning_prompt_schedules(
            negatives, steps, hires_steps, use_old_scheduling)
        self.multi = any(len(p) != 1 or p[0][1] != 1.0 for p in self.parts)
        self.static = not self.multi and all(len(s) == 1 for s in self.cond_schedules + self.neg_schedules)
        self._cache: dict[tuple, tuple[Conditioning, Conditioning]] = {}
        self._encoded: dict[tuple[str, ...], Conditioning] = {}
        self._empty: Conditioning | None = None
        if self.static:  # one encode call per side, exactly as a plain prompt always was
            cond = encode_fn([self.cond_schedules[p[0][0]][0][1] for p in self.parts])
            if with_uncond:
                self._static = self._pad(cond, encode_fn([s[0][1] for s in self.neg_schedules]))
            else:
                self._static = (cond, None)

    @property
    def varies(self) -> bool:
        """Whether the conditioning changes between steps (or needs the AND combination)."""
        return not self.static

    def _empty_cond(self) -> Conditioning:
        if self._empty is None:
            self._empty = self.encode_fn([""])
        return self._empty

    def _pad(self, cond: Conditioning, uncond: Conditioning) -> tuple[Conditioning, Conditioning]:
        length = max(cond.embeds.shape[1], uncond.embeds.shape[1])
        if cond.embeds.shape[1] != length or uncond.embeds.shape[1] != length:
            empty = self._empty_cond()
            cond, uncond = pad_to_length(cond, length, empty), pad_to_length(uncond, length, empty)
        return cond, uncond

    def _schedule_rows(self, schedule: list) -> Conditioning:
        """All texts of one prompt's schedule encoded together (as A1111 does), one row per entry."""
        texts = tuple(text for _, text in schedule)
        if texts not in self._encoded:
            self._encoded[texts] = self.encode_fn(list(texts))
        return self._encoded[texts]

    def _rows(self, picks: list[tuple[list, int]]) -> Conditioning:
        rows = [(self._schedule_rows(s), j) for s, j in picks]
        length = max(c.embeds.shape[1] for c, _ in rows)
        if any(c.embeds.shape[1] != length for c, _ in rows):
            rows = [(pad_to_length(c, length, self._empty_cond()), j) for c, j in rows]
        embeds = torch.cat([c.embeds[j:j + 1] for c, j in rows])
        pooled = None if rows[0][0].pooled is None else torch.cat([c.pooled[j:j + 1] for c, j in rows])
        return Conditioning(embeds, pooled, rows[0][0].tail)

    def at(self, step: int) -> tuple[Conditioning, Conditioning]:
        if self.static:
            return self._static
        cond_picks = [(self.cond_schedules[i], _entry_at(self.cond_schedules[i], step))
                      for part in self.parts for i, _ in part]
        neg_picks = [(s, _entry_at(s, step)) for s in self.neg_schedules]
        key = tuple(j for _, j in cond_picks) + (None,) + tuple(j for _, j in neg_picks)
        if key not in self._cache:
            if self.with_uncond:
                cond, uncond = self._pad(self._rows(cond_picks), self._rows(neg_picks))
            else:
                cond, uncond = self._rows(cond_picks), None
            if self.multi:
                owners = [b for b, part in enumerate(self.parts) for _ in part]
                weights = [w for part in self.parts for _, w in part]
                cond = MultiConditioning(cond.embeds, cond.pooled, cond.tail, owners=owners, weights=weights)
            self._cache[key] = (cond, uncond)
        return self._cache[key]

    def texts_at(self, step: int) -> tuple[list[str], list[str]]:
        """The cond part texts and negative texts used at `step` (for tests and debugging)."""
        cond = [self.cond_schedules[i][_entry_at(self.cond_schedules[i], step)][1]
                for part in self.parts for i, _ in part]
        neg = [s[_entry_at(s, step)][1] for s in self.neg_schedules]
        return cond, neg


def sdxl_time_ids(model, width: int, height: int, original=None, crop=(0, 0), aesthetic: float | None = None,
                  batch: int = 1) -> torch.Tensor:
    """SDXL's size/crop conditioning (base: orig+crop+target; refiner: orig+crop+aesthetic score)."""
    original = original or (height, width)
    if model.family == "sdxl_refiner":
        ids = list(original) + list(crop) + [aesthetic if aesthetic is not None else 6.0]
    else:
        ids = list(original) + list(crop) + [height, width]
    return torch.tensor([ids] * batch, dtype=model.dtype, device=model.device)

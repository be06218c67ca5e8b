"""The CLIP tokenizer, built offline from the BPE vocabulary that `open-clip-torch` ships.

Every SD family uses the same CLIP BPE vocabulary; only the padding token differs (SD1.x pads with
`<|endoftext|>`, OpenCLIP encoders of SD2.x / SDXL pad with `!`, id 0). Building it from the wheel's file means no
code path ever asks a model hub for `openai/clip-vit-large-patch14`.
"""
from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

from transformers import CLIPTokenizer

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MAX_LENGTH = 77
_MERGE_COUNT = 49152 - 256 - 2


def bpe_vocab_path() -> Path:
    """Locate open_clip's BPE file without importing open_clip (its __init__ pulls in timm/torchvision)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise RuntimeError("open-clip-torch is not installed: it ships the CLIP BPE vocabulary the tokenizer needs")
    return Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte → printable unicode table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


@functools.lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    lines = gzip.open(bpe_vocab_path()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _MERGE_COUNT + 1]]
    vocab = list(_bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += [BOS, EOS]
    return {token: i for i, token in enumerate(vocab)}, tuple(merges)


def build_clip_tokenizer(pad_token: str = EOS) -> CLIPTokenizer:
    """A fresh tokenizer (fresh because textual-inversion embeddings add tokens to it per model)."""
    vocab, merges = _vocab_and_merges()
    return CLIPTokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        unk_token=EOS,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=pad_token,
        model_max_length=MAX_LENGTH,
    )


T5_TOKENIZER_DIR = Path(__file__).parent / "tokenizers" / "t5"  # T5 v1.1's vocabulary (Flux, SD3): SOURCE.md


def build_t5_tokenizer(max_length: int = 512):
    """The T5 tokenizer Flux and SD3 use, from the copy the repo carries (never from a model hub)."""
    from transformers import T5TokenizerFast

    return T5TokenizerFast.from_pretrained(str(T5_TOKENIZER_DIR), local_files_only=True, model_max_length=max_length)

"""Captions → conditioning with gradients, through exactly the code generation uses (A1111's chunking, clip skip,
SDXL's two encoders, textual-inversion splicing), so what is trained is what prompts will later see."""
from __future__ import annotations

from modules.networks.embeddings import Embedding, EmbeddingDatabase
from modules.sampling import conditioning

# The generation encoder without its inference_mode wrapper (functools.wraps keeps the original as __wrapped__).
_encode = conditioning.encode.__wrapped__


def encode_text(model, texts: list[str], clip_skip: int = 1, embeddings=None) -> conditioning.Conditioning:
    """Like `conditioning.encode`, but autograd sees it: gradients reach LoRA layers and embedding vectors."""
    return _encode(model, texts, clip_skip, embeddings=embeddings)


class EmbeddingOverlay:
    """The embeddings prompts should see during training: the saved ones (`base`, optional) plus the one being
    trained, with its current in-memory vectors (which win over a saved file of the same name)."""

    def __init__(self, embedding: Embedding, base: EmbeddingDatabase | None = None):
        self.embedding = embedding
        self.base = base

    def load(self, model=None, announce: bool = False) -> None:
        if self.base is not None:
            self.base.load(model, announce)

    def lookup_for(self, tokenizer) -> dict:
        table = {k: [e for e in v if e[1].name != self.embedding.name]
                 for k, v in (self.base.lookup_for(tokenizer) if self.base is not None else {}).items()}
        ids = tokenizer([self.embedding.name], truncation=False, add_special_tokens=False)["input_ids"][0]
        if ids:
            table.setdefault(ids[0], []).append((list(ids), self.embedding))
            table[ids[0]].sort(key=lambda x: len(x[0]), reverse=True)
        return table


__all__ = ["encode_text", "EmbeddingOverlay"]

"""A1111's `modules.textual_inversion.textual_inversion`: the embedding classes over ours; training is the Train
tab's (modules/training/), not these functions."""
from __future__ import annotations

from modules.a1111.unsupported import unsupported
from modules.networks.embeddings import Embedding, EmbeddingDatabase  # noqa: F401


def list_textual_inversion_templates():
    return []


create_embedding = unsupported("textual_inversion.create_embedding", "use the Train tab or modules.training")
train_embedding = unsupported("textual_inversion.train_embedding", "use the Train tab or modules.training")

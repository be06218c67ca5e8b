"""A1111's `modules.sd_hijack`: `model_hijack` is how extensions reach the textual-inversion database and the
prompt token counter. Both are real here (over the engine's embeddings and tokenizer); hijacking LDM modules is not."""
from __future__ import annotations

import math

from modules.a1111._engine import engine
from modules.a1111.unsupported import Unsupported, unsupported


class _EmbeddingDb:
    """A1111's EmbeddingDatabase face over ours (`word_embeddings`, `skipped_embeddings`, reloads)."""

    def _db(self):
        return engine().embeddings

    def load_textual_inversion_embeddings(self, force_reload: bool = False, sync_with_sd_model: bool = True):
        e = engine()
        model = e.models.current
        if force_reload:
            self._db().refresh(model)
        else:
            self._db().load(model)

    @property
    def word_embeddings(self) -> dict:
        return self._db().word_embeddings

    @property
    def skipped_embeddings(self) -> dict:
        return self._db().skipped_embeddings

    @property
    def embedding_dirs(self) -> dict:
        directory = self._db().directory
        return {str(directory): directory} if directory else {}

    @property
    def ids_lookup(self) -> dict:
        model = engine().models.current
        return self._db().lookup_for(model.tokenizer) if model is not None and model.tokenizer is not None else {}

    def find_embedding_at_position(self, tokens, offset):
        return self._db().find_embedding_at_position(self.ids_lookup, tokens, offset)

    def register_embedding(self, embedding, model=None):
        self._db().word_embeddings[embedding.name] = embedding
        return embedding

    def add_embedding_dir(self, path) -> None:
        unsupported("model_hijack.embedding_db.add_embedding_dir", "embeddings come from --embeddings-dir")()


class StableDiffusionModelHijack:
    fixes = None
    layers = None
    circular_enabled = False
    clip = None
    optimization_method = None

    def __init__(self):
        self.embedding_db = _EmbeddingDb()
        self.extra_generation_params: dict = {}
        self.comments: list[str] = []

    def apply_optimizations(self, option=None) -> None:
        """Attention is chosen by the engine (SDPA or --xformers)."""

    def convert_sdxl_to_ssd(self, m):
        unsupported("model_hijack.convert_sdxl_to_ssd", "LDM internals")()

    def hijack(self, m) -> None:
        """Nothing to hijack: prompts, emphasis and embeddings are handled by the engine's conditioning."""

    def undo_hijack(self, m) -> None:
        """See hijack."""

    def apply_circular(self, enable: bool) -> None:
        self.circular_enabled = bool(enable)

    def clear_comments(self) -> None:
        self.comments = []
        self.extra_generation_params = {}

    def get_prompt_lengths(self, text: str):
        """(token count, token limit): the limit grows by 75 per started chunk, as in A1111's counter."""
        from modules.sampling.conditioning import tokenize_line

        e = engine()
        model = e.models.current or e.models.get()
        db = e.embeddings
        db.load(model)
        lookup = db.lookup_for(model.tokenizer) if model.tokenizer is not None else None
        _, token_count = tokenize_line(model.tokenizer, text, lookup=lookup)
        return token_count, max(75, math.ceil(token_count / 75) * 75)

    def redo_hijack(self, m) -> None:
        """See hijack."""


model_hijack = StableDiffusionModelHijack()

EmbeddingsWithFixes = Unsupported("sd_hijack.EmbeddingsWithFixes", "LDM internals")
apply_optimizations = model_hijack.apply_optimizations


def undo_optimizations() -> None:
    """See apply_optimizations."""


def list_optimizers() -> None:
    """See apply_optimizations."""

"""A1111's `modules.sd_hijack_clip`: its CLIP wrappers. Prompt encoding is the engine's conditioning
(modules/sampling/conditioning.py); these classes stand for LDM internals and fail when used."""
from __future__ import annotations

from modules.a1111.unsupported import unsupported


class PromptChunk:
    def __init__(self):
        self.tokens = []
        self.multipliers = []
        self.fixes = []


class FrozenCLIPEmbedderWithCustomWordsBase:
    def __init__(self, *args, **kwargs):
        unsupported(f"sd_hijack_clip.{type(self).__name__}", "prompts are encoded by the engine's conditioning")()


class FrozenCLIPEmbedderWithCustomWords(FrozenCLIPEmbedderWithCustomWordsBase):
    pass


class FrozenCLIPEmbedderForSDXLWithCustomWords(FrozenCLIPEmbedderWithCustomWordsBase):
    pass


class TextConditionalModel(FrozenCLIPEmbedderWithCustomWordsBase):
    pass

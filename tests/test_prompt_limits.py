"""A prompt longer than `prompt_max_tokens` is refused before the job waits in the queue (UI message, API 422)."""
from __future__ import annotations

import pytest

from modules import prompt_limits
from modules.request_types import RequestError, Txt2ImgRequest


def test_token_counts_are_clip_tokens_and_huge_prompts_are_cheap(monkeypatch):
    assert prompt_limits.count_tokens("a photo of a cat", 3000) == (5, True)
    tokenized = []
    real = prompt_limits._tokenizer()
    monkeypatch.setattr(prompt_limits, "_tokenizer", lambda: lambda text, **kw: tokenized.append(text) or real(
        text, **kw))
    n, exact = prompt_limits.count_tokens("a cat, " * 150_000, 3000)  # about 1 MB
    assert n > 3000 and not exact
    assert all(len(text) < 100_000 for text in tokenized)  # a megabyte is never handed to the tokenizer


def test_a_long_prompt_is_refused_with_the_setting_named(engine):
    engine.settings.set("prompt_max_tokens", 100)
    try:
        waited = []
        engine.queue.turn = lambda: waited.append(True)  # the check must come before the queue
        with pytest.raises(RequestError, match=r"negative_prompt is \d+ tokens long; the limit is 100 "
                                               r"\(setting prompt_max_tokens\)"):
            engine.generate(Txt2ImgRequest(prompt="a cat", negative_prompt="supercalifragilistic " * 60, steps=1))
        with pytest.raises(RequestError, match="prompt is over 100 tokens"):
            engine.generate(Txt2ImgRequest(prompt="x " * 1_000_000, steps=1))
        assert not waited
    finally:
        del engine.queue.turn
        engine.settings.reset("prompt_max_tokens")

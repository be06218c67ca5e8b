"""The longest prompt a job may carry (option `prompt_max_tokens`), checked before the job waits for its turn: a
megabyte of prompt must be a clear 4xx answer, not minutes of the one queue."""
from __future__ import annotations

import functools
import re

from modules.request_types import RequestError

# CLIP's pre-tokenisation: every piece becomes at least one token, so the piece count is a cheap lower bound.
_PIECES = re.compile(r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\w]+|[^\s\w]+", re.IGNORECASE)
_MAX_CHARS_PER_TOKEN = 64  # no CLIP token spans more characters than this


@functools.lru_cache(maxsize=1)
def _tokenizer():
    from modules.models.tokenizer import build_clip_tokenizer

    return build_clip_tokenizer()


def count_tokens(text: str, limit: int) -> tuple[int, bool]:
    """(CLIP tokens in `text`, exact?): counting stops early, with a lower bound above `limit`, once the limit is
    certainly passed (so a huge prompt costs next to nothing)."""
    if len(text) > limit * _MAX_CHARS_PER_TOKEN:
        return len(text) // _MAX_CHARS_PER_TOKEN, False
    pieces = 0
    for _ in _PIECES.finditer(text):
        pieces += 1
        if pieces > limit:
            return pieces, False
    return len(_tokenizer()(text, add_special_tokens=False).input_ids), True


def check(req, limit: int) -> None:
    """RequestError naming the field when a prompt of the request is longer than `limit` tokens."""
    if not limit or limit <= 0:
        return
    for name in ("prompt", "negative_prompt", "hr_prompt", "hr_negative_prompt"):
        text = getattr(req, name, None)
        if not isinstance(text, str) or not text:
            continue
        n, exact = count_tokens(text, limit)
        if n > limit:
            raise RequestError(f"{name} is {'' if exact else 'over '}{n if exact else limit} tokens long; the limit "
                               f"is {limit} (setting prompt_max_tokens)")

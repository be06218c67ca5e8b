"""A1111's prompt comments (its built-in "Comments" script, 1.9+; setting `enable_prompt_comments`, on by default):
`#` to the end of the line is left out of the generation, the infotext and the token counter."""
from __future__ import annotations

import re

SETTING = "enable_prompt_comments"
_WHOLE_LINE = re.compile(r"(^|\n)#[^\n]*(\n|$)")
_REST_OF_LINE = re.compile(r"#[^\n]*(\n|$)")


def strip_comments(text: str) -> str:
    """A1111's two passes: a line that is all comment goes (its line break kept once), then `#…` to a line's end."""
    if "#" not in text:
        return text
    return _REST_OF_LINE.sub("\n", _WHOLE_LINE.sub("\n", text))


def enabled(get_option) -> bool:
    return bool(get_option(SETTING, True))

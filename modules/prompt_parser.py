"""A1111's prompt language: emphasis, prompt editing, alternation, `AND` and `BREAK`.

Function names and results follow A1111's `modules/prompt_parser.py` so that extensions importing them keep working:

- `parse_prompt_attention(text)` → `[[text, weight], ...]` (`(x)` ×1.1, `[x]` ÷1.1, `(x:w)`, escapes, BREAK);
- `get_learned_conditioning_prompt_schedules(prompts, base_steps, hires_steps=None, use_old_scheduling=False)`
  → per prompt `[[end_at_step, text], ...]` for `[from:to:when]` editing and `[a|b]` alternation;
- `get_multicond_prompt_list(prompts)` → the `AND` parts of each prompt with their weights.

Bad syntax never raises: the schedule parser falls back to the prompt as literal text, and the attention parser
treats unmatched brackets as running to the end of the prompt, exactly as A1111 does.
"""
from __future__ import annotations

import re
from typing import Iterable

import lark

from modules import prompt_schedule

# The grammar of scheduling/alternation (emphasis brackets are kept verbatim; the attention parser handles them later,
# per step). `[` ... `]` with a trailing `:NUMBER` is an edit, with `|` an alternation. Schedules are read by
# modules/prompt_schedule.py in linear time; this Earley parser (A1111's `schedule_parser`, which extensions import)
# is the reference the tests compare it with.
_SCHEDULE_GRAMMAR = r"""
!start: (prompt | /[][():]/+)*
prompt: (emphasized | scheduled | alternate | plain | WHITESPACE)*
!emphasized: "(" prompt ")"
        | "(" prompt ":" prompt ")"
        | "[" prompt "]"
scheduled: "[" [prompt ":"] prompt ":" [WHITESPACE] NUMBER [WHITESPACE] "]"
alternate: "[" prompt ("|" [prompt])+ "]"
WHITESPACE: /\s+/
plain: /([^\\\[\]():|]|\\.)+/
%import common.SIGNED_NUMBER -> NUMBER
"""

schedule_parser = lark.Lark(_SCHEDULE_GRAMMAR)


class SdConditioning(list):
    """A list of prompts that also carries what A1111's conditioning wants to know about them (size, negative)."""

    def __init__(self, prompts: Iterable[str] = (), is_negative_prompt: bool = False, width: int | None = None,
                 height: int | None = None, copy_from=None):
        super().__init__(prompts)
        if copy_from is None:
            copy_from = prompts
        self.is_negative_prompt = is_negative_prompt or getattr(copy_from, "is_negative_prompt", False)
        self.width = width or getattr(copy_from, "width", None)
        self.height = height or getattr(copy_from, "height", None)


def get_learned_conditioning_prompt_schedules(prompts, base_steps, hires_steps=None, use_old_scheduling=False):
    """For each prompt, `[[end_at_step, text], ...]`: the text to use up to and including each step.

    >>> g = lambda p: get_learned_conditioning_prompt_schedules([p], 10)[0]
    >>> g("a [b:3]")
    [[3, 'a '], [10, 'a b']]
    """
    if hires_steps is None or use_old_scheduling:
        int_offset, flt_offset, steps = 0, 0.0, base_steps
    else:
        int_offset, flt_offset, steps = base_steps, 1.0, hires_steps

    def when_step(edit) -> int:
        v = float(edit.when)
        if use_old_scheduling:
            v = v * steps if v < 1 else v
        elif "." in edit.when:
            v = (v - flt_offset) * steps
        else:
            v = v - int_offset
        return min(steps, int(v))

    def get_schedule(prompt):
        nodes = prompt_schedule.parse(prompt, schedule_parser)
        if nodes is None:
            return [[steps, prompt]]
        points = {steps}
        for node in prompt_schedule.walk(nodes):
            if isinstance(node, prompt_schedule.Alternation):
                points.update(range(1, steps + 1))
            elif when_step(node) >= 1:
                points.add(when_step(node))
        return [[t, prompt_schedule.text_at(nodes, t, when_step)] for t in sorted(points)]

    promptdict = {prompt: get_schedule(prompt) for prompt in set(prompts)}
    return [promptdict[prompt] for prompt in prompts]


re_AND = re.compile(r"\bAND\b")
re_weight = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


def split_and(prompt: str) -> list[tuple[str, float]]:
    """`'a cat AND a dog:0.5'` → `[('a cat', 1.0), (' a dog', 0.5)]`."""
    out = []
    for subprompt in re_AND.split(prompt):
        match = re_weight.search(subprompt)
        text, weight = match.groups() if match is not None else (subprompt, 1.0)
        out.append((text, float(weight) if weight is not None else 1.0))
    return out


def get_multicond_prompt_list(prompts):
    """(per prompt `[(flat_index, weight), ...]`, the flat list of distinct parts, part → flat index)."""
    res_indexes = []
    prompt_indexes: dict[str, int] = {}
    prompt_flat_list = SdConditioning(prompts)
    prompt_flat_list.clear()
    for prompt in prompts:
        indexes = []
        for text, weight in split_and(prompt):
            index = prompt_indexes.get(text)
            if index is None:
                index = len(prompt_flat_list)
                prompt_flat_list.append(text)
                prompt_indexes[text] = index
            indexes.append((index, weight))
        res_indexes.append(indexes)
    return res_indexes, prompt_flat_list, prompt_indexes


re_attention = re.compile(r"""
\\\(|
\\\)|
\\\[|
\\]|
\\\\|
\\|
\(|
\[|
:\s*([+-]?[.\d]+)\s*\)|
\)|
]|
[^\\()\[\]:]+|
:
""", re.X)

re_break = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_prompt_attention(text: str) -> list[list]:
    """Parse emphasis into `[[text, weight], ...]`; a `BREAK` becomes `["BREAK", -1]`.

    >>> parse_prompt_attention('an (important) word')
    [['an ', 1.0], ['important', 1.1], [' word', 1.0]]
    """
    res: list[list] = []
    round_brackets: list[int] = []
    square_brackets: list[int] = []
    round_bracket_multiplier = 1.1
    square_bracket_multiplier = 1 / 1.1

    def multiply_range(start_position, multiplier):
        for p in range(start_position, len(res)):
            res[p][1] *= multiplier

    for m in re_attention.finditer(text):
        part = m.group(0)
        weight = m.group(1)
        if part.startswith("\\"):
            res.append([part[1:], 1.0])
        elif part == "(":
            round_brackets.append(len(res))
        elif part == "[":
            square_brackets.append(len(res))
        elif weight is not None and round_brackets:
            multiply_range(round_brackets.pop(), float(weight))
        elif part == ")" and round_brackets:
            multiply_range(round_brackets.pop(), round_bracket_multiplier)
        elif part == "]" and square_brackets:
            multiply_range(square_brackets.pop(), square_bracket_multiplier)
        else:
            for i, piece in enumerate(re.split(re_break, part)):
                if i > 0:
                    res.append(["BREAK", -1])
                res.append([piece, 1.0])

    for pos in round_brackets:
        multiply_range(pos, round_bracket_multiplier)
    for pos in square_brackets:
        multiply_range(pos, square_bracket_multiplier)

    if not res:
        res = [["", 1.0]]

    i = 0
    while i + 1 < len(res):  # merge runs of identical weights
        if res[i][1] == res[i + 1][1]:
            res[i][0] += res[i + 1][0]
            res.pop(i + 1)
        else:
            i += 1
    return res


def has_emphasis_syntax(text: str) -> bool:
    return "(" in text or "[" in text


__all__ = ["parse_prompt_attention", "get_learned_conditioning_prompt_schedules", "get_multicond_prompt_list",
           "split_and", "SdConditioning", "schedule_parser", "re_AND", "re_weight", "re_attention", "re_break"]


def __getattr__(name: str):
    """A1111's names beyond ours, for extensions (modules/a1111/prompt_parser_names.py)."""
    from modules import a1111

    return a1111.names_from(__name__)(name)

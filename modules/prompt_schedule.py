"""A linear-time reader of A1111's prompt-editing syntax (`[from:to:when]`, `[to:when]`, `[a|b|c]`), giving the
same results as the grammar in modules/prompt_parser.py (tests compare them on random prompts), without the Earley
parser's super-linear cost on long prompts.

`parse(prompt)` → a list of nodes: text (`str`), `Edit` or `Alternation`; None where the grammar rejects the
prompt (A1111 then uses it literally). Emphasis brackets are kept as text: the attention parser reads them later.

A well-formed prompt is read here alone. One with brackets or colons that form no group at the top level is
ambiguous in the grammar, whose Earley parser then picks readings no simple rule reproduces: such a prompt goes
through the grammar (`from_tree`), unless it is longer than `GRAMMAR_LIMIT` characters (a prompt that long is
read here, so it never stalls the queue).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_PLAIN = re.compile(r"(?:[^\\\[\]():|]|\\.)+", re.S)
_NUMBER_END = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*\]")


@dataclass
class Edit:
    before: list | None
    after: list
    when: str  # the number as written; its step depends on the step count


@dataclass
class Alternation:
    options: list[list]


class _Fail(Exception):
    pass


def _prompt(s: str, i: int) -> tuple[list, int]:
    """The grammar's `prompt` (text and bracket groups) from i; stops before `)`, `]`, `:` or `|`."""
    nodes: list = []
    n = len(s)
    while i < n:
        m = _PLAIN.match(s, i)
        if m:
            nodes.append(m.group(0))
            i = m.end()
            continue
        if s[i] in "([":
            group, i = _group(s, i)  # inside a group a bracket that does not close fails the group
            nodes.extend(group)
            continue
        if s[i] == "\\":  # a backslash at the very end
            raise _Fail
        break
    return nodes, i


def _group(s: str, i: int) -> tuple[list, int]:
    opening = s[i]
    first, k = _prompt(s, i + 1)
    at = s[k] if k < len(s) else ""
    if opening == "(":
        if at == ")":
            return ["(", *first, ")"], k + 1
        if at == ":":
            second, m = _prompt(s, k + 1)
            if m < len(s) and s[m] == ")":
                return ["(", *first, ":", *second, ")"], m + 1
        raise _Fail
    if at == "]":
        return ["[", *first, "]"], k + 1
    if at == "|":
        options = [first]
        while k < len(s) and s[k] == "|":
            option, k = _prompt(s, k + 1)
            options.append(option)
        if k < len(s) and s[k] == "]":
            return [Alternation(options)], k + 1
        raise _Fail
    if at == ":":
        number = _NUMBER_END.match(s, k + 1)
        if number:
            return [Edit(None, first, number.group(1))], number.end()
        second, m = _prompt(s, k + 1)
        if m < len(s) and s[m] == ":":
            number = _NUMBER_END.match(s, m + 1)
            if number:
                return [Edit(first, second, number.group(1))], number.end()
    raise _Fail


GRAMMAR_LIMIT = 4000


def parse(prompt: str, grammar=None) -> list | None:
    """The prompt as nodes; at the top level a bracket that does not form a group, and `:`, are plain text.
    `grammar` (a lark parser of the reference grammar) reads ambiguous prompts up to GRAMMAR_LIMIT characters."""
    nodes, stray = _read(prompt)
    if stray and grammar is not None and len(prompt) <= GRAMMAR_LIMIT:
        import lark

        try:
            return from_tree(grammar.parse(prompt))
        except lark.exceptions.LarkError:
            return None
    return nodes


def from_tree(tree) -> list:
    """Nodes from the reference grammar's parse tree."""
    import lark

    if tree is None:
        return []
    if isinstance(tree, lark.Token):
        return [str(tree)]
    if tree.data == "scheduled":
        before, after, _, when, _ = tree.children
        return [Edit(from_tree(before) if before is not None else None, from_tree(after), str(when))]
    if tree.data == "alternate":
        return [Alternation([from_tree(child) for child in tree.children])]
    return [node for child in tree.children for node in from_tree(child)]


def _read(prompt: str) -> tuple[list | None, bool]:
    """(nodes or None, whether a top-level bracket or colon formed no group)."""
    nodes: list = []
    stray = False
    i, n = 0, len(prompt)
    while i < n:
        m = _PLAIN.match(prompt, i)
        if m:
            nodes.append(m.group(0))
            i = m.end()
            continue
        c = prompt[i]
        if c in "([":
            try:
                group, i = _group(prompt, i)
                nodes.extend(group)
                continue
            except _Fail:
                pass
        if c in "[]():":
            nodes.append(c)
            stray = True
            i += 1
            continue
        return None, stray  # `|` outside brackets, or a trailing backslash: the grammar has no reading
    return nodes, stray


def walk(nodes):
    """Every Edit and Alternation, nested ones included."""
    for node in nodes:
        if isinstance(node, Edit):
            yield node
            yield from walk(node.before or [])
            yield from walk(node.after)
        elif isinstance(node, Alternation):
            yield node
            for option in node.options:
                yield from walk(option)


def text_at(nodes, step: int, when_step) -> str:
    """The prompt's text at `step`; `when_step(edit)` is the last step an Edit shows its `before` part."""
    out = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, Edit):
            out.append(text_at(node.before or [], step, when_step) if step <= when_step(node)
                       else text_at(node.after, step, when_step))
        else:
            out.append(text_at(node.options[(step - 1) % len(node.options)], step, when_step))
    return "".join(out)

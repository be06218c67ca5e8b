"""A1111's prompt language: the doctest vectors from A1111's own prompt_parser, AND, BREAK, hires schedules."""
from __future__ import annotations

import pytest

from modules.prompt_parser import (get_learned_conditioning_prompt_schedules, get_multicond_prompt_list,
                                   parse_prompt_attention)


def g(prompt, steps=10, **kw):
    return get_learned_conditioning_prompt_schedules([prompt], steps, **kw)[0]


@pytest.mark.parametrize("prompt,expected", [
    ("test", [[10, "test"]]),
    ("a [b:3]", [[3, "a "], [10, "a b"]]),
    ("a [[[b]]:2]", [[2, "a "], [10, "a [[b]]"]]),
    ("[(a:2):3]", [[3, ""], [10, "(a:2)"]]),
    ("a [b : c : 1] d", [[1, "a b  d"], [10, "a  c  d"]]),
    ("a[b:[c:d:2]:1]e", [[1, "abe"], [2, "ace"], [10, "ade"]]),
    ("a [unbalanced", [[10, "a [unbalanced"]]),
    ("a [b:.5] c", [[5, "a  c"], [10, "a b c"]]),
    ("a [b::3] c", [[3, "a b c"], [10, "a  c"]]),
])
def test_a1111_schedule_vectors(prompt, expected):
    assert g(prompt) == expected


def test_alternation_every_step():
    sched = g("[fe|]male")
    assert [s for s, _ in sched] == list(range(1, 11))
    assert [t for _, t in sched] == ["female" if s % 2 else "male" for s in range(1, 11)]


def test_three_way_alternation_and_several_prompts():
    a, b = get_learned_conditioning_prompt_schedules(["[a|b|c]", "plain"], 4)
    assert a == [[1, "a"], [2, "b"], [3, "c"], [4, "a"]]
    assert b == [[4, "plain"]]


def test_hires_pass_schedules_as_a1111():
    # hires: integers count on from the first pass, fractions 1.x are fractions of the hires steps
    assert g("a [b:c:15]", 20, hires_steps=10) == [[10, "a c"]]
    assert g("a [b:c:25]", 20, hires_steps=10) == [[5, "a b"], [10, "a c"]]
    assert g("a [b:c:1.5]", 20, hires_steps=10) == [[5, "a b"], [10, "a c"]]
    assert g("a [b:c:0.5]", 20, hires_steps=10) == [[10, "a c"]]
    # first pass: 1.5 of the steps is past the end
    assert g("a [b:c:1.5]", 20) == [[20, "a b"]]
    # old scheduling: fractions below 1 are fractions, everything else a step number
    assert g("a [b:c:0.5]", 20, use_old_scheduling=True) == [[10, "a b"], [20, "a c"]]


@pytest.mark.parametrize("text,expected", [
    ("an (important) word", [["an ", 1.0], ["important", 1.1], [" word", 1.0]]),
    ("(unbalanced", [["unbalanced", 1.1]]),
    ("\\(literal\\]", [["(literal]", 1.0]]),
    ("(unnecessary)(parens)", [["unnecessaryparens", 1.1]]),
    ("normal text", [["normal text", 1.0]]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [["a ", 1.0], ["house", 1.5730000000000004], [" ", 1.1], ["on", 1.0], [" a ", 1.1], ["hill", 0.55],
      [", sun, ", 1.1], ["sky", 1.4641000000000006], [".", 1.1]]),
    ("[x]", [["x", 1 / 1.1]]),
    ("\\\\", [["\\", 1.0]]),
    ("", [["", 1.0]]),
])
def test_parse_prompt_attention(text, expected):
    got = parse_prompt_attention(text)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected])


def test_break_and_break_in_parentheses():
    assert parse_prompt_attention("a BREAK b") == [["a", 1.0], ["BREAK", -1], ["b", 1.0]]
    # A1111 quirk: a BREAK inside parentheses gets a scaled weight and stops acting as a break
    inside = parse_prompt_attention("(a BREAK b)")
    assert ["BREAK", -1] not in inside and any(t == "BREAK" for t, _ in inside)


def test_and_split_with_weights():
    indexes, flat, lookup = get_multicond_prompt_list(["a cat AND a dog:0.5", "a cat"])
    assert list(flat) == ["a cat", " a dog"]
    assert indexes == [[(0, 1.0), (1, 0.5)], [(0, 1.0)]]
    assert lookup == {"a cat": 0, " a dog": 1}
    indexes, flat, _ = get_multicond_prompt_list(["x AND y :-1.5 AND z"])
    assert indexes == [[(0, 1.0), (1, -1.5), (2, 1.0)]] and list(flat) == ["x", " y", " z"]
    # "AND" only as a word
    _, flat, _ = get_multicond_prompt_list(["ANDROID and ANDY"])
    assert list(flat) == ["ANDROID and ANDY"]


@pytest.mark.parametrize("prompt", ["[", "]", "[a:b", "a:b:c]", "[[:]]", "(:)", "[a|", "[:1]", "((", "\\", "[a:b:c:d]"])
def test_bad_syntax_never_raises(prompt):
    sched = g(prompt)
    assert sched[-1][0] == 10 and isinstance(sched[-1][1], str)
    assert isinstance(parse_prompt_attention(prompt), list)


def _schedules_by_grammar(prompt: str, steps: int):
    """The reference: schedules read with the Earley grammar (A1111's way), for comparison with the linear reader."""
    import lark

    from modules.prompt_parser import schedule_parser

    try:
        tree = schedule_parser.parse(prompt)
    except lark.exceptions.LarkError:
        return [[steps, prompt]]
    points = {steps}

    class Collect(lark.Visitor):
        def scheduled(self, t):
            s = t.children[-2]
            t.children[-2] = min(steps, int(float(s) * steps if "." in s else float(s)))
            if t.children[-2] >= 1:
                points.add(t.children[-2])

        def alternate(self, t):
            points.update(range(1, steps + 1))

    Collect().visit(tree)

    def at(step):
        class At(lark.Transformer):
            def scheduled(self, args):
                before, after, _, when, _ = args
                yield before or () if step <= when else after

            def alternate(self, args):
                args = ["" if not a else a for a in args]
                yield args[(step - 1) % len(args)]

            def start(self, args):
                def flat(x):
                    if isinstance(x, str):
                        yield x
                    else:
                        for g in x:
                            yield from flat(g)
                return "".join(flat(args))

            def plain(self, args):
                yield args[0].value

            def __default__(self, data, children, meta):
                for c in children:
                    yield c

        return At().transform(tree)

    return [[t, at(t)] for t in sorted(points)]


class _ParsedOnce:
    """The reference Earley parser, each prompt parsed once: the product (for prompts with stray brackets) and the
    reference transform both ask for the same trees, and Earley parsing is nearly all of this test's time."""

    def __init__(self, parser):
        self.parser, self.trees = parser, {}

    def parse(self, text: str):
        import copy

        import lark

        if text not in self.trees:
            try:
                self.trees[text] = self.parser.parse(text)
            except lark.exceptions.LarkError as e:
                self.trees[text] = e
        tree = self.trees[text]
        if isinstance(tree, Exception):
            raise tree
        return copy.deepcopy(tree)  # the reference transform rewrites the tree it is given


@pytest.mark.slow  # about 12 s
def test_linear_reader_equals_the_grammar(monkeypatch):
    """The linear schedule reader gives exactly what A1111's grammar gives, on random prompts over the syntax's
    characters, so long prompts parse in linear time without changing any result."""
    import random

    from modules import prompt_parser as pp

    parsed = _ParsedOnce(pp.schedule_parser)
    monkeypatch.setattr(pp, "schedule_parser", parsed)

    rng = random.Random(7)
    alphabet = list("ab c[](): |\\,.") + ["0.5", "3", "1", " 2 ", "-1", "1e1", "AND", "BREAK", "[a:b:2]", "[x|y]",
                                          "(z:1.2)", "[[", "]]", "[:3]", "[a::4]", "[|]"]
    prompts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14))) for _ in range(2000)]
    mismatches = []
    for p in prompts:
        ours, reference = pp.get_learned_conditioning_prompt_schedules([p], 10)[0], _schedules_by_grammar(p, 10)
        if ours != reference:
            mismatches.append((p, ours, reference))
        parsed.trees.clear()  # a growing cache of trees made each of the collector's full passes longer
    assert not mismatches, mismatches[:5]


@pytest.mark.slow  # a second or more of parity/size checks: out of the -m "not slow" loop
def test_a_200_kb_prompt_parses_in_linear_time():
    """Ten times the text takes about ten times as long, not a hundred (a quadratic reader took minutes on a
    200 KB prompt). Compared as a ratio of best-of-5 times taken in alternation, each the thread's own CPU time
    (a wall clock counts the time a busy machine gives other processes: once 36× in a full run, the reader itself
    linear), with the cyclic collector off while timing (its passes scale with the test process's heap)."""
    import gc
    import time

    from modules import prompt_parser as pp

    unit = "a (red:1.2) [cat|dog] [snow:rain:5], \\(escaped\\) plain words, "
    prompts = {size: (unit * (size // len(unit) + 1))[:size] for size in (20_000, 200_000)}
    best = dict.fromkeys(prompts, float("inf"))
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(5):
            for size, prompt in prompts.items():
                started = time.thread_time()
                schedule = pp.get_learned_conditioning_prompt_schedules([prompt], 20)[0]
                attention = pp.parse_prompt_attention(schedule[-1][1])
                best[size] = min(best[size], time.thread_time() - started)
                assert len(schedule) == 20 and attention  # alternation changes the text at every step
                del schedule, attention
                gc.collect()  # between timings, not inside them
    finally:
        if was_enabled:
            gc.enable()

    small, large = best[20_000], best[200_000]
    assert large < 30 * small, f"20 KB {small:.3f} s, 200 KB {large:.3f} s"

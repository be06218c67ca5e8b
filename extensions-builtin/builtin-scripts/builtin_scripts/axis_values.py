"""A1111's X/Y/Z plot value syntax: comma lists (CSV quoting allowed) with integer and float ranges.

`1-5` → 1, 2, 3, 4, 5; `1-10 (+3)` → 1, 4, 7, 10; `10-1 (-3)` counts down; `1-10 [4]` → 4 values evenly spaced
from 1 to 10 (rounded for integers). The same forms work for floats: `0.5-1 (+0.25)`, `0-1 [5]`."""
from __future__ import annotations

import csv
import io
import re

import numpy as np

_NUMBER = r"[+-]?\s*\d+(?:\.\d*)?"
RANGE_STEP = re.compile(rf"^\s*({_NUMBER})\s*-\s*({_NUMBER})\s*(?:\(\s*({_NUMBER})\s*\))?\s*$")
RANGE_COUNT = re.compile(rf"^\s*({_NUMBER})\s*-\s*({_NUMBER})\s*\[\s*(\d+)\s*\]\s*$")


class AxisValueError(ValueError):
    """A value could not be read for an axis; the message names the axis and the value."""


def split_values(text: str) -> list[str]:
    """Comma-separated items, CSV rules (so `"a, b", c` is two items); blanks dropped."""
    text = str(text or "")
    rows = list(csv.reader(io.StringIO(text), skipinitialspace=True)) if text.strip() else []
    return [item.strip() for row in rows for item in row if item.strip()]


def _num(text: str, kind: type) -> float:
    return kind(float(text.replace(" ", ""))) if kind is int and "." in text else kind(text.replace(" ", ""))


def expand_numbers(items: list[str], kind: type, label: str) -> list:
    """Each item as a number of `kind`, ranges expanded."""
    out: list = []
    for item in items:
        counted = RANGE_COUNT.match(item)
        stepped = RANGE_STEP.match(item) if not counted else None
        try:
            if counted:
                start, end, count = _num(counted[1], float), _num(counted[2], float), int(counted[3])
                values = np.linspace(start, end, count)
                out += [int(round(v)) for v in values] if kind is int else [float(v) for v in values]
            elif stepped:
                start, end = _num(stepped[1], kind), _num(stepped[2], kind)
                step = _num(stepped[3], kind) if stepped[3] else (1 if end >= start else -1)
                if step == 0 or (end - start) * step < 0:
                    raise AxisValueError(f"{label}: the step of {item!r} never reaches the end")
                count = int(np.floor((end - start) / step + 1e-9)) + 1
                out += [kind(start + i * step) for i in range(count)]
            else:
                out.append(_num(item, kind))
        except ValueError as e:
            if isinstance(e, AxisValueError):
                raise
            raise AxisValueError(f"{label}: {item!r} is not a {'whole number' if kind is int else 'number'} "
                                 f"or range") from None
    return [round(v, 8) if kind is float else v for v in out]


def parse_values(text: str, kind: type, label: str) -> list:
    """The values of one axis from its text field."""
    items = split_values(text)
    return expand_numbers(items, kind, label) if kind in (int, float) else items

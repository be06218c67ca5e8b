"""Small helpers the transformer key converters and detectors share. Imports no torch: the checkpoint list's
header checks use `Shape` before the server answers (launch.py's no-checkpoint hint), and torch takes seconds."""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    import torch


def block_ids(sd: Mapping, prefix: str, infix: str = "") -> list[int]:
    """The N of every `prefix<N>.` key in `sd` (only keys containing `infix`, when given), sorted."""
    found = set()
    for key in sd:
        if key.startswith(prefix) and infix in key:
            head = key[len(prefix):].split(".", 1)[0]
            if head.isdigit():
                found.add(int(head))
    return sorted(found)


def swap_halves(t: torch.Tensor) -> torch.Tensor:
    """(shift, scale) ↔ (scale, shift): BFL/Stability and diffusers store a final modulation in opposite orders."""
    import torch

    first, second = t.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


class Shape:
    """A tensor's shape alone, read from a file's header: what detection needs without loading any weights."""

    def __init__(self, shape):
        self.shape = tuple(shape)

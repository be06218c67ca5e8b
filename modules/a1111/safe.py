"""A1111's `modules.safe`: its restricted unpickler. `load` here is torch's weights-only loading (the same
guarantee: no code from the file runs); `unsafe_torch_load` is torch.load as extensions expect to find it."""
from __future__ import annotations

import torch

unsafe_torch_load = torch.load


def load(filename, *args, **kwargs):
    kwargs["weights_only"] = True
    return torch.load(filename, *args, **kwargs)


def load_with_extra(filename, extra_handler=None, *args, **kwargs):
    return load(filename, *args, **kwargs)


class Extra:
    """A1111's context manager for extra allowed globals; weights-only loading needs none."""

    def __init__(self, handler):
        self.handler = handler

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

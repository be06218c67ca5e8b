"""A1111's `modules.patches`: monkey-patching with bookkeeping, so an extension can undo exactly its own patch."""
from __future__ import annotations

from collections import defaultdict

originals: defaultdict = defaultdict(dict)


def patch(key, obj, field, replacement):
    """Replace `obj.field` with `replacement` and remember the original under `key`; returns the original.
    Patching the same field twice under one key is an error (as in A1111)."""
    patch_key = (obj, field)
    if patch_key in originals[key]:
        raise RuntimeError(f"patch for {field} is already applied")
    original = getattr(obj, field)
    originals[key][patch_key] = original
    setattr(obj, field, replacement)
    return original


def undo(key, obj, field):
    """Restore what `patch(key, obj, field, …)` replaced; returns the original, or None if nothing was patched."""
    patch_key = (obj, field)
    if patch_key not in originals[key]:
        return None
    original = originals[key].pop(patch_key)
    setattr(obj, field, original)
    return original


def original(key, obj, field):
    return originals[key].get((obj, field), None)

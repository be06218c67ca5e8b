"""The state a run needs to continue where it stopped: trained tensors, optimiser state, step, losses, RNG states.

Kept in the run's log folder (not beside the output, where `.pt` files would be listed as LoRAs/embeddings) and
read back with `torch.load(weights_only=True)`: plain tensors and numbers only.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from modules import fileio
from modules.training.common import TrainingError

FILE_NAME = "resume.pt"


def save_state(path: Path, *, step: int, tensors: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
               losses: list[float], generator: torch.Generator, rng: random.Random, signature: dict[str, Any]) -> Path:
    state = {
        "step": step,
        "tensors": {k: v.detach().to("cpu", torch.float32).clone() for k, v in tensors.items()},
        "optimizer": optimizer.state_dict(),
        "losses": list(losses),
        "generator": generator.get_state(),
        "rng": rng.getstate(),
        "signature": signature,
    }
    with fileio.atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_state(path: Path, signature: dict[str, Any]) -> dict[str, Any] | None:
    """The saved state, or None when there is none; a state from different settings is an error saying so."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a damaged state file is reported, not fatal to anything else
        raise TrainingError(f"cannot read the saved training state {path}: {e}; delete it or turn resume off") \
            from None
    saved = state.get("signature", {})
    different = sorted(k for k in signature if saved.get(k) != signature[k])
    if different:
        details = ", ".join(f"{k}: saved {saved.get(k)!r}, now {signature[k]!r}" for k in different)
        raise TrainingError(f"the saved state in {path} was made with other settings ({details}); use the same "
                            "settings, another output name, or turn resume off")
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator, rng: random.Random) -> None:
    generator.set_state(state["generator"])
    version, internal, gauss = state["rng"]
    rng.setstate((version, tuple(internal), gauss))

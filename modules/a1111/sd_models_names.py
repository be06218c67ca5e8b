"""A1111's `modules.sd_models` names beyond the list/selection ones in modules/sd_models.py."""
from __future__ import annotations

import threading

from modules.a1111._engine import engine

__all__ = ["model_data", "load_model", "model_hash", "read_metadata_from_safetensors", "read_state_dict",
           "get_checkpoint_state_dict", "unload_model_weights", "send_model_to_cpu", "send_model_to_device",
           "send_model_to_trash", "reuse_model_from_already_loaded", "CheckpointInfo", "model_path",
           "checkpoints_loaded", "apply_token_merging", "get_empty_cond", "find_checkpoint_config"]


def read_metadata_from_safetensors(filename) -> dict:
    """The `__metadata__` of a .safetensors header; values that hold JSON are decoded (as A1111 does)."""
    from safetensors import safe_open

    from modules.models.merge import parse_metadata

    with safe_open(str(filename), framework="pt") as f:
        return parse_metadata(f.metadata() or {})


def read_state_dict(checkpoint_file, print_global_state=False, map_location=None):
    """The raw state dict of a checkpoint file (safetensors, or a .ckpt read weights-only)."""
    import torch

    path = str(checkpoint_file)
    if path.lower().endswith(".safetensors"):
        import safetensors.torch

        return safetensors.torch.load_file(path, device=map_location or "cpu")
    data = torch.load(path, map_location=map_location or "cpu", weights_only=True)
    return data.get("state_dict", data) if isinstance(data, dict) else data


def get_checkpoint_state_dict(checkpoint_info, timer=None):
    return read_state_dict(checkpoint_info.filename)


def model_hash(filename) -> str:
    """The legacy 8-hex model hash."""
    from modules.hashes import model_hash_legacy

    return model_hash_legacy(filename)


def load_model(checkpoint_info=None, already_loaded_state_dict=None):
    """Load (or switch to) a checkpoint and return `shared.sd_model`'s view of it."""
    from modules.a1111.sd_model import view

    e = engine()
    title = getattr(checkpoint_info, "title", None)
    return view(e.models.get(title) if title else e.models.get())


def reuse_model_from_already_loaded(sd_model, checkpoint_info, timer):
    return load_model(checkpoint_info)


def unload_model_weights(sd_model=None, info=None):
    engine().models.unload()


def send_model_to_cpu(m):
    from modules.a1111.lowvram import send_everything_to_cpu

    send_everything_to_cpu()


def send_model_to_device(m):
    """Moved back on the next job (the engine checks placement before use)."""


def send_model_to_trash(m):
    engine().models.unload()


def apply_token_merging(sd_model, token_merging_ratio):
    """Merge tokens in the model's UNet at that ratio, 0 for none (modules/token_merging.py)."""
    from modules import token_merging

    unet = getattr(sd_model, "unet", None)
    if unet is None and engine().models.current is not None:
        unet = engine().models.current.unet
    if unet is not None:
        token_merging.apply(unet, float(token_merging_ratio or 0))


def find_checkpoint_config(state_dict, info):
    return None


def get_empty_cond(sd_model):
    from modules.a1111.prompt_parser_names import get_learned_conditioning

    return get_learned_conditioning(sd_model, [""], 1)[0][0].cond


class _ModelData:
    """A1111's `model_data`: the loaded model(s) and a lock."""

    def __init__(self):
        self.sd_dict = None
        self.was_loaded_at_least_once = True
        self.lock = threading.Lock()

    @property
    def sd_model(self):
        return self.get_sd_model()

    @property
    def loaded_sd_models(self):
        from modules.a1111.sd_model import view

        return [view(m) for m in engine().models.loaded]

    def get_sd_model(self):
        from modules.a1111.sd_model import view

        e = engine()
        return view(e.models.current or e.models.get())

    def set_sd_model(self, v, already_loaded=False):
        """The engine decides what is loaded; load a checkpoint with reload_model_weights instead."""


model_data = _ModelData()


def __getattr__(name):
    if name == "CheckpointInfo":
        from modules.models.registry import CheckpointInfo

        return CheckpointInfo
    if name == "model_path":
        return str(engine().paths.ckpt_dirs[0])
    if name == "checkpoints_loaded":
        return {}
    raise AttributeError(name)

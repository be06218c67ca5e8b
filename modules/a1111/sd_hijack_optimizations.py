"""A1111's `modules.sd_hijack_optimizations`: attention helpers extensions query (free VRAM, xformers op)."""
from __future__ import annotations

import psutil
import torch

from modules.a1111.unsupported import unsupported


def get_available_vram() -> int:
    """Free memory in bytes on the compute device (CUDA: free + reclaimable cache; CPU: free RAM)."""
    if torch.cuda.is_available():
        stats = torch.cuda.memory_stats()
        free_cuda, _ = torch.cuda.mem_get_info()
        reclaimable = stats.get("reserved_bytes.all.current", 0) - stats.get("active_bytes.all.current", 0)
        return int(free_cuda + reclaimable)
    return int(psutil.virtual_memory().available)


def get_xformers_flash_attention_op(q, k, v):
    """A1111 picks an xformers op; None lets xformers choose (and we use SDPA unless --xformers)."""
    return None


class SdOptimization:
    name = None
    label = None
    cmd_opt = None
    priority = 0

    def title(self):
        return self.name if self.label is None else f"{self.name} - {self.label}"

    def is_available(self):
        return True

    def apply(self):
        pass

    def undo(self):
        pass


list_optimizers = unsupported("sd_hijack_optimizations.list_optimizers", "attention is chosen by the engine")
split_cross_attention_forward = unsupported("sd_hijack_optimizations.split_cross_attention_forward", "LDM internals")
xformers_attention_forward = unsupported("sd_hijack_optimizations.xformers_attention_forward", "LDM internals")
scaled_dot_product_attention_forward = unsupported("sd_hijack_optimizations.scaled_dot_product_attention_forward",
                                                   "LDM internals")

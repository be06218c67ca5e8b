"""Flux/SD3 LoRAs written against the release layout (BFL's or Stability's module names), onto our diffusers model.

Kohya (`lora_unet_double_blocks_0_img_attn_qkv`), ComfyUI/BFL dotted (`diffusion_model.double_blocks.0.img_attn.qkv`)
and XLabs (`double_blocks.0.processor.qkv_lora1`) files name fused modules: one q/k/v matrix, Flux's single-block
`linear1` (q, k, v and the MLP input), modulations whose halves diffusers stores swapped. Each file module's ΔW is
computed at the fused shape, then cut and reordered by the same key converters that load checkpoints, so every
diffusers module gets exactly its rows. Diffusers/PEFT LoRAs (`transformer.transformer_blocks.0.attn.to_q`) need
none of this: `lora.py` finds their modules directly.
"""
from __future__ import annotations

import re

import torch

_XLABS = re.compile(r"^double_blocks\.(\d+)\.processor\.(qkv|proj)_lora([12])$")
_DOTTED_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.", "")


class NativeLayout:
    """The release-layout module names of a loaded Flux/SD3 transformer and how their deltas map onto it."""

    def __init__(self, family: str, transformer: torch.nn.Module):
        from modules.models.flux_keys import diffusers_to_bfl
        from modules.models.sd3_keys import diffusers_to_sai

        self.family = family
        meta = {k: torch.empty(tuple(getattr(v, "quant_shape", v.shape)), device="meta")
                for k, v in transformer.state_dict().items()}
        native = diffusers_to_bfl(meta) if family == "flux" else diffusers_to_sai(meta)
        self.shapes = {k[:-len(".weight")]: v.shape for k, v in native.items() if k.endswith(".weight")}
        self.underscored = {k.replace(".", "_"): k for k in self.shapes}
        self.quantized = any(hasattr(v, "quant_type") for v in transformer.state_dict().values())  # GGUF
        cfg = transformer.config
        self.hidden = int(cfg.num_attention_heads * cfg.attention_head_dim)
        ends = [i for i in range(int(cfg.num_layers)) if f"transformer_blocks.{i}.attn.to_add_out.weight" not in meta]
        self.last_block = ends[0] if ends else None

    def resolve(self, name: str) -> str | None:
        """The release-layout module a LoRA group name targets, or None."""
        if name.startswith("lora_unet_"):
            return self.underscored.get(name[len("lora_unet_"):])
        m = _XLABS.match(name)
        if m and self.family == "flux":
            stream = "img" if m.group(3) == "1" else "txt"
            return f"double_blocks.{m.group(1)}.{stream}_attn.{m.group(2)}"
        for prefix in _DOTTED_PREFIXES:
            if name.startswith(prefix) and name[len(prefix):] in self.shapes:
                return name[len(prefix):]
        return None

    def split(self, deltas: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{release module: ΔW} → {diffusers module: ΔW}: fused rows cut apart, swapped halves put back."""
        from modules.models.flux_keys import bfl_to_diffusers
        from modules.models.sd3_keys import sai_to_diffusers

        sd = {name + ".weight": delta for name, delta in deltas.items()}
        if self.family == "flux":
            out = bfl_to_diffusers(sd, hidden=self.hidden)
        else:
            out = sai_to_diffusers(sd, hidden=self.hidden, last_block=self.last_block)
        return {k[:-len(".weight")]: v for k, v in out.items()}


def native_layout(model) -> NativeLayout | None:
    if not getattr(model, "is_flow", False):
        return None
    return NativeLayout(model.family, model.unet)

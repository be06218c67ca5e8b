"""Weights kept in less memory than the compute dtype, for Flux/SD3: fp8 (plain and per-tensor scaled), GGUF,
and 16-bit weights of a large model computed in fp32. Each layer's weights are upcast only while it computes
(diffusers' layerwise casting, diffusers' GGUF layers, `ScaledFP8Linear`)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from modules.models.key_layout import Shape

SCALED_FP8_KEYS = (".scale_weight", ".scale_input", "scaled_fp8")  # ComfyUI's per-tensor-scaled fp8 files
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)



def read_gguf(path: Path) -> dict:
    """A GGUF transformer's tensors: quantized ones as diffusers' GGUFParameter (kept quantized in memory and
    dequantized per layer while computing), F16/F32 ones as plain tensors."""
    from diffusers.models.model_loading_utils import load_gguf_checkpoint

    from modules.models.loader import ModelLoadError

    try:
        return load_gguf_checkpoint(str(path))
    except ImportError:
        raise ModelLoadError(f"{path.name}: reading GGUF files needs the gguf package (pip install gguf)") from None
    except (ValueError, OSError, KeyError, IndexError) as e:
        raise ModelLoadError(f"{path.name}: not a readable GGUF file ({str(e).splitlines()[0][:300]})") from None


def gguf_header_shapes(path: Path) -> dict:
    """key → logical shape of every tensor in a GGUF file, from its header (memory-mapped, nothing dequantized)."""
    from gguf import GGUFReader

    return {t.name: Shape(tuple(int(d) for d in reversed(t.shape))) for t in GGUFReader(str(path)).tensors}


def logical_shapes(sd: Mapping) -> dict:
    """Shapes as the model sees them (a quantized tensor's shape counts bytes in its last dimension)."""
    return {k: Shape(getattr(v, "quant_shape", v.shape)) for k, v in sd.items()}


def is_quantized(sd: Mapping) -> bool:
    return any(hasattr(v, "quant_type") for v in sd.values())


# A 16-bit file of a model this large stays 16-bit when computing in fp32 (the CPU's dtype): a 12B Flux is never
# materialised in fp32 (48 GB); each layer is upcast while it computes.
LARGE_MODEL_PARAMS = 1_000_000_000


def _weights_dtype(sd: Mapping[str, torch.Tensor]) -> torch.dtype | None:
    counts: dict[torch.dtype, int] = {}
    for k, v in sd.items():
        if k.endswith(".weight") and v.ndim == 2:
            counts[v.dtype] = counts.get(v.dtype, 0) + 1
    return max(counts, key=counts.get, default=None)


def fp8_storage(sd: Mapping[str, torch.Tensor]) -> torch.dtype | None:
    """The fp8 dtype most of the transformer's weight matrices are stored in, or None."""
    best = _weights_dtype(sd)
    return best if best in FP8_DTYPES else None


def storage_dtype(sd: Mapping[str, torch.Tensor], dtype: torch.dtype) -> torch.dtype | None:
    """The dtype a model's weights stay in when it is not the compute dtype: fp8 always; fp16/bf16 for a large
    model computed in fp32."""
    fp8 = fp8_storage(sd)
    if fp8 is not None or dtype != torch.float32:
        return fp8
    best = _weights_dtype(sd)
    if best in (torch.float16, torch.bfloat16) and sum(v.numel() for v in sd.values()) >= LARGE_MODEL_PARAMS:
        return best
    return None


class ScaledFP8Linear(torch.nn.Linear):
    """A Linear whose weight stays fp8 in memory and is multiplied by its per-tensor scale while computing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.to(x.dtype) * self.scale_weight.to(x.dtype)
        bias = self.bias.to(x.dtype) if self.bias is not None else None
        return torch.nn.functional.linear(x, weight, bias)


def use_scales(model: torch.nn.Module, scales: Mapping[str, torch.Tensor], dtype: torch.dtype) -> None:
    """Every fp8 Linear computes through ScaledFP8Linear (scale 1 where the file has none); other fp8 tensors
    (norm scales) are upcast once."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module.weight.dtype in FP8_DTYPES:
            module.__class__ = ScaledFP8Linear
            module.register_buffer("scale_weight", scales.get(name, torch.tensor(1.0)).to(torch.float32))
            if module.bias is not None and module.bias.dtype in FP8_DTYPES:
                module.bias = torch.nn.Parameter(module.bias.to(dtype), requires_grad=False)
        elif not isinstance(module, ScaledFP8Linear):
            for pname, param in module.named_parameters(recurse=False):
                if param.dtype in FP8_DTYPES:
                    setattr(module, pname, torch.nn.Parameter(param.to(dtype), requires_grad=False))
    model.storage_dtype = "scaled fp8"


def keep_storage(model: torch.nn.Module, storage: torch.dtype | None, dtype: torch.dtype) -> torch.nn.Module:
    """Leave the weights in `storage` (fp8, or 16-bit for a large model on fp32) and compute each layer in `dtype`
    (diffusers' layerwise casting hooks); the few layers it keeps in full precision (norms, embeddings) are upcast
    once."""
    if storage is None or storage == dtype:
        return model
    if hasattr(model, "enable_layerwise_casting"):  # a diffusers model knows which of its layers to skip
        model.enable_layerwise_casting(storage_dtype=storage, compute_dtype=dtype)
    else:  # T5: its embeddings, layer norms and `wo` (T5 casts its input to wo's dtype) in full precision
        from diffusers.hooks import apply_layerwise_casting

        apply_layerwise_casting(model, storage_dtype=storage, compute_dtype=dtype,
                                skip_modules_pattern=("embed", "shared", "norm", "relative_attention_bias", r"\.wo$"))
    model.storage_dtype = storage
    for module in model.modules():
        if not hasattr(module, "_diffusers_hook"):
            for pname, param in module.named_parameters(recurse=False):
                if param.dtype == storage:
                    setattr(module, pname, torch.nn.Parameter(param.to(dtype), requires_grad=False))
    return model


def assign_quantized(model: torch.nn.Module, sd: Mapping, name: str, dtype: torch.dtype) -> None:
    """Put every tensor in place as it is (load_state_dict would refuse a quantized tensor's byte shape); plain
    floating tensors in the compute dtype."""
    from modules.models.loader import ModelLoadError

    expected = list(model.state_dict().keys())
    missing = [k for k in expected if k not in sd]
    if missing:
        raise ModelLoadError(f"{name}: the transformer is missing {len(missing)} tensors (e.g. {missing[0]})")
    for key in expected:
        owner, _, attr = key.rpartition(".")
        module = model.get_submodule(owner) if owner else model
        value = sd[key]
        if not hasattr(value, "quant_type"):
            value = value.to(dtype) if value.is_floating_point() else value
            if attr in module._parameters:
                value = torch.nn.Parameter(value, requires_grad=False)
        (module._parameters if attr in module._parameters else module._buffers)[attr] = value


# "Diffusion in Low Bits" (Forge's setting `forge_unet_storage_dtype`): weights kept in fp8 (or 16 bits, where the
# model computes in fp32: the CPU, --no-half), computed in the model's dtype layer by layer. "Automatic" keeps each
# file as it is stored (fp16, fp8, GGUF quantized as stored).
LOW_BITS = {"Automatic": None, "float16": torch.float16, "bfloat16": torch.bfloat16,
            "float8-e4m3fn": torch.float8_e4m3fn, "float8-e5m2": torch.float8_e5m2}


def apply_low_bits(model, choice: str, text_encoders: bool = False) -> None:
    """Keep the denoiser's weights (and, if asked, the text encoders') in the chosen fp8 dtype: about half the
    memory of fp16, a quarter of fp32. Parts already stored in low bits (fp8/GGUF files) stay as they are."""
    storage = LOW_BITS.get(choice)
    if storage is None:
        return
    names = ["unet"] + (["text_encoder", "text_encoder_2", "text_encoder_3"] if text_encoders else [])
    for name in names:
        part = getattr(model, name, None)
        if part is None or getattr(part, "storage_dtype", None) is not None:
            continue
        if any(type(p).__name__ == "GGUFParameter" for p in part.parameters()):
            continue
        if storage.itemsize >= model.dtype.itemsize:  # 16 bits for a model computing in 16 bits: nothing saved
            continue
        keep_storage(part, storage, model.dtype)

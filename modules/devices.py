"""Pick the compute device and precisions from A1111's flags (GPU with fp16 when there is one, CPU fp32 otherwise)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DeviceConfig:
    device: torch.device
    dtype: torch.dtype
    vae_dtype: torch.dtype
    attention: str = "sdpa"  # "sdpa" (PyTorch scaled_dot_product_attention), "xformers" or "sliced" (low memory)
    channels_last: bool = False  # --opt-channelslast: the UNet's convolutions in channels-last memory format
    upcast_sampling: bool = False  # --upcast-sampling: 16-bit weights, the sampler's latents and CFG in fp32
    cpu_modules: tuple[str, ...] = ()  # --use-cpu: the parts A1111 names that run on the CPU (esrgan, gfpgan, all…)

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"


def from_flags(
    use_cpu: list[str] | None = None,
    no_half: bool = False,
    no_half_vae: bool = False,
    precision: str | None = None,
    xformers: bool = False,
    split_attention: bool = False,
    channels_last: bool = False,
    sdp_no_mem: bool = False,
    device_id: str | None = None,
    upcast_sampling: bool = False,
) -> DeviceConfig:
    """fp16 only on CUDA: half precision on CPU is slow and loses accuracy for no memory win that matters. (Where
    the weights live — --medvram, --lowvram — is the memory plan's: modules/memory/.)"""
    cpu_forced = bool(use_cpu) and any(x in ("all", "sd") for x in use_cpu)
    if torch.cuda.is_available() and not cpu_forced:
        device = torch.device(f"cuda:{device_id}" if device_id else "cuda")
        full = no_half or precision == "full"
        dtype = torch.float32 if full else torch.float16
        vae_dtype = torch.float32 if (full or no_half_vae) else dtype
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available() and not cpu_forced:
        device = torch.device("mps")
        dtype = torch.float32 if no_half else torch.float16
        vae_dtype = torch.float32 if (no_half or no_half_vae) else dtype
    else:
        device, dtype, vae_dtype = torch.device("cpu"), torch.float32, torch.float32
    attention = "xformers" if xformers and device.type == "cuda" else ("sliced" if split_attention else "sdpa")
    if sdp_no_mem and device.type == "cuda":  # A1111's --opt-sdp-no-mem-attention: flash/math kernels only
        torch.backends.cuda.enable_mem_efficient_sdp(False)
    return DeviceConfig(device=device, dtype=dtype, vae_dtype=vae_dtype, attention=attention,
                        channels_last=channels_last, upcast_sampling=upcast_sampling and dtype != torch.float32,
                        cpu_modules=tuple(use_cpu or ()))


def for_module(config: DeviceConfig, module: str) -> DeviceConfig:
    """The device config for one of A1111's --use-cpu parts ("esrgan", "swinir", "scunet", "gfpgan",
    "codeformer", "interrogate"): the CPU in fp32 when the flag names it or "all", else the engine's."""
    if module in config.cpu_modules or "all" in config.cpu_modules:
        return cpu()
    return config


def cpu() -> DeviceConfig:
    return DeviceConfig(device=torch.device("cpu"), dtype=torch.float32, vae_dtype=torch.float32)


def torch_gc() -> None:
    """Give freed model memory back (CUDA caching allocator) after a model is dropped."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def __getattr__(name: str):
    """A1111's `devices.device` / `devices.dtype` for extensions: the running engine's choice."""
    if name in ("device", "dtype", "dtype_vae"):
        from modules import shared

        config = shared.engine.device_config if shared.engine is not None else cpu()
        return {"device": config.device, "dtype": config.dtype, "dtype_vae": config.vae_dtype}[name]
    from modules import a1111

    return a1111.names_from(__name__)(name)

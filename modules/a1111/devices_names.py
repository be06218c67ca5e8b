"""A1111's `modules.devices` names beyond ours: autocast, dtype per part, device choice per task."""
from __future__ import annotations

import contextlib

import torch

from modules.a1111._engine import engine_or_none

__all__ = ["autocast", "without_autocast", "cond_cast_unet", "cond_cast_float", "get_optimal_device",
           "get_optimal_device_name", "get_device_for", "get_cuda_device_string", "has_mps", "cpu", "device_unet",
           "device_interrogate", "device_gfpgan", "device_esrgan", "device_codeformer", "dtype_unet", "unet_needs_upcast",
           "fp8", "test_for_nans", "NansException", "randn", "randn_without_seed", "manual_seed", "first_time_calculation",
           "force_fp16", "has_xpu", "is_cuda", "get_autocast_ctx", "torch_npu_set_device"]

cpu = torch.device("cpu")
fp8 = False
force_fp16 = False
unet_needs_upcast = False


def _config():
    e = engine_or_none()
    from modules.devices import cpu as cpu_config

    return e.device_config if e is not None else cpu_config()


def get_cuda_device_string() -> str:
    e = engine_or_none()
    return str(e.device_config.device) if e is not None and e.device_config.is_cuda else "cuda"


def get_optimal_device_name() -> str:
    return str(_config().device)


def get_optimal_device() -> torch.device:
    return _config().device


def get_device_for(task: str) -> torch.device:
    """The engine's device, or the CPU for tasks named in --use-cpu (A1111's rule)."""
    from modules import shared

    use_cpu = getattr(shared.cmd_opts, "use_cpu", None) or []
    return cpu if ("all" in use_cpu or task in use_cpu) else get_optimal_device()


def has_mps() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def has_xpu() -> bool:
    return hasattr(torch, "xpu") and torch.xpu.is_available()


def is_cuda() -> bool:
    return _config().is_cuda


def torch_npu_set_device() -> None:
    """No NPU support."""


def autocast(disable: bool = False):
    """torch.autocast in the model's half dtype on CUDA; a no-op on CPU, in full precision or when disabled."""
    config = _config()
    if disable or config.dtype == torch.float32 or config.device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=config.dtype)


def get_autocast_ctx(device, dtype):
    return autocast()


def without_autocast(disable: bool = False):
    if disable or not torch.is_autocast_enabled():
        return contextlib.nullcontext()
    return torch.autocast("cuda", enabled=False)


def cond_cast_unet(x):
    return x.to(_config().dtype) if unet_needs_upcast else x


def cond_cast_float(x):
    return x.float() if unet_needs_upcast else x


class NansException(Exception):
    pass


def test_for_nans(x, where: str) -> None:
    if torch.isnan(x[(0,) * x.dim()]).item() if x.numel() else False:
        raise NansException(f"A tensor with NaNs was produced in {where}.")


def manual_seed(seed) -> None:
    torch.manual_seed(seed)


def randn(seed, shape, generator=None):
    from modules import rng

    return rng.randn(rng.create_generator(int(seed), "CPU"), shape).to(get_optimal_device())


def randn_without_seed(shape, generator=None):
    return torch.randn(shape, generator=generator).to(get_optimal_device())


def first_time_calculation() -> None:
    """A1111 warms up cuDNN here; our first job does that."""


def __getattr__(name):
    config = _config()
    if name in ("device_unet", "device_interrogate", "device_gfpgan", "device_esrgan", "device_codeformer"):
        return get_device_for(name.split("_", 1)[1].replace("unet", "sd"))
    if name == "dtype_unet":
        return config.dtype
    raise AttributeError(name)

"""What a user pastes into a bug report: versions, the device and its memory, the flags (logins hidden), the
extensions, where the data lives (A1111's own `modules.sysinfo` name is its compatibility shim's). `launch.py --version` prints the first line; `--dump-sysinfo` (A1111's flag)
writes all of it to a file and exits; `GET /sdapi/v1/system-info` (and A1111's `/internal/sysinfo`) answers it."""
from __future__ import annotations

import importlib.metadata
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

from modules.version import VERSION

SECRET_FLAGS = ("api_auth", "gradio_auth", "auth")  # their values are logins
PACKAGES = ("torch", "torchvision", "diffusers", "transformers", "safetensors", "gradio", "fastapi", "numpy",
            "Pillow", "accelerate", "xformers", "spandrel", "controlnet_aux", "gguf", "ray")


def version_line() -> str:
    """`v0.1.0 (commit abc1234) · Python 3.11.7 · torch 2.14.1+cu130`: what `--version` prints."""
    from modules.launch_utils import commit_hash

    commit = commit_hash()
    parts = [VERSION + (f" (commit {commit[:7]})" if commit and commit != "<none>" else ""),
             f"Python {platform.python_version()}"]
    torch_version = _version("torch")
    if torch_version:
        parts.append(f"torch {torch_version}")
    return " · ".join(parts)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def flags(ns) -> dict[str, Any]:
    out = {}
    for name, value in sorted(vars(ns).items()):
        if name in SECRET_FLAGS and value:
            value = "<hidden>"
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            value = str(value)
        out[name] = value
    return out


def device() -> dict[str, Any]:
    """The accelerator torch sees (CUDA devices with their memory, Apple's MPS), else the CPU."""
    try:
        import torch
    except ImportError:
        return {"torch": None}
    out: dict[str, Any] = {"cuda_available": torch.cuda.is_available(), "cuda": torch.version.cuda,
                           "cpu_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        gpus = []
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            free, total = torch.cuda.mem_get_info(i)
            gpus.append({"index": i, "name": props.name, "capability": f"{props.major}.{props.minor}",
                         "memory_total_mib": total >> 20, "memory_free_mib": free >> 20})
        out["gpus"] = gpus
    mps = getattr(torch.backends, "mps", None)
    out["mps_available"] = bool(mps is not None and mps.is_available())
    return out


def collect(ns=None, engine=None) -> dict[str, Any]:
    """Everything, as one JSON-able dict."""
    from modules.launch_utils import commit_hash

    info: dict[str, Any] = {
        "version": VERSION, "commit": commit_hash(), "time": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "python": sys.version.split()[0], "platform": platform.platform(), "machine": platform.machine(),
        "packages": {name: _version(name) for name in PACKAGES},
        "device": device(),
    }
    try:
        import psutil

        memory = psutil.virtual_memory()
        info["ram_total_mib"], info["ram_available_mib"] = memory.total >> 20, memory.available >> 20
    except ImportError:
        pass
    if ns is not None:
        info["flags"] = flags(ns)
    if engine is not None:
        info["data_dir"] = str(engine.paths.data_dir)
        info["engine_device"] = str(engine.device_config.device)
        current = engine.models.current
        info["loaded_model"] = current.title if current is not None else None
        info["memory_mode"] = engine.memory.summary() if engine.memory is not None else ""
        info["extensions"] = _extensions(engine)
    return info


def _extensions(engine) -> list[dict[str, Any]]:
    from modules import extensions

    try:
        found = extensions.discover_configured(engine.paths, engine.settings)
    except Exception as e:  # noqa: BLE001 - a broken extension folder must not hide the rest of the report
        return [{"error": str(e)}]
    return [{"name": e.name, "enabled": e.enabled, "builtin": e.is_builtin, "remote": e.remote,
             "commit": e.commit_hash} for e in found]


def dump(path: Path, ns=None, engine=None) -> Path:
    path = Path(path)
    path.write_text(json.dumps(collect(ns, engine), indent=2, default=str), encoding="utf-8")
    return path

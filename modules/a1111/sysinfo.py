"""A1111's `modules.sysinfo`: diagnostics users paste into bug reports."""
from __future__ import annotations

import json
import platform
import sys


def get_dict() -> dict:
    import torch

    from modules.a1111._engine import engine_or_none
    from modules.version import VERSION

    e = engine_or_none()
    return {
        "Platform": platform.platform(), "Python": sys.version.split()[0], "Version": VERSION,
        "Torch": torch.__version__, "CUDA": torch.cuda.is_available(),
        "Device": str(e.device_config.device) if e is not None else "unknown",
        "Extensions": [x.name for x in __import__("modules.a1111.extensions_names", fromlist=["x"]).extensions],
        "Commandline": sys.argv,
    }


def get() -> str:
    return json.dumps(get_dict(), indent=2, default=str)

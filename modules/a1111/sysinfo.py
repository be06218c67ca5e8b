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
        "Commandline": hidden_logins(sys.argv),
    }


def hidden_logins(argv: list[str]) -> list[str]:
    """The command line with the values of the login flags hidden (A1111's sysinfo does the same)."""
    from modules.diagnostics import SECRET_FLAGS

    flags = {"--" + name.replace("_", "-") for name in SECRET_FLAGS}
    out, hide = [], False
    for arg in argv:
        if hide:
            out.append("<hidden>")
            hide = False
            continue
        name, eq, _ = arg.partition("=")
        if name in flags:
            out.append(f"{name}=<hidden>" if eq else arg)
            hide = not eq
            continue
        out.append(arg)
    return out


def get() -> str:
    return json.dumps(get_dict(), indent=2, default=str)

"""A1111's `modules.paths_internal`: the same paths as `modules.paths`, read from the running engine."""
from __future__ import annotations

import sys
from pathlib import Path

from modules.paths import REPO_ROOT

script_path = str(REPO_ROOT)
modules_path = str(REPO_ROOT / "modules")
sd_configs_path = str(REPO_ROOT / "modules" / "models" / "configs")
sd_default_config = str(Path(sd_configs_path) / "sd1")
extensions_builtin_dir = str(REPO_ROOT / "extensions-builtin")
cwd = str(Path.cwd())
python = sys.executable


def __getattr__(name: str):
    from modules.a1111._engine import engine_or_none

    e = engine_or_none()
    if e is not None:
        p = e.paths
        values = {"data_path": p.data_dir, "models_path": p.models_dir, "extensions_dir": p.extensions_dir,
                  "extensions_builtin_dir": p.extensions_builtin_dir,
                  "default_sd_model_file": Path(p.ckpt_dirs[0]) / "model.ckpt",
                  "default_output_dir": p.outputs_dir, "config_states_dir": Path(p.data_dir) / "config_states"}
        if name in values:
            return str(values[name])
    elif name in ("data_path", "models_path", "extensions_dir", "default_output_dir"):
        base = REPO_ROOT
        return str({"data_path": base, "models_path": base / "models", "extensions_dir": base / "extensions",
                    "default_output_dir": base / "outputs"}[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

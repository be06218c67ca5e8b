"""The rest of A1111's `modules.shared` names (looked up by modules/shared.py's `__getattr__`)."""
from __future__ import annotations

import os
import re
import threading

from modules import settings as _settings
from modules.a1111._engine import engine, engine_or_none
from modules.a1111.unsupported import Unsupported


class _OptionTemplates(dict):
    """`shared.options_templates`: every option; old extensions `update()` it with `options_section(...)` to add
    theirs, which registers them like `opts.add_option` does."""

    def __setitem__(self, key, info):
        from modules.shared import opts

        opts.add_option(key, info)
        dict.__setitem__(self, key, info)

    def update(self, other=(), **kw):
        for key, info in dict(other, **kw).items():
            self[key] = info


options_templates = _OptionTemplates(_settings.OPTIONS)
restricted_opts = {"samples_filename_pattern", "directories_filename_pattern", "outdir_samples", "outdir_txt2img_samples",
                   "outdir_img2img_samples", "outdir_extras_samples", "outdir_grids", "outdir_txt2img_grids",
                   "outdir_save", "outdir_init_images"}


def natural_sort_key(s, regex=re.compile("([0-9]+)")):
    return [int(text) if text.isdigit() else text.lower() for text in regex.split(s)]


def listfiles(dirname) -> list[str]:
    """Files (not folders) in `dirname`, naturally sorted, hidden ones skipped; [] when it does not exist."""
    try:
        names = sorted((n for n in os.listdir(dirname) if not n.startswith(".")), key=natural_sort_key)
    except OSError:
        return []
    return [os.path.join(dirname, n) for n in names if os.path.isfile(os.path.join(dirname, n))]


def walk_files(path, allowed_extensions=None):
    """Every file below `path` (following links), optionally only those ending in `allowed_extensions`."""
    if not os.path.exists(path):
        return
    allowed = set(allowed_extensions) if allowed_extensions is not None else None
    for root, _, files in sorted(os.walk(path, followlinks=True), key=lambda x: natural_sort_key(x[0])):
        for filename in sorted(files, key=natural_sort_key):
            if allowed is not None and os.path.splitext(filename)[1].lower() not in allowed:
                continue
            yield os.path.join(root, filename)


from modules.jobs import JobState as State  # noqa: E402,F401 - A1111's class of shared.state

face_restorers: list = []  # GFPGAN/CodeFormer are not included (non-commercial licences)
interrogator = Unsupported("shared.interrogator", "the CLIP interrogator is not included")
clip_model = None
settings_components: dict = {}
tab_names: list = []
gradio_theme = None
xformers_available = False
parallel_processing_allowed = True
batch_cond_uncond = True
weight_load_location = None
latent_upscale_default_mode = "Latent"
latent_upscale_modes = {
    "Latent": {"mode": "bilinear", "antialias": False}, "Latent (antialiased)": {"mode": "bilinear", "antialias": True},
    "Latent (bicubic)": {"mode": "bicubic", "antialias": False},
    "Latent (bicubic antialiased)": {"mode": "bicubic", "antialias": True},
    "Latent (nearest)": {"mode": "nearest", "antialias": False},
    "Latent (nearest-exact)": {"mode": "nearest-exact", "antialias": False},
}


def html_path(filename):
    from modules.paths import REPO_ROOT

    return os.path.join(str(REPO_ROOT), "html", filename)


def html(filename) -> str:
    path = html_path(filename)
    try:
        with open(path, encoding="utf8") as f:
            return f.read()
    except OSError:
        return ""


def reload_gradio_theme(theme_name=None) -> None:
    """The page's theme follows --theme and the browser; nothing to reload."""


def list_samplers():
    from modules.a1111.sd_samplers import all_samplers

    return all_samplers


def refresh_checkpoints():
    engine().registry.refresh()


def __getattr__(name):
    e = engine_or_none()
    if name == "styles_filename":
        return [str(p) for p in e.paths.styles_files] if e else []
    if name == "config_filename":
        return str(e.paths.config_file) if e else "config.json"
    if name == "sd_model_file":
        return str(e.paths.ckpt_dirs[0] / "model.ckpt") if e else "model.ckpt"
    if name == "sd_default_config":
        from modules.a1111.paths_internal import sd_default_config

        return sd_default_config
    if name == "loaded_hypernetworks":  # the ones hooked into the current model (a copy: changing it does nothing)
        from modules.networks import hypernetworks

        current = getattr(e.models, "current", None) if e is not None else None
        return hypernetworks.active(current) if current is not None else []
    if name == "sd_upscalers_list":
        from modules import shared

        return shared.sd_upscalers
    if name == "device_cpu":
        import torch

        return torch.device("cpu")
    if name == "parser":
        from modules.cmd_args import build_parser

        return build_parser()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class MemUsageMonitor(threading.Thread):
    """A1111's `shared.mem_mon`: peak memory of the last job (CUDA; on the CPU, the process's RSS)."""

    def __init__(self, name="MemMon", device=None, opts=None):
        super().__init__(name=name, daemon=True)
        self.data: dict = {}

    def run(self):
        return None

    def monitor(self):
        self.data = {}
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
        except Exception:  # noqa: BLE001 - a monitor never breaks a job
            pass

    def read(self) -> dict:
        import psutil
        import torch

        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            stats = torch.cuda.memory_stats()
            self.data.update({"free": free, "total": total, "active_peak": stats.get("active_bytes.all.peak", 0),
                              "reserved_peak": stats.get("reserved_bytes.all.peak", 0),
                              "system_peak": total - free})
        else:
            vm = psutil.virtual_memory()
            rss = psutil.Process().memory_info().rss
            self.data.update({"free": vm.available, "total": vm.total, "active_peak": rss, "reserved_peak": rss,
                              "system_peak": vm.total - vm.available})
        return self.data

    def stop(self) -> dict:
        return self.read()

    def dump_debug(self):
        return self.read()


mem_mon = MemUsageMonitor()

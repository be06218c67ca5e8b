"""A1111's `modules.modelloader`: finding model files in a folder and downloading one."""
from __future__ import annotations

import os
from pathlib import Path

from modules.a1111.shared_names import walk_files


def load_models(model_path, model_url=None, command_path=None, ext_filter=None, download_name=None,
                ext_blacklist=None, hash_prefix=None) -> list[str]:
    """Model files in `model_path` (and `command_path`), filtered by extension; `model_url` is downloaded into
    `model_path` when nothing is found (A1111's behaviour)."""
    output: list[str] = []
    places = [p for p in (command_path, model_path) if p]
    for place in places:
        if not os.path.isdir(place):
            continue
        for full_path in walk_files(place, allowed_extensions=ext_filter):
            if os.path.islink(full_path) and not os.path.exists(full_path):
                continue
            if ext_blacklist is not None and any(full_path.endswith(x) for x in ext_blacklist):
                continue
            if full_path not in output:
                output.append(full_path)
    if model_url is not None and not output:
        output.append(load_file_from_url(model_url, model_dir=places[0] if places else ".", file_name=download_name))
    return output


def load_file_from_url(url: str, *, model_dir: str, progress: bool = True, file_name: str | None = None,
                       hash_prefix: str | None = None) -> str:
    """Download `url` into `model_dir` (kept if already there) with our downloader (resume, atomic rename)."""
    from modules import downloads

    os.makedirs(model_dir, exist_ok=True)
    name = file_name or os.path.basename(url.split("?", 1)[0])
    target = Path(model_dir) / name
    if target.exists():
        return str(target)
    result = downloads.download(url, Path(model_dir), kind="other", filename=name)
    return str(getattr(result, "path", result))


def friendly_name(file: str) -> str:
    if file.startswith("http"):
        file = file.split("?", 1)[0]
    return os.path.splitext(os.path.basename(file))[0]


def cleanup_models() -> None:
    """A1111 moves files between old folder names; ours never moved."""


def load_upscalers() -> None:
    """Upscalers are listed by the engine's registry."""


def load_spandrel_model(path, *, device=None, prefer_half=None, dtype=None, expected_architecture=None):
    import spandrel

    model = spandrel.ModelLoader(device=device).load_from_file(str(path))
    return model.eval()

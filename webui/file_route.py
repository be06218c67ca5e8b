"""A1111's root `GET /file=<path>` route: extensions load their own assets through it
(`file=extensions/foo/images/x.png`, relative to the webui root, or an absolute path), and the page links each
extension's style.css through it.

Only files inside an extension folder, an outputs folder or Gradio's temp folder are served; the path is resolved
(symlinks followed) before it is checked, so `..`, its encoded forms and links that lead outside are refused (403).
Hidden names (`.git/config` can hold a token in a remote URL) are refused too. With `--gradio-auth` the client must
hold the UI's login cookie. Registered on the FastAPI app before the UI's catch-all mount at "/".
"""
from __future__ import annotations

import mimetypes
import os
from pathlib import Path
from typing import Callable
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, PlainTextResponse

from modules.paths import REPO_ROOT, Paths

__all__ = ["add", "resolve", "web_path", "allowed_roots"]


def _gradio_temp_dir() -> Path:
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder())


def allowed_roots(paths: Paths, settings=None) -> list[Path]:
    """Resolved folders whose files may be served: the extension folders (each extension's own folder too, so a
    symlinked extension works), the outputs folders (also those the outdir_* settings name), Gradio's temp and the
    data folder's `tmp/` (A1111 extensions write files there for their page scripts to fetch)."""
    roots = [paths.extensions_dir, paths.extensions_builtin_dir, paths.outputs_dir, paths.save_dir,
             _gradio_temp_dir(), paths.tmp_dir]
    for parent in (paths.extensions_dir, paths.extensions_builtin_dir):
        try:
            roots += [child for child in Path(parent).iterdir() if child.is_dir()]
        except OSError:
            pass
    if settings is not None:
        for name, value in settings.as_dict().items():
            if name.startswith("outdir_") and isinstance(value, str) and value.strip():
                roots.append(paths.resolve_data_path(value.strip()))
    return [Path(os.path.realpath(root)) for root in roots]


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def resolve(raw: str, paths: Paths, settings=None) -> Path | None:
    """The real file `raw` names, or None when it lies outside every allowed folder. Relative paths are taken from
    the data folder (where extensions/ and outputs/ are), then from the program folder (extensions-builtin/)."""
    if not raw or "\x00" in raw:
        return None
    given = Path(raw)
    candidates = [given] if given.is_absolute() else [Path(paths.data_dir) / given, REPO_ROOT / given]
    roots = allowed_roots(paths, settings)
    for candidate in candidates:
        real = Path(os.path.realpath(candidate))
        root = next((r for r in roots if _inside(real, r)), None)
        if root is None:
            continue
        if any(part.startswith(".") for part in real.relative_to(root).parts):
            continue
        return real
    return None


def web_path(path: Path, paths: Paths) -> str:
    """`file=<path>?<mtime>` for a page link (A1111's form): relative to the data or program folder when inside it,
    so the route above resolves it back to the same file; the mtime makes a changed file load on the next reload."""
    path = Path(path)
    text = str(path)
    for base in (Path(paths.data_dir), REPO_ROOT):
        try:
            text = path.relative_to(base).as_posix()
            break
        except ValueError:
            continue
    try:
        mtime = os.path.getmtime(path)
    except OSError:
        mtime = 0
    return f"file={quote(text, safe='/')}?{mtime}"


def add(app: FastAPI, paths: Paths, settings=None, gradio_app: Callable[[], object | None] = lambda: None) -> None:
    """Register `/file=` on `app`. `gradio_app()` returns the mounted Gradio app (None before the mount): when it
    has auth, a request without one of its login tokens gets 401."""

    def logged_in(request: Request) -> bool:
        ui = gradio_app()
        if ui is None or getattr(ui, "auth", None) is None:
            return True
        cookie_id = getattr(ui, "cookie_id", "")
        token = (request.cookies.get(f"access-token-{cookie_id}")
                 or request.cookies.get(f"access-token-unsecure-{cookie_id}"))
        return token is not None and token in getattr(ui, "tokens", {})

    def serve_file(path: str, request: Request):
        if not logged_in(request):
            return PlainTextResponse("Not authenticated", status_code=401)
        real = resolve(path, paths, settings)
        if real is None:
            return PlainTextResponse("Forbidden", status_code=403)
        if not real.is_file():
            return PlainTextResponse("Not found", status_code=404)
        media_type = mimetypes.guess_type(real.name)[0] or "application/octet-stream"
        return FileResponse(real, media_type=media_type)

    app.add_api_route("/file={path:path}", serve_file, methods=["GET", "HEAD"], include_in_schema=False)

"""Download a model file (checkpoint, LoRA, VAE, embedding, upscaler) into the folder that lists it.

* Source: a direct ``http(s)`` URL, or a Hugging Face repo id plus a file name (URL built by
  ``huggingface_hub.hf_hub_url``; ``HF_TOKEN`` / the saved HF token is sent to Hugging Face hosts only).
* The data goes to ``NAME.part`` (no registry lists ``.part``) and is renamed to ``NAME`` when complete and, if an
  expected sha256 was given, verified (a mismatch deletes the part file). An existing ``NAME`` is never replaced.
* An interrupted download resumes from the part file's size (HTTP ``Range``); a server that ignores ``Range`` and
  answers 200 makes it start over.
* The name comes from the user, else ``Content-Disposition``, else the URL, and is reduced to a plain file name.
* Offline, connecting fails within ``connect_timeout`` seconds with a message that says so.

Uses httpx (a dependency of huggingface_hub and gradio).
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import unquote, urlparse

import httpx
from tqdm import tqdm

from modules.hashes import sha256_file

log = logging.getLogger(__name__)

PART_SUFFIX = ".part"
CHUNK = 1 << 20

# kind → (folder for it, extensions that folder's list shows)
KINDS = {
    "checkpoint": ("Checkpoint", (".safetensors", ".ckpt")),
    "lora": ("LoRA", (".safetensors", ".pt", ".ckpt")),
    "vae": ("VAE", (".safetensors", ".pt", ".ckpt")),
    "embedding": ("Embedding", (".safetensors", ".pt", ".bin", ".png", ".webp")),
    "upscaler": ("Upscaler", (".pth", ".pt", ".safetensors")),
    "other": ("model", ()),  # any file an extension downloads for itself (A1111's modelloader.load_file_from_url)
}

_HF_HOSTS = ("huggingface.co", "hf.co")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_BAD_CHARS = re.compile(r'[\x00-\x1f<>:"/\\|?*]')
_active: set[str] = set()
_active_lock = threading.Lock()


class DownloadError(RuntimeError):
    """The download failed or was refused; the message says why and what to do."""


@dataclass
class DownloadProgress:
    filename: str
    downloaded: int  # bytes in the part file so far (resumed bytes included)
    total: int | None  # None when the server does not say
    speed: float  # bytes per second in this attempt
    eta: float | None  # seconds left, None when unknown

    @property
    def fraction(self) -> float | None:
        return self.downloaded / self.total if self.total else None

    def describe(self) -> str:
        done = f"{self.downloaded / 2**20:.1f}"
        size = f" of {self.total / 2**20:.1f}" if self.total else ""
        eta = f", {_clock(self.eta)} left" if self.eta is not None else ""
        return f"{self.filename}: {done}{size} MiB at {self.speed / 2**20:.1f} MiB/s{eta}"


@dataclass
class DownloadResult:
    path: Path
    size: int
    sha256: str | None
    resumed_from: int


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def kind_dir(paths, kind: str) -> Path:
    """The folder a kind of model goes to (the first of its folders, where A1111 looks first)."""
    dirs = {
        "checkpoint": lambda: paths.ckpt_dirs[0],
        "lora": lambda: paths.lora_dir,
        "vae": lambda: paths.vae_dirs[0],
        "embedding": lambda: paths.embeddings_dir,
        "upscaler": lambda: paths.model_subdir("ESRGAN"),
    }
    if kind not in dirs:
        raise DownloadError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    return Path(dirs[kind]())


def resolve_url(source: str, filename: str | None = None, revision: str | None = None) -> str:
    """A direct URL as is; ``owner/repo`` plus a file name as that Hugging Face file's download URL."""
    source = (source or "").strip()
    if not source:
        raise DownloadError("give a URL, or a Hugging Face repo id and a file name")
    if re.match(r"^https?://", source, re.I):
        return source
    if "://" in source:
        raise DownloadError(f"only http and https URLs can be downloaded, not {source.split('://')[0]}://")
    if not _REPO_ID.match(source):
        raise DownloadError(f"{source!r} is neither an http(s) URL nor a Hugging Face repo id like owner/name")
    if not filename:
        raise DownloadError(f"give the name of the file to download from {source} (e.g. model.safetensors)")
    from huggingface_hub import hf_hub_url

    return hf_hub_url(source, filename.strip(), revision=revision or None)


def sanitize_filename(name: str) -> str:
    """A plain file name: last path component, no control or reserved characters, not hidden, not empty."""
    name = unquote(name or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = _BAD_CHARS.sub("_", name).strip().lstrip(".").strip()
    if not name or name in (".", ".."):
        raise DownloadError("cannot tell the file name; enter one")
    return name[:200]


def filename_from_headers(content_disposition: str | None) -> str | None:
    """The name in ``Content-Disposition`` (RFC 6266 ``filename*=UTF-8''…`` preferred over ``filename=``)."""
    if not content_disposition:
        return None
    m = re.search(r"filename\*\s*=\s*([\w-]+)'[^']*'([^;]+)", content_disposition, re.I)
    if m:
        try:
            return unquote(m.group(2).strip().strip('"'), encoding=m.group(1))
        except LookupError:
            return unquote(m.group(2).strip().strip('"'))
    m = re.search(r'filename\s*=\s*"([^"]*)"', content_disposition, re.I) or \
        re.search(r"filename\s*=\s*([^;]+)", content_disposition, re.I)
    return m.group(1).strip() if m else None


def _headers_for(url: str) -> dict[str, str]:
    host = (urlparse(url).hostname or "").lower()
    headers = {"User-Agent": "sd-webui-downloader"}
    if any(host == h or host.endswith("." + h) for h in _HF_HOSTS):
        from huggingface_hub import get_token

        token = get_token()  # HF_TOKEN, else the token saved by `hf auth login`
        if token:
            headers["Authorization"] = f"Bearer {token}"
    return headers


def _http_error(response: httpx.Response, url: str) -> DownloadError:
    code = response.status_code
    hint = {
        401: "the server wants a login: for gated Hugging Face models set HF_TOKEN (and accept the licence)",
        403: "access denied: for gated Hugging Face models set HF_TOKEN and accept the licence on the model page",
        404: "not found: check the URL, or the repo id and file name",
        429: "too many requests: try again later",
    }.get(code, "the server failed; try again later" if code >= 500 else "the server refused the request")
    return DownloadError(f"download failed: the server answered {code} {response.reason_phrase} ({hint}) for {url}")


def _check_extension(name: str, kind: str) -> None:
    label, exts = KINDS[kind]
    if exts and not name.lower().endswith(exts):
        raise DownloadError(f"{name}: a {label} file must end with {', '.join(exts)} to be listed; "
                            f"enter a file name")


def _total_size(response: httpx.Response, offset: int) -> int | None:
    if response.status_code == 206:
        m = re.match(r"bytes\s+(\d+)-\d+/(\d+|\*)", response.headers.get("content-range", ""))
        if m and m.group(2) != "*":
            return int(m.group(2))
    length = response.headers.get("content-length")
    return int(length) + (offset if response.status_code == 206 else 0) if length and length.isdigit() else None


def download(url: str, dest_dir: Path, *, kind: str = "checkpoint", filename: str | None = None,
             sha256: str | None = None, progress: Callable[[DownloadProgress], None] | None = None,
             connect_timeout: float = 5.0, read_timeout: float = 60.0) -> DownloadResult:
    """Download ``url`` into ``dest_dir`` (see the module docstring). Raises DownloadError with a clear reason."""
    dest_dir = Path(dest_dir)
    expected = (sha256 or "").strip().lower() or None
    if expected and not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise DownloadError("the expected sha256 must be 64 hex digits")
    if kind not in KINDS:
        raise DownloadError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    name = sanitize_filename(filename) if filename and filename.strip() else None
    guess = name or _url_name(url)
    if guess:
        _refuse_existing(dest_dir / guess)
    timeout = httpx.Timeout(read_timeout, connect=connect_timeout)
    try:
        with httpx.Client(follow_redirects=True, timeout=timeout, headers=_headers_for(url)) as client:
            # The name may only be known from the response; a part file under that name means another request,
            # this time asking for the rest.
            for _attempt in range(2):
                part = dest_dir / (guess + PART_SUFFIX) if guess else None
                offset = part.stat().st_size if part is not None and part.is_file() else 0
                headers = {"Range": f"bytes={offset}-"} if offset else {}
                with client.stream("GET", url, headers=headers) as response:
                    final = name or _response_name(response, url)
                    if final != guess and (offset or (dest_dir / (final + PART_SUFFIX)).is_file()):
                        guess = final  # ask again, for the rest of the right part file (or all of it)
                        continue
                    if response.status_code == 416 and offset:  # the part file is already complete (or wrong)
                        total = _total_size_416(response)
                        if total != offset:
                            part.unlink()
                            continue
                        return _finish(part, dest_dir / final, expected, offset)
                    if response.status_code not in (200, 206):
                        raise _http_error(response, url)
                    _check_extension(final, kind)
                    _refuse_existing(dest_dir / final)
                    return _receive(response, dest_dir, final, offset, expected, progress)
            raise DownloadError("the server keeps changing the file name; enter one")
    except httpx.ConnectTimeout:
        raise DownloadError(f"cannot connect to {urlparse(url).hostname} (no answer within {connect_timeout:g} s): "
                            f"are you offline?") from None
    except httpx.ConnectError as e:
        raise DownloadError(f"cannot connect to {urlparse(url).hostname} ({e}): are you offline, or is the address "
                            f"wrong?") from None
    except OSError as e:
        raise DownloadError(f"could not write to {dest_dir}: {e.strerror or e}") from None
    except (httpx.TransportError, httpx.StreamError) as e:
        raise DownloadError(f"the connection broke off ({type(e).__name__}: {e}); the part downloaded so far is "
                            f"kept: start the download again to resume") from None


def _total_size_416(response: httpx.Response) -> int | None:
    m = re.match(r"bytes\s+\*/(\d+)", response.headers.get("content-range", ""))
    return int(m.group(1)) if m else None


def _url_name(url: str) -> str | None:
    try:
        return sanitize_filename(urlparse(url).path)
    except DownloadError:
        return None


def _response_name(response: httpx.Response, url: str) -> str:
    from_header = filename_from_headers(response.headers.get("content-disposition"))
    if from_header:
        return sanitize_filename(from_header)
    return sanitize_filename(urlparse(str(response.url)).path or urlparse(url).path)


def _refuse_existing(path: Path) -> None:
    if path.exists():
        raise DownloadError(f"{path.name} already exists in {path.parent}; it was not overwritten")


def _receive(response: httpx.Response, dest_dir: Path, name: str, offset: int, expected: str | None,
             progress) -> DownloadResult:
    """Write the body into the part file (appending after a 206, from scratch after a 200) and finish."""
    part = dest_dir / (name + PART_SUFFIX)
    if response.status_code == 200 and offset:
        log.info("%s: the server ignored the resume request; starting over", name)
        offset = 0
    key = str(part.resolve())
    with _active_lock:
        if key in _active:
            raise DownloadError(f"{name} is already being downloaded")
        _active.add(key)
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
        total = _total_size(response, offset)
        started, done = time.monotonic(), offset
        with open(part, "ab" if offset else "wb") as f, \
                tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=name) as bar:
            for chunk in response.iter_bytes(CHUNK):
                f.write(chunk)
                done += len(chunk)
                bar.update(len(chunk))
                if progress is not None:
                    elapsed = max(time.monotonic() - started, 1e-6)
                    speed = (done - offset) / elapsed
                    eta = (total - done) / speed if total and speed > 0 else None
                    progress(DownloadProgress(name, done, total, speed, eta))
        if total is not None and done != total:
            raise DownloadError(f"the connection broke off at {done} of {total} bytes; the part downloaded so far "
                                f"is kept: start the download again to resume")
        return _finish(part, dest_dir / name, expected, offset)
    finally:
        with _active_lock:
            _active.discard(key)


def _finish(part: Path, final: Path, expected: str | None, resumed_from: int) -> DownloadResult:
    digest = sha256_file(part) if expected else None
    if expected and digest != expected:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{final.name}: sha256 mismatch (expected {expected}, got {digest}); the downloaded "
                            f"file was deleted")
    _refuse_existing(final)
    os.replace(part, final)
    log.info("downloaded %s", final)
    return DownloadResult(path=final, size=final.stat().st_size, sha256=digest, resumed_from=resumed_from)


def download_model(paths, source: str, kind: str, *, repo_filename: str | None = None, save_as: str | None = None,
                   sha256: str | None = None, progress: Callable[[DownloadProgress], None] | None = None,
                   **kwargs) -> DownloadResult:
    """Download into the folder for ``kind`` (see :func:`kind_dir`); for Hugging Face the repo file's own name is
    the default name."""
    url = resolve_url(source, repo_filename)
    if not save_as and repo_filename and not re.match(r"^https?://", source.strip(), re.I):
        save_as = repo_filename
    return download(url, kind_dir(paths, kind), kind=kind, filename=save_as, sha256=sha256, progress=progress,
                    **kwargs)

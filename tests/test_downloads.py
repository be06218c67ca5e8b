"""Model downloads against a local HTTP server (Range support, dropped connections, errors, a closed port)."""
from __future__ import annotations

import hashlib
import http.server
import os
import re
import socket
import threading
import time

import pytest

from modules import cmd_args
from modules.downloads import DownloadError, download, download_model, resolve_url, sanitize_filename
from modules.models.registry import CheckpointRegistry
from modules.paths import Paths

PAYLOAD = os.urandom(3 * 2**20 + 12345)  # bigger than one read chunk, so progress is reported several times
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    """/file/NAME: Range-capable; /drop/NAME: the first answer stops halfway; /norange/NAME: always 200 and the
    whole body; /cd: names the file in Content-Disposition; /status/N: answers N."""

    protocol_version = "HTTP/1.1"
    requests: list[tuple[str, str | None]] = []
    dropped: set[str] = set()

    def log_message(self, *args):
        pass

    def do_GET(self):
        rng = self.headers.get("Range")
        type(self).requests.append((self.path, rng))
        if self.path.startswith("/status/"):
            self.send_response(int(self.path.rsplit("/", 1)[1]))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = 0
        m = re.match(r"bytes=(\d+)-", rng or "")
        if m and not self.path.startswith("/norange/"):
            start = int(m.group(1))
        body = PAYLOAD[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        if self.path == "/cd":
            self.send_header("Content-Disposition", 'attachment; filename="../../evil/name.safetensors"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path.startswith("/drop/") and self.path not in type(self).dropped:
            type(self).dropped.add(self.path)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # the dropped connections are on purpose


@pytest.fixture(scope="module")
def server():
    httpd = _QuietServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def paths(tmp_path) -> Paths:
    p = Paths.from_args(cmd_args.parse_args(["--data-dir", str(tmp_path), "--skip-install"], env={}))
    p.ensure_dirs()
    return p


def test_download_goes_to_the_kinds_folder_with_progress(server, paths):
    seen = []
    result = download_model(paths, f"{server}/file/detail.safetensors", "lora", sha256=SHA, progress=seen.append)
    assert result.path == paths.lora_dir / "detail.safetensors"
    assert result.path.read_bytes() == PAYLOAD and result.sha256 == SHA
    assert len(seen) >= 3 and seen[-1].downloaded == seen[-1].total == len(PAYLOAD)
    assert seen[-1].speed > 0 and seen[-1].eta == 0 and "MiB/s" in seen[-1].describe()
    assert not list(paths.lora_dir.glob("*.part"))
    up = download_model(paths, f"{server}/file/4x-sharp.pth", "upscaler")
    assert up.path == paths.models_dir / "ESRGAN" / "4x-sharp.pth"
    with pytest.raises(DownloadError, match="already exists"):  # never overwritten
        download_model(paths, f"{server}/file/detail.safetensors", "lora")


def test_resume_after_dropped_connection_and_part_never_listed(server, paths):
    url = f"{server}/drop/resumable.safetensors"
    ckpt_dir = paths.ckpt_dirs[0]
    with pytest.raises(DownloadError, match="start the download again to resume"):
        download_model(paths, url, "checkpoint")
    part = ckpt_dir / "resumable.safetensors.part"
    kept = part.stat().st_size
    assert 0 < kept < len(PAYLOAD)
    registry = CheckpointRegistry(paths)
    assert registry.refresh() == []  # the half file is not offered as a checkpoint
    _Handler.requests.clear()
    result = download_model(paths, url, "checkpoint", sha256=SHA)
    assert _Handler.requests == [("/drop/resumable.safetensors", f"bytes={kept}-")]
    assert result.resumed_from == kept and result.sha256 == SHA
    assert result.path.read_bytes() == PAYLOAD and not part.exists()
    assert [i.name for i in registry.refresh()] == ["resumable.safetensors"]


def test_server_ignoring_range_restarts(server, paths):
    part = paths.vae_dirs[0] / "plain.safetensors.part"
    part.write_bytes(b"stale bytes from another attempt")
    result = download_model(paths, f"{server}/norange/plain.safetensors", "vae")
    assert result.path.read_bytes() == PAYLOAD and result.resumed_from == 0


def test_wrong_hash_leaves_no_file(server, paths):
    with pytest.raises(DownloadError, match="sha256 mismatch.*deleted"):
        download_model(paths, f"{server}/file/bad.safetensors", "checkpoint", sha256="0" * 64)
    assert list(paths.ckpt_dirs[0].iterdir()) == []


@pytest.mark.parametrize("code, words", [(404, "404 Not Found.*check the URL"), (500, "500.*try again later"),
                                         (403, "403.*HF_TOKEN")])
def test_server_errors_are_explained(server, paths, code, words):
    with pytest.raises(DownloadError, match=words):
        download(f"{server}/status/{code}", paths.lora_dir, kind="lora", filename="x.safetensors")
    assert not list(paths.lora_dir.iterdir())


def test_offline_fails_fast(paths):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    started = time.monotonic()
    with pytest.raises(DownloadError, match="cannot connect to 127.0.0.1.*offline"):
        download_model(paths, f"http://127.0.0.1:{port}/m.safetensors", "checkpoint")
    assert time.monotonic() - started < 5


def test_names_are_sanitised_and_sources_resolved(server, paths):
    result = download_model(paths, f"{server}/cd", "checkpoint")
    assert result.path == paths.ckpt_dirs[0] / "name.safetensors"  # the header's path parts are dropped
    assert sanitize_filename("..%2F..%2Fetc%2Fpasswd") == "passwd"
    assert sanitize_filename(".hidden.ckpt") == "hidden.ckpt"
    with pytest.raises(DownloadError, match="must end with"):
        download_model(paths, f"{server}/file/readme.txt", "checkpoint")
    assert resolve_url("owner/repo", "sub/x.safetensors") == \
        "https://huggingface.co/owner/repo/resolve/main/sub/x.safetensors"
    with pytest.raises(DownloadError, match="name of the file"):
        resolve_url("owner/repo")
    with pytest.raises(DownloadError, match="only http and https"):
        resolve_url("ftp://host/x.ckpt")


def test_hf_token_goes_to_hugging_face_only(monkeypatch):
    from modules.downloads import _headers_for

    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    assert _headers_for("https://huggingface.co/o/r/resolve/main/x")["Authorization"] == "Bearer hf_secret"
    assert "Authorization" not in _headers_for("https://example.com/x.safetensors")

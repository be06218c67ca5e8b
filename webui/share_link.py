"""--share: a public https address (`*.gradio.live`) for the local server through Gradio's share tunnel, as A1111's
`--share` gives (Colab users depend on it). Gradio downloads its tunnel client on first use and stops it when the
process exits. Anyone with the link reaches the UI, so start-up warns about every open surface as for --listen."""
from __future__ import annotations

import secrets
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse, urlunparse


def tunnel_host(bind_host: str) -> str:
    """Where the tunnel reaches the server: the bound address, or loopback when it listens on every address."""
    return "127.0.0.1" if bind_host in ("0.0.0.0", "::", "") else bind_host


def open_share_link(bind_host: str, port: int, setup: Callable[..., str] | None = None) -> str:
    """Open the tunnel and return its public https URL; raises (no network, no tunnel client) on failure."""
    if setup is None:
        from gradio import networking

        setup = networking.setup_tunnel
    address = setup(local_host=tunnel_host(bind_host), local_port=port, share_token=secrets.token_urlsafe(32),
                    share_server_address=None, share_server_tls_certificate=None)
    return urlunparse(("https",) + tuple(urlparse(address))[1:])


def missing_client_hint() -> str:
    """Where Gradio keeps its tunnel client, when it is not there yet (the first --share downloads it)."""
    from gradio import tunneling

    if Path(tunneling.BINARY_PATH).exists():
        return ""
    return f"Gradio's tunnel client {tunneling.BINARY_PATH} is missing; it is downloaded from {tunneling.BINARY_URL}"

"""Who may use the server: the logins the flags give, what stays open, and which browser requests are refused.

- Logins: ``--gradio-auth``/``--gradio-auth-path`` (the UI), ``--api-auth``/``--api-auth-path`` (``/sdapi/v1``),
  ``--auth``/``--auth-path`` (both). Inline values and files use A1111's form: ``user:password`` entries separated
  by commas or newlines (the password may contain ``:``). Every place that needs a login reads it from here, so a
  file counts exactly like the inline form.
- ``exposure_warnings``: one line per surface that answers anyone when the server listens beyond this computer.
- ``CrossOriginGuard``: a web page on another origin may make a browser send simple (``text/plain``, form) POSTs
  here without a CORS preflight; such state-changing requests are refused unless their origin is allowed.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable
from urllib.parse import urlsplit

__all__ = ["parse_logins", "read_login_file", "ui_logins", "api_logins", "exposure_warnings", "is_exposed",
           "is_loopback", "CrossOriginGuard"]


def parse_logins(text: str, source: str = "value") -> list[tuple[str, str]]:
    """``user:password`` entries separated by commas or newlines → [(user, password)]; blank entries skipped.
    An entry without ``:`` or with an empty user name is a ValueError (it would otherwise be ignored silently)."""
    pairs = []
    for line in str(text).splitlines():
        for entry in line.split(","):
            entry = entry.strip()
            if not entry:
                continue
            user, sep, password = entry.partition(":")
            if not sep or not user.strip():
                raise ValueError(f"{source}: expected user:password entries separated by commas or newlines")
            pairs.append((user.strip(), password))
    return pairs


def read_login_file(path: str | Path) -> list[tuple[str, str]]:
    """The logins in a file; an unreadable file or one without any entry is a ValueError: a login file that
    gives no login must never leave the server open."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read the login file {str(path)!r}: {getattr(e, 'strerror', None) or e}") from None
    pairs = parse_logins(text, f"login file {str(path)!r}")
    if not pairs:
        raise ValueError(f"login file {str(path)!r} has no user:password entry")
    return pairs


def _collect(ns, inline: Iterable[str], files: Iterable[str]) -> dict[str, str]:
    logins: dict[str, str] = {}
    for name in inline:
        value = getattr(ns, name, None)
        if value:
            logins.update(parse_logins(value, "--" + name.replace("_", "-")))
    for name in files:
        value = getattr(ns, name, None)
        if value:
            logins.update(read_login_file(value))
    return logins


def ui_logins(ns) -> dict[str, str]:
    """user → password for the UI: --gradio-auth, --gradio-auth-path, --auth, --auth-path."""
    return _collect(ns, ("gradio_auth", "auth"), ("gradio_auth_path", "auth_path"))


def api_logins(ns) -> dict[str, str]:
    """user → password for /sdapi/v1: --api-auth, --api-auth-path, --auth, --auth-path."""
    return _collect(ns, ("api_auth", "auth"), ("api_auth_path", "auth_path"))


def is_loopback(host: str | None) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or str(host or "").startswith("127.")


def is_exposed(ns) -> bool:
    """Whether other computers can reach the server: --listen, --share, or a --server-name that is not loopback."""
    name = getattr(ns, "server_name", None)
    return bool(getattr(ns, "listen", False) or getattr(ns, "share", False) or (name and not is_loopback(name)))


_STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}


def _extension_routes(app) -> list[str]:
    """State-changing routes outside /sdapi/v1 and the UI (those extensions add in on_app_started)."""
    from modules.api.api import PREFIX

    found = []
    for route in getattr(app, "routes", []) if app is not None else []:
        methods = getattr(route, "methods", None) or set()
        path = getattr(route, "path", "")
        changing = sorted(set(methods) & _STATE_CHANGING)
        if changing and not path.startswith(PREFIX) and not getattr(route, "ui_route", False):
            found.append(f"{'/'.join(changing)} {path}")
    return found


def exposure_warnings(ns, host: str, port: int, app=None) -> list[str]:
    """One warning per surface that anyone who can reach ``host``, or who has the --share link, may use without a
    password (none on loopback without --share)."""
    share, local = bool(getattr(ns, "share", False)), not is_loopback(host)
    if not (share or local):
        return []
    where = " and ".join(([f"{host}:{port}"] if local else []) + (["its public share link"] if share else []))
    who = " or ".join((["can reach this computer"] if local else []) + (["has the share link"] if share else []))
    out = []
    if not getattr(ns, "nowebui", False) and not ui_logins(ns):
        out.append(f"WARNING: the web UI on {where} needs no password: anyone who {who} can "
                   f"generate, change settings and manage extensions. Set --gradio-auth user:password (or "
                   f"--gradio-auth-path FILE), or --auth user:password to protect the UI and the API.")
    if (getattr(ns, "api", False) or getattr(ns, "nowebui", False)) and not api_logins(ns):
        out.append(f"WARNING: the API (/sdapi/v1) on {where} needs no password: anyone who {who} "
                   f"can generate, change settings and unload models. Set --api-auth user:password (or "
                   f"--api-auth-path FILE), or --auth user:password to protect the UI and the API.")
    routes = _extension_routes(app)
    if routes:
        shown = ", ".join(routes[:5]) + (f" and {len(routes) - 5} more" if len(routes) > 5 else "")
        out.append(f"WARNING: routes added by extensions need no password on {where}: {shown}.")
    return out


# ---------------------------------------------------------------------------------------------------------------
# Cross-origin requests


def _host_port(netloc: str) -> tuple[str, int | None]:
    parts = urlsplit("//" + netloc)
    try:
        port = parts.port
    except ValueError:
        port = -1  # malformed: matches nothing
    return (parts.hostname or "").lower(), port


_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _same_origin(origin: str, hosts: Iterable[str]) -> bool:
    """Whether `origin` (scheme://host[:port]) names one of `hosts` (Host / X-Forwarded-Host values). A Host
    without a port is the server's default port, which a TLS proxy may present as https: 80 and 443 both match."""
    parts = urlsplit(origin)
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return False
    try:
        origin_port = parts.port or _DEFAULT_PORTS[parts.scheme]
    except ValueError:
        return False
    for host in hosts:
        name, port = _host_port(host.strip())
        if not name or name != parts.hostname.lower():
            continue
        if port == origin_port or (port is None and origin_port in (80, 443)):
            return True
    return False


class CrossOriginGuard:
    """ASGI middleware: a state-changing request (POST, PUT, PATCH, DELETE) from a browser page of another origin
    gets 403. Cross-origin means an ``Origin`` header naming another host or port (or ``null``), or
    ``Sec-Fetch-Site: cross-site``; origins allowed by --cors-allow-origins/--cors-allow-origins-regex pass.
    Requests without those headers (curl, scripts, A1111 API clients) and same-origin pages are untouched."""

    def __init__(self, app, allow_origins: Iterable[str] = (), allow_origin_regex: str | None = None):
        self.app = app
        self.allow_origins = {o.strip().rstrip("/") for o in allow_origins if o and o.strip()}
        self.allow_regex = re.compile(allow_origin_regex) if allow_origin_regex else None

    def _allowed(self, origin: str) -> bool:
        if "*" in self.allow_origins or origin.rstrip("/") in self.allow_origins:
            return True
        return bool(self.allow_regex and self.allow_regex.fullmatch(origin))

    def refusal(self, headers: dict[str, str]) -> str | None:
        """Why a state-changing request with these (lower-cased) headers is refused, or None."""
        origin = headers.get("origin")
        if origin and self._allowed(origin):
            return None
        if headers.get("sec-fetch-site", "").lower() == "cross-site":
            return "cross-site request refused"
        if origin is None:
            return None
        hosts = [headers.get("host", "")] + headers.get("x-forwarded-host", "").split(",")[:1]
        if _same_origin(origin, [h for h in hosts if h]):
            return None
        return f"cross-origin request from {origin!r} refused"

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope.get("method", "GET").upper() in _STATE_CHANGING:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            why = self.refusal(headers)
            if why:
                body = json.dumps({"error": "Forbidden", "detail": f"{why} (allow it with --cors-allow-origins)",
                                   "body": "", "errors": ""}).encode()
                await send({"type": "http.response.start", "status": 403,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

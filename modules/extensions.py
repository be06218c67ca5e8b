"""The extension manager (A1111's ``modules/extensions.py`` + the back end of its Extensions tab).

* :func:`discover` lists ``extensions-builtin/`` then ``extensions/`` (each sorted by name), reads each
  ``metadata.ini`` and orders the list so that an extension comes after the ones it ``Requires``; missing or
  disabled requirements are logged and kept on :attr:`Extension.warnings`. Disabled extensions stay in the list
  with ``enabled=False``; :func:`active` keeps the enabled ones.
* :func:`install_from_url` clones into a hidden temporary folder inside ``extensions/`` and renames it into place
  only when the clone worked, then runs ``install.py`` (:func:`run_installer`: ``python install.py`` with the
  program folder on ``PYTHONPATH``, as A1111 does, so ``import launch`` works).
* :func:`check_for_updates` / :func:`update`: ``git fetch`` then compare with the upstream branch;
  ``git pull --ff-only``.
* :func:`load_index`: A1111's ``index.json`` from a URL or a local file.

Git always runs with ``GIT_TERMINAL_PROMPT=0`` (never waits for a password) and a timeout. Nothing here imports
gradio; the UI is ``webui/extensions_tab.py``.
"""

from __future__ import annotations

import configparser
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from modules.paths import REPO_ROOT

__all__ = ["ScriptOrder", "Extension", "IndexEntry", "ExtensionError", "InstallerError", "discover",
           "discover_configured", "active", "disable_mode", "install_from_url", "check_access", "access_allowed",
           "check_for_updates", "update", "run_installer", "run_installers", "load_index", "index_source",
           "name_from_url", "api_items", "DEFAULT_INDEX_URL", "ACCESS_DENIED"]

log = logging.getLogger(__name__)

DEFAULT_INDEX_URL = ("https://raw.githubusercontent.com/AUTOMATIC1111/stable-diffusion-webui-extensions/master/"
                     "index.json")
#: A1111's message when the UI may not install or change extensions.
ACCESS_DENIED = "extension access disabled because of command line flags"
GIT_TIMEOUT = 300
_NAME_OK = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,99}$")
_TMP_PREFIX = ".installing-"
_git_lock = threading.Lock()
_logged: set[str] = set()  # warnings already logged: discover() runs on every page load and API call


class ExtensionError(RuntimeError):
    """A user-facing failure (bad URL, folder exists, git or install.py failed): the message says what to do."""


class InstallerError(ExtensionError):
    """``install.py`` failed; ``extension`` is the installed extension (its files stay, so the user can fix it)."""

    def __init__(self, message: str, extension: "Extension | None" = None):
        super().__init__(message)
        self.extension = extension


@dataclass
class ScriptOrder:
    """One ``[scripts/NAME.py]`` section of ``metadata.ini`` (lower-cased names, as A1111 reads them)."""

    before: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)
    requires: list[str] = field(default_factory=list)


@dataclass
class Extension:
    name: str
    path: Path
    is_builtin: bool
    enabled: bool = True
    remote: str | None = None
    branch: str | None = None
    commit_hash: str | None = None
    commit_date: int | None = None
    requires: list[str] = field(default_factory=list)
    script_order: dict[str, ScriptOrder] = field(default_factory=dict)
    canonical_name: str = ""  # metadata.ini [Extension] Name, lower-cased; the folder name by default
    warnings: list[str] = field(default_factory=list)  # missing/disabled requirements, unreadable metadata.ini
    _git_read: bool = field(default=False, repr=False, compare=False)

    def __post_init__(self):
        self.path = Path(self.path)
        if not self.canonical_name:
            self.canonical_name = self.name.lower().strip()

    @property
    def scripts_dir(self) -> Path:
        return self.path / "scripts"

    def script_files(self) -> list[Path]:
        """``scripts/*.py`` sorted by name, leaving out private modules (``_helpers.py``, ``__init__.py``)."""
        if not self.scripts_dir.is_dir():
            return []
        return sorted(p for p in self.scripts_dir.glob("*.py") if p.is_file() and not p.name.startswith("_"))

    def javascript_files(self) -> list[Path]:
        folder = self.path / "javascript"
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".js", ".mjs"))

    def _file(self, name: str) -> Path | None:
        path = self.path / name
        return path if path.is_file() else None

    @property
    def style_css(self) -> Path | None:
        return self._file("style.css")

    @property
    def preload_file(self) -> Path | None:
        return self._file("preload.py")

    @property
    def install_file(self) -> Path | None:
        return self._file("install.py")

    @property
    def version(self) -> str | None:
        """A1111's ``version``: the first 8 characters of the commit."""
        return self.commit_hash[:8] if self.commit_hash else None

    @property
    def is_git(self) -> bool:
        return (self.path / ".git").exists()

    def read_git_info(self, force: bool = False) -> None:
        """Fill remote/branch/commit from the local repository (no network; once per object unless ``force``)."""
        if self._git_read and not force:
            return
        self._git_read = True
        self.remote = self.branch = self.commit_hash = None
        self.commit_date = None
        if not self.is_git:
            return
        try:
            head = _git(self.path, "log", "-1", "--format=%H %ct", timeout=10).split()
            self.commit_hash, self.commit_date = head[0], int(head[1])
            branch = _git(self.path, "rev-parse", "--abbrev-ref", "HEAD", timeout=10)
            self.branch = None if branch == "HEAD" else branch  # detached HEAD has no branch
            self.remote = _git(self.path, "config", "--get", "remote.origin.url", timeout=10, check=False) or None
        except (ExtensionError, IndexError, ValueError) as e:
            log.debug("cannot read git info of %s: %s", self.path, e)


@dataclass
class IndexEntry:
    """One extension of A1111's ``index.json``."""

    name: str
    url: str
    description: str = ""
    tags: list[str] = field(default_factory=list)
    added: str = ""
    created_at: str = ""
    stars: int = 0
    commit_time: str = ""


# --- git -------------------------------------------------------------------------------------------------------------

def _git_env() -> dict[str, str]:
    return {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "echo", "SSH_ASKPASS": "echo",
            "GIT_SSH_COMMAND": os.environ.get("GIT_SSH_COMMAND", "ssh -o BatchMode=yes"), "LC_ALL": "C"}


def _git(cwd: Path | None, *args: str, timeout: float = GIT_TIMEOUT, check: bool = True) -> str:
    """Run git (``-c protocol.ext.allow=never``: a URL may never run a command); stdout, or ExtensionError."""
    cmd = ["git", "-c", "protocol.ext.allow=never", *args]
    try:
        result = subprocess.run(cmd, cwd=cwd, env=_git_env(), capture_output=True, text=True, timeout=timeout,
                                stdin=subprocess.DEVNULL, encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise ExtensionError("git is not installed (it is needed to install and update extensions)") from None
    except subprocess.TimeoutExpired:
        raise ExtensionError(f"git {args[0]} took longer than {timeout:g} s and was stopped") from None
    if check and result.returncode != 0:
        lines = [ln.strip() for ln in (result.stderr or result.stdout).splitlines() if ln.strip()]
        fatal = [ln for ln in lines if ln.startswith(("fatal:", "error:"))] or lines[-3:]
        raise ExtensionError(f"git {args[0]} failed: {' '.join(fatal) or f'exit status {result.returncode}'}")
    return result.stdout.strip()


# --- discovery ---------------------------------------------------------------------------------------------------

def _parse_list(text: str) -> list[str]:
    """A1111's ``parse_list``: names separated by commas and/or spaces, lower-cased."""
    return [x for x in re.split(r"[,\s]+", text.strip().lower()) if x]


def _read_metadata(ext: Extension) -> None:
    path = ext.path / "metadata.ini"
    if not path.is_file():
        return
    config = configparser.ConfigParser(interpolation=None)
    try:
        config.read(path, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError, OSError) as e:
        _warn(ext, f"metadata.ini of {ext.name} is unreadable ({e}); ignored")
        return
    name = config.get("Extension", "Name", fallback="").strip()
    if name:
        ext.canonical_name = name.lower()
    ext.requires = _parse_list(config.get("Extension", "Requires", fallback=""))
    for section in config.sections():
        if section.startswith("scripts/"):
            ext.script_order[section] = ScriptOrder(
                before=_parse_list(config.get(section, "Before", fallback="")),
                after=_parse_list(config.get(section, "After", fallback="")),
                requires=_parse_list(config.get(section, "Requires", fallback="")))


def _scan(folder: Path, is_builtin: bool) -> list[Extension]:
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.iterdir(), key=lambda p: p.name.lower()):
        if path.name.startswith((".", "__")) or not path.is_dir():
            continue
        ext = Extension(name=path.name, path=path, is_builtin=is_builtin)
        _read_metadata(ext)
        found.append(ext)
    return found


def _ordered_by_requirements(extensions: list[Extension]) -> list[Extension]:
    """Stable topological sort: each extension after those it requires (cycles keep the name order)."""
    by_name = {e.canonical_name: e for e in extensions}
    out: list[Extension] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(ext: Extension):
        if state.get(ext.canonical_name) == 2:
            return
        if state.get(ext.canonical_name) == 1:
            _warn(ext, f"extension {ext.name} is part of a requirement cycle; kept in name order")
            return
        state[ext.canonical_name] = 1
        for req in ext.requires:
            if req in by_name and req != ext.canonical_name:
                visit(by_name[req])
        state[ext.canonical_name] = 2
        out.append(ext)

    for ext in extensions:
        visit(ext)
    return out


def _warn(ext: Extension, message: str) -> None:
    ext.warnings.append(message)
    if message not in _logged:
        _logged.add(message)
        log.warning("%s", message)


def _check_requirements(extensions: list[Extension]) -> None:
    by_name = {e.canonical_name: e for e in extensions}
    for ext in extensions:
        if not ext.enabled:
            continue
        for req in ext.requires:
            other = by_name.get(req)
            if other is None:
                msg = f'Extension "{ext.name}" requires "{req}" which is not installed.'
            elif not other.enabled:
                msg = f'Extension "{ext.name}" requires "{other.name}" which is disabled.'
            else:
                continue
            _warn(ext, msg)


def discover(paths, disabled: Iterable[str] = (), disable_all: str = "none") -> list[Extension]:
    """Every extension, built-in first, ordered by name and requirements; ``enabled`` reflects ``disabled`` (folder
    names) and ``disable_all`` (``"none"``, ``"extra"``: only built-ins, ``"all"``)."""
    disabled = set(disabled or ())
    extensions = _scan(Path(paths.extensions_builtin_dir), True) + _scan(Path(paths.extensions_dir), False)
    for ext in extensions:
        ext.enabled = (ext.name not in disabled and disable_all != "all"
                       and not (disable_all == "extra" and not ext.is_builtin))
    extensions = _ordered_by_requirements(extensions)
    _check_requirements(extensions)
    return extensions


def disable_mode(settings=None, args=None) -> str:
    """``none``/``extra``/``all`` from the flags (``--disable-all-extensions`` wins) and the option."""
    if args is not None and getattr(args, "disable_all_extensions", False):
        return "all"
    if args is not None and (getattr(args, "disable_extra_extensions", False) or getattr(args, "safe_mode", False)):
        return "extra"
    mode = settings.get("disable_all_extensions", "none") if settings is not None else "none"
    return mode if mode in ("none", "extra", "all") else "none"


def discover_configured(paths, settings, args=None) -> list[Extension]:
    """:func:`discover` with the ``disabled_extensions``/``disable_all_extensions`` options and the flags."""
    return discover(paths, settings.get("disabled_extensions", []) or [], disable_mode(settings, args))


def active(extensions: Iterable[Extension] | None = None) -> list[Extension]:
    """The enabled ones of `extensions`; without an argument (A1111's `extensions.active()`), of those the
    running server found at start-up."""
    if extensions is None:
        from modules.a1111 import extensions_names

        extensions = extensions_names.extensions
    return [e for e in extensions if e.enabled]


def api_items(extensions: Iterable[Extension]) -> list[dict[str, Any]]:
    """``GET /sdapi/v1/extensions`` rows, A1111's shape."""
    rows = []
    for ext in extensions:
        ext.read_git_info()
        rows.append({"name": ext.name, "remote": ext.remote, "branch": ext.branch, "commit_hash": ext.commit_hash,
                     "commit_date": ext.commit_date, "version": ext.version, "enabled": ext.enabled})
    return rows


# --- install / update --------------------------------------------------------------------------------------------

def access_allowed(args) -> bool:
    """A1111: the UI may install or change extensions unless the server is reachable from other machines
    (``--listen``, ``--share``, ``--server-name``), except with ``--enable-insecure-extension-access``."""
    exposed = any(getattr(args, flag, None) for flag in ("listen", "share", "ngrok", "server_name"))
    return not exposed or bool(getattr(args, "enable_insecure_extension_access", False))


def check_access(args) -> None:
    if args is not None and not access_allowed(args):
        raise ExtensionError(ACCESS_DENIED)


def name_from_url(url: str) -> str:
    """A1111: the last path segment of the URL without ``.git`` (``https://x/y/sd-foo.git`` → ``sd-foo``)."""
    parsed = urllib.parse.urlparse(url.strip())
    path = parsed.path if parsed.scheme and len(parsed.scheme) > 1 else url.strip()  # C:\... is not a scheme
    last = re.split(r"[/\\:]", path.rstrip("/\\"))[-1]
    return last[:-4] if last.lower().endswith(".git") else last


def _check_name(name: str) -> str:
    name = name.strip()
    if not _NAME_OK.match(name) or name in (".", "..") or name.startswith(_TMP_PREFIX):
        raise ExtensionError(f"invalid extension folder name {name!r}: use letters, digits, '.', '_' and '-' only")
    return name


def _check_url(url: str) -> str:
    url = (url or "").strip()
    if not url:
        raise ExtensionError("enter the URL of the extension's git repository")
    if url.startswith("-") or any(c in url for c in "\n\r\0"):
        raise ExtensionError(f"not a git URL: {url!r}")
    if url.lower().startswith("ext::"):
        raise ExtensionError("ext:: URLs are not allowed (they run commands)")
    return url


def install_from_url(paths, url: str, name: str | None = None, branch: str | None = None, *,
                     run_installer: bool = True, args=None, timeout: float = GIT_TIMEOUT) -> Extension:
    """Clone ``url`` into ``extensions/NAME`` (NAME from the URL unless given), then run its ``install.py``.

    Raises :class:`ExtensionError` with a message for the user; a failed clone leaves no folder behind. If only
    ``install.py`` fails, the extension stays installed and :class:`InstallerError` says so.
    """
    check_access(args)
    url = _check_url(url)
    name = _check_name(name.strip() if name and name.strip() else name_from_url(url))
    branch = (branch or "").strip() or None
    if branch is not None and (branch.startswith("-") or not re.match(r"^[\w./+-]+$", branch)):
        raise ExtensionError(f"invalid branch name {branch!r}")
    root = Path(paths.extensions_dir)
    target = root / name
    if target.exists() or target.is_symlink():
        raise ExtensionError(f"Extension directory already exists: {target}")
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=root))
    try:
        clone = ["clone", "--filter=blob:none", "--no-recurse-submodules"]
        if branch:
            clone += ["--branch", branch]
        _git(None, *clone, "--", url, str(tmp / name), timeout=timeout)
        if (tmp / name / ".gitmodules").is_file():
            _git(tmp / name, "submodule", "update", "--init", "--recursive", "--depth", "1", timeout=timeout)
        with _git_lock:
            if target.exists():
                raise ExtensionError(f"Extension directory already exists: {target}")
            os.rename(tmp / name, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ext = Extension(name=name, path=target, is_builtin=False)
    _read_metadata(ext)
    ext.read_git_info()
    log.info("installed extension %s from %s into %s", name, url, target)
    if run_installer and ext.install_file:
        try:
            _run_install_py(ext, 600)
        except ExtensionError as e:
            raise InstallerError(f"{name} was installed into {target}, but its install.py failed: {e}", ext) from None
    return ext


def check_for_updates(ext: Extension, timeout: float = GIT_TIMEOUT) -> str:
    """``"latest"``, ``"behind"`` or ``"unknown: reason"`` after ``git fetch`` (never raises)."""
    if not ext.is_git:
        return "unknown: not a git repository"
    try:
        _git(ext.path, "fetch", "--quiet", timeout=timeout)
        upstream = _git(ext.path, "rev-parse", "--verify", "--quiet", "@{upstream}", timeout=30, check=False)
        if not upstream:
            return "unknown: the current branch has no upstream branch"
        behind = int(_git(ext.path, "rev-list", "--count", "HEAD..@{upstream}", timeout=30) or 0)
    except (ExtensionError, ValueError) as e:
        return f"unknown: {e}"
    return "behind" if behind else "latest"


def update(ext: Extension, timeout: float = GIT_TIMEOUT) -> str:
    """``git pull --ff-only``; a message saying what changed. ExtensionError if git failed (local changes, ...)."""
    if not ext.is_git:
        raise ExtensionError(f"{ext.name} is not a git repository; it cannot be updated")
    before = _git(ext.path, "rev-parse", "HEAD", timeout=30)
    _git(ext.path, "pull", "--ff-only", "--quiet", timeout=timeout)
    ext.read_git_info(force=True)
    if ext.commit_hash == before:
        return f"{ext.name} is already up to date ({before[:8]})"
    return f"{ext.name} updated from {before[:8]} to {ext.version}"


# --- install.py ----------------------------------------------------------------------------------------------------

def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def run_installer(ext: Extension, *, timeout: float = 600) -> None:
    """``python install.py`` as A1111 runs it: cwd the program folder, ``PYTHONPATH`` starting with it (so
    ``import launch`` works). Nothing to do without install.py; ExtensionError with the output's tail on failure."""
    _run_install_py(ext, timeout)


def _run_install_py(ext: Extension, timeout: float) -> None:
    script = ext.install_file
    if script is None:
        return
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["WEBUI_EXTENSION_DIR"] = str(ext.path)
    from modules import launch_utils

    try:
        with launch_utils.core_constraints_file() as constraints:
            env["PIP_CONSTRAINT"] = " ".join(p for p in (env.get("PIP_CONSTRAINT", ""), constraints) if p)
            result = subprocess.run([sys.executable, str(script)], cwd=str(REPO_ROOT), env=env, capture_output=True,
                                    text=True, timeout=timeout, stdin=subprocess.DEVNULL, encoding="utf-8",
                                    errors="replace")
    except subprocess.TimeoutExpired:
        raise ExtensionError(f"install.py of {ext.name} took longer than {timeout:g} s and was stopped") from None
    output = (result.stdout or "") + (result.stderr or "")
    if result.returncode != 0:
        raise ExtensionError(f"install.py of {ext.name} exited with status {result.returncode}:\n{_tail(output)}")
    if output.strip():
        log.info("install.py of %s:\n%s", ext.name, _tail(output, 40))


def run_installers(extensions: Iterable[Extension]) -> list[str]:
    """Run every ``install.py`` (at launch); the error messages, one per failed extension, for the caller to
    show. Never raises."""
    errors = []
    for ext in extensions:
        if ext.install_file is None:
            continue
        try:
            run_installer(ext)
        except Exception as e:  # one broken installer must not stop the program from starting
            errors.append(f"Error running install.py for extension {ext.name}: {e}")
    return errors


# --- the index ----------------------------------------------------------------------------------------------------

def index_source(settings) -> str:
    """The ``extensions_index_url`` option if the user set it, else ``$WEBUI_EXTENSIONS_INDEX`` (A1111's
    override), else A1111's index."""
    stored = settings.stored().get("extensions_index_url") if settings is not None else None
    return stored or os.environ.get("WEBUI_EXTENSIONS_INDEX") or DEFAULT_INDEX_URL


def _read_source(source: str, timeout: float) -> bytes:
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme in ("http", "https"):
        import httpx

        response = httpx.get(source, timeout=timeout, follow_redirects=True)
        if response.status_code != 200:
            raise ExtensionError(f"HTTP {response.status_code}")
        return response.content
    path = Path(urllib.parse.unquote(parsed.path)) if parsed.scheme == "file" else Path(source).expanduser()
    return path.read_bytes()


def _str(value: Any) -> str:
    return "" if value is None else str(value)


def load_index(source: str, timeout: float = 10) -> list[IndexEntry]:
    """A1111's ``index.json`` (``{"tags": {...}, "extensions": [...]}``) from a URL or a local file, sorted as given.

    Entries without a name or URL are skipped. ExtensionError("could not read the extension index from …: reason").
    """
    source = (source or "").strip()
    if not source:
        raise ExtensionError("could not read the extension index: no URL or file given")
    try:
        data = json.loads(_read_source(source, timeout).decode("utf-8"))
        items = data.get("extensions") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise ExtensionError('not an extension index (no "extensions" list)')
    except ExtensionError as e:
        raise ExtensionError(f"could not read the extension index from {source}: {e}") from None
    except ValueError as e:
        raise ExtensionError(f"could not read the extension index from {source}: not valid JSON ({e})") from None
    except Exception as e:  # network and file errors of every kind
        reason = str(e) or type(e).__name__
        raise ExtensionError(f"could not read the extension index from {source}: {reason}") from None
    entries = []
    for item in items:
        if not isinstance(item, dict) or not item.get("name") or not item.get("url"):
            continue
        tags = item.get("tags") or []
        try:
            stars = int(item.get("stars") or 0)
        except (TypeError, ValueError):
            stars = 0
        entries.append(IndexEntry(name=_str(item["name"]), url=_str(item["url"]),
                                  description=_str(item.get("description")),
                                  tags=[str(t) for t in tags] if isinstance(tags, list) else [],
                                  added=_str(item.get("added")), created_at=_str(item.get("created_at")),
                                  stars=stars, commit_time=_str(item.get("commit_time"))))
    return entries


def normalize_url(url: str | None) -> str:
    """For "is this index entry installed?": scheme, ``.git`` and trailing slashes do not matter."""
    url = (url or "").strip().lower().rstrip("/")
    url = re.sub(r"^[a-z+]+://", "", url)
    url = re.sub(r"^git@([^:]+):", r"\1/", url)
    return url[:-4] if url.endswith(".git") else url


def __getattr__(name: str):
    """A1111's module-level `extensions` list and helpers, for extensions (modules/a1111/extensions_names.py)."""
    from modules import a1111

    return a1111.names_from(__name__)(name)

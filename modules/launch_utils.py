"""What extensions' ``install.py`` scripts call through ``import launch`` (A1111's ``modules/launch_utils.py`` names).

``is_installed(name)``, ``run_pip(args, desc)``, ``run(command, desc, errdesc)``, ``commit_hash()``, ``git_tag()``,
``python`` and ``git``. Standard library only (plus ``packaging`` when present): ``launch.py`` imports this before the
requirements check, and every ``install.py`` subprocess imports it.

``run_pip`` keeps installers from breaking the program: a request for a *core* package (one named in
``requirements.txt``, or torch's family) that the installed version does not already satisfy is refused with a
warning naming the package, and every pip run gets a constraints file pinning the installed core packages, so a
dependency of the extension cannot downgrade them either (pip then fails with its resolver message instead).
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["is_installed", "run_pip", "run", "commit_hash", "git_tag", "core_packages", "python", "git", "REPO_ROOT"]

REPO_ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = REPO_ROOT / "requirements.txt"

python = sys.executable
git = os.environ.get("GIT", "git")
index_url = os.environ.get("INDEX_URL", "")

#: Always core, whatever requirements.txt says: changing these breaks the GPU set-up or the UI.
_ALWAYS_CORE = {"torch", "torchvision", "torchaudio", "xformers", "diffusers", "transformers", "tokenizers",
                "gradio", "gradio-client", "fastapi", "starlette", "pydantic", "safetensors", "huggingface-hub",
                "accelerate", "peft", "numpy", "pillow"}
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _normalize(name: str) -> str:
    """PEP 503 name normalisation (``Gradio_Client`` and ``gradio-client`` are one package)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def core_packages() -> set[str]:
    """The normalised names pip must not change: requirements.txt's packages plus torch's family and the UI stack."""
    names = set(_ALWAYS_CORE)
    if REQUIREMENTS.is_file():
        for line in REQUIREMENTS.read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            m = _NAME.match(line)
            if m and not line.startswith("-"):
                names.add(_normalize(m.group(1)))
    return names


def is_installed(package: str) -> bool:
    """True if a distribution or an importable module of that name exists (A1111's check)."""
    try:
        md.distribution(package)
        return True
    except md.PackageNotFoundError:
        pass
    try:
        return importlib.util.find_spec(package) is not None
    except (ModuleNotFoundError, ValueError):
        return False


def run(command: str | list[str], desc: str | None = None, errdesc: str | None = None,
        custom_env: dict | None = None, live: bool = False) -> str:
    """Run a command (a string goes through the shell, as in A1111); its output, or RuntimeError with ``errdesc``."""
    if desc:
        print(desc, flush=True)
    result = subprocess.run(command, shell=isinstance(command, str), env=custom_env or os.environ,
                            stdout=None if live else subprocess.PIPE, stderr=None if live else subprocess.PIPE,
                            text=True, encoding="utf-8", errors="replace")
    if result.returncode != 0:
        parts = [f"{errdesc or 'Error running command'}.", f"Command: {command}",
                 f"Error code: {result.returncode}"]
        if result.stdout:
            parts.append(f"stdout: {result.stdout}")
        if result.stderr:
            parts.append(f"stderr: {result.stderr}")
        raise RuntimeError("\n".join(parts))
    return result.stdout or ""


def _requested_packages(args: list[str]) -> list[str]:
    """The requirement strings an ``install`` command names directly (not options, files or their values)."""
    takes_value = {"-r", "--requirement", "-c", "--constraint", "-e", "--editable", "-i", "--index-url",
                   "--extra-index-url", "-f", "--find-links", "-t", "--target", "--prefix", "--root",
                   "--platform", "--python-version", "--implementation", "--abi", "--progress-bar",
                   "--src", "--upgrade-strategy", "--trusted-host", "--cache-dir", "--log", "--proxy", "--timeout",
                   "--retries", "--no-binary", "--only-binary", "--config-settings", "-C", "--global-option"}
    out, skip = [], False
    for arg in args[1:]:
        if skip:
            skip = False
            continue
        if arg in takes_value:
            skip = True
            continue
        if arg.startswith("-"):
            continue
        out.append(arg)
    return out


def _satisfied(requirement: str) -> bool:
    """True if the installed distribution already satisfies ``requirement`` (so asking for it changes nothing)."""
    try:
        from packaging.requirements import Requirement
        req = Requirement(requirement)
    except Exception:
        return False
    try:
        version = md.version(req.name)
    except md.PackageNotFoundError:
        return False
    return not str(req.specifier) or req.specifier.contains(version, prereleases=True)


def _refused(requirement: str, core: set[str]) -> str | None:
    m = _NAME.match(requirement)
    if not m or "://" in requirement or requirement.endswith((".whl", ".tar.gz", ".zip")):
        return None
    name = _normalize(m.group(1))
    if name in core and not _satisfied(requirement):
        return m.group(1)
    return None


def _core_constraints(core: set[str]) -> str:
    lines = []
    for name in sorted(core):
        try:
            lines.append(f"{name}=={md.version(name)}")
        except md.PackageNotFoundError:
            continue
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def core_constraints_file():
    """A pip constraints file pinning every core package at its installed version (removed afterwards). Given to
    extension installers as PIP_CONSTRAINT, so even an install.py that runs pip itself cannot downgrade numpy or
    transformers under the app."""
    fd, path = tempfile.mkstemp(prefix="core-constraints-", suffix=".txt")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(_core_constraints(core_packages()))
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def run_pip(command: str | list[str], desc: str | None = None, live: bool = False) -> str:
    """``python -m pip <command> --prefer-binary`` as in A1111, but never changing a core package.

    Refused requests print ``WARNING: ... refused to change core package NAME`` and are dropped; if nothing is left
    to install, pip is not run and "" is returned.
    """
    args = shlex.split(command) if isinstance(command, str) else list(command)
    constraints = None
    if args and args[0] == "install":
        core = core_packages()
        refused = {req: name for req in _requested_packages(args) if (name := _refused(req, core))}
        for req, name in refused.items():
            print(f"WARNING: an extension installer asked pip for {req!r}: refused to change core package {name} "
                  f"(installed: {_installed_version(name)}); install it by hand if you really want it",
                  file=sys.stderr, flush=True)
        args = [a for a in args if a not in refused]
        if not _requested_packages(args) and not any(a in ("-r", "--requirement", "-e", "--editable") for a in args):
            return ""
        fd, constraints = tempfile.mkstemp(prefix="core-constraints-", suffix=".txt")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(_core_constraints(core))
        args += ["-c", constraints]
    if index_url:
        args += ["--index-url", index_url]
    try:
        return run([python, "-m", "pip", *args, "--prefer-binary"], desc=f"Installing {desc}" if desc else None,
                   errdesc=f"Couldn't install {desc}" if desc else "Couldn't run pip", live=live)
    finally:
        if constraints:
            os.unlink(constraints)


def _installed_version(name: str) -> str:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "not installed"


def _git_output(*args: str) -> str:
    try:
        result = subprocess.run([git, "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=10,
                                env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})
    except (OSError, subprocess.TimeoutExpired):
        return "<none>"
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else "<none>"


def commit_hash() -> str:
    """This program's git commit, or ``<none>`` outside a git checkout (A1111's value)."""
    return _git_output("rev-parse", "HEAD")


def git_tag() -> str:
    """``git describe --tags`` of this program, or ``<none>``."""
    return _git_output("describe", "--tags")

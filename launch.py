"""Start the web UI: ``python launch.py [A1111 flags]`` (flags also come from ``$COMMANDLINE_ARGS``).

1. parse the flags (a bad flag: one ``launch.py: error: ...`` line, exit status 2);
2. unless ``--skip-install``: check the Python version (``--skip-python-version-check``); install the torch build
   for this machine (modules/install_plan.py: CUDA / ROCm / MPS / CPU; ``$TORCH_COMMAND`` overrides it) when the
   venv has none yet, ``$TORCH_COMMAND`` changed or ``--reinstall-torch``, then check it can use the GPU it was
   chosen for (``--skip-torch-cuda-test``); if a package named in requirements.txt is missing (or its installed
   version does not satisfy the pin), run ``pip install -r requirements.txt`` once; nothing is run when all are
   present;
3. ``HF_HUB_OFFLINE=1`` (models are never downloaded) unless the user set it;
4. create the data folders; unless ``--skip-install``, run each enabled extension's ``install.py``;
5. start the server (modules/server.py).

``import launch`` inside an extension's install.py gives A1111's helpers (``is_installed``, ``run_pip``, ``run``, ...,
from modules/launch_utils.py).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from modules import cmd_args  # noqa: E402  (standard library only: safe before the requirements check)
from modules.paths import Paths  # noqa: E402
from modules.launch_utils import (  # noqa: E402,F401  (what extensions' install.py call as launch.*)
    commit_hash, git, git_tag, is_installed, python, run, run_pip)

REQUIREMENTS = ROOT / "requirements.txt"
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _requirement_lines(path: Path, seen: set | None = None) -> list[str]:
    seen = seen if seen is not None else set()
    path = path.resolve()
    if path in seen or not path.is_file():
        return []
    seen.add(path)
    lines = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("-r ", "--requirement ")):
            lines += _requirement_lines(path.parent / line.split(None, 1)[1].strip(), seen)
            continue
        if line.startswith("-"):  # pip options (--index-url, -e ..., --extra-index-url)
            continue
        lines.append(line)
    return lines


def missing_requirements(path: Path = REQUIREMENTS) -> list[str]:
    """The requirement lines of ``path`` that the current environment does not satisfy (quick: metadata only)."""
    import importlib.metadata as md

    try:
        from packaging.requirements import InvalidRequirement, Requirement
    except ImportError:  # pragma: no cover - packaging is nearly always there; fall back to presence checks
        Requirement = None  # type: ignore[assignment]

    missing = []
    for line in _requirement_lines(path):
        name, spec, marker_ok = None, None, True
        if Requirement is not None:
            try:
                req = Requirement(line)
            except InvalidRequirement:
                req = None
            if req is not None:
                name, spec = req.name, req.specifier
                marker_ok = req.marker is None or req.marker.evaluate()
        if name is None:
            m = _NAME.match(line)
            if not m:
                continue
            name = m.group(1)
            marker_ok = ";" not in line  # cannot evaluate markers without packaging: do not force an install
        if not marker_ok:
            continue
        try:
            version = md.version(name)
        except md.PackageNotFoundError:
            missing.append(line)
            continue
        if spec is not None and str(spec) and not spec.contains(version, prereleases=True):
            missing.append(line)
    return missing


def prepare_environment(requirements: Path = REQUIREMENTS) -> int:
    """Install requirements if some are missing. Returns 0, or 1 if pip failed."""
    if not requirements.is_file():
        return 0
    missing = missing_requirements(requirements)
    if not missing:
        return 0
    print(f"Installing requirements ({', '.join(missing)})", flush=True)
    rc = subprocess.call([sys.executable, "-m", "pip", "install", "-r", str(requirements)])
    if rc != 0:
        print(f"launch.py: error: installing requirements failed (pip exit status {rc}); install them by hand "
              f"or start with --skip-install", file=sys.stderr)
        return 1
    return 0


def _torch_record() -> Path | None:
    """Where a venv remembers the torch command it was given (so later runs start at once); None outside a venv,
    where torch counts as installed when it imports."""
    return Path(sys.prefix) / "sd-webui-torch.json" if sys.prefix != sys.base_prefix else None


def _recorded_torch(record: Path | None) -> dict | None:
    try:
        return json.loads(record.read_text(encoding="utf-8")) if record is not None else None
    except (OSError, ValueError):
        return None


def apply_machine_defaults(environ=os.environ) -> None:
    """Before the flags are parsed and torch is imported: A1111's Mac defaults (its webui-macos-env.sh: MPS has
    no fp16 autocast and its fp16 VAE overflows) unless the user set COMMANDLINE_ARGS, PyTorch's CPU fallback for
    operators MPS lacks, and what the installed build recorded (ROCm's HSA_OVERRIDE_GFX_VERSION)."""
    from modules import install_plan

    if platform.system() == "Darwin" and platform.machine() in ("arm64", "aarch64"):
        environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")
        if not environ.get("COMMANDLINE_ARGS", "").strip():
            environ["COMMANDLINE_ARGS"] = " ".join(install_plan.MAC_ARGS)
    for key, value in ((_recorded_torch(_torch_record()) or {}).get("env") or {}).items():
        environ.setdefault(key, value)


def _torch_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None and importlib.util.find_spec("torchvision") is not None


def prepare_torch(ns) -> int:
    """Install torch for this machine when needed (A1111's launch_utils: TORCH_COMMAND, --reinstall-torch,
    --skip-torch-cuda-test). Returns 0, or 1 with a message."""
    from modules import install_plan

    record = _torch_record()
    recorded = _recorded_torch(record)
    override = os.environ.get("TORCH_COMMAND", "").strip()
    if record is None:
        needed = ns.reinstall_torch or not _torch_installed()
    else:
        needed = (ns.reinstall_torch or recorded is None or not _torch_installed()
                  or bool(override and override != recorded.get("command")))
    if not needed:
        return 0
    facts = install_plan.probe(sys.prefix)
    plan = install_plan.choose(facts, reinstall=ns.reinstall_torch)
    command = override or plan.command
    print(f"Installing torch for this machine: {plan.reason}" if not override
          else "Installing torch with TORCH_COMMAND", flush=True)
    print(f"  {command}", flush=True)
    for warning in plan.warnings:
        print(f"  note: {warning}", flush=True)
    problem = install_plan.disk_problem(plan, facts.free_gb, sys.prefix)
    if problem:
        print(f"launch.py: error: {problem}", file=sys.stderr)
        return 1
    args = shlex.split(command)
    if args[:1] == ["pip"]:
        args = [sys.executable, "-m", *args]
    rc = subprocess.call(args)
    if rc != 0:
        print(f"launch.py: error: installing torch failed (exit status {rc}): {command}\n  Set TORCH_COMMAND in "
              f"webui-user.sh / webui-user.bat to another build, or install torch by hand.", file=sys.stderr)
        return 1
    if plan.gpu_expected and not override and not ns.skip_torch_cuda_test:
        check = subprocess.run([sys.executable, "-c", "import torch; assert torch.cuda.is_available()"],
                               capture_output=True)
        if check.returncode != 0:
            print(f"launch.py: error: torch is not able to use the GPU ({plan.reason}). Check the driver, or add "
                  f"--skip-torch-cuda-test to COMMANDLINE_ARGS to run on the CPU.", file=sys.stderr)
            return 1
    if record is not None:
        with contextlib.suppress(OSError):
            record.write_text(json.dumps({"command": command, "kind": plan.kind, "env": plan.env}), encoding="utf-8")
    return 0


def prepare_xformers(ns) -> None:
    """--xformers with xformers missing, or --reinstall-xformers: install ``$XFORMERS_PACKAGE`` (default xformers)
    from torch's index, with the installed torch pinned so pip cannot swap it for another build (A1111 installs
    it at launch too). A failure is a warning: attention falls back to PyTorch's SDPA."""
    import importlib.metadata as md
    import importlib.util
    import tempfile

    if not ns.xformers or (importlib.util.find_spec("xformers") is not None and not ns.reinstall_xformers):
        return
    package = os.environ.get("XFORMERS_PACKAGE", "").strip() or "xformers"
    args = [sys.executable, "-m", "pip", "install", *(["--force-reinstall", "--no-deps"]
                                                     if ns.reinstall_xformers else []), *shlex.split(package)]
    index = re.search(r"--(?:extra-)?index-url\s+(\S+)", (_recorded_torch(_torch_record()) or {}).get("command", ""))
    if index:
        args += ["--extra-index-url", index.group(1)]
    with tempfile.TemporaryDirectory() as tmp:
        pins = Path(tmp) / "torch-pin.txt"
        with contextlib.suppress(md.PackageNotFoundError):
            pins.write_text(f"torch=={md.version('torch')}\n", encoding="utf-8")
            args += ["-c", str(pins)]
        print(f"Installing xformers: {' '.join(args[3:])}", flush=True)
        rc = subprocess.call(args)
    if rc != 0:
        print(f"launch.py: warning: installing {package} failed (pip exit status {rc}); attention uses PyTorch's "
              f"SDPA instead. Set XFORMERS_PACKAGE to a build matching torch {_torch_version()}.", file=sys.stderr)


def _torch_version() -> str:
    import importlib.metadata as md

    try:
        return md.version("torch")
    except md.PackageNotFoundError:
        return "(not installed)"


def check_python(ns) -> int:
    from modules import install_plan

    problem = install_plan.python_problem(sys.version_info[:2], ns.skip_python_version_check)
    if problem:
        print(f"launch.py: error: {problem}", file=sys.stderr)
        return 1
    return 0


def update_extensions(ns, paths: Paths) -> None:
    """--update-all-extensions: ``git pull --ff-only`` in every enabled extension that is a git checkout, before
    their installers run (A1111 pulls them at launch); a failure (local changes, no network) is a warning."""
    from modules import extensions
    from modules.settings import Settings

    found = extensions.discover_configured(paths, Settings.load(paths.config_file), ns)
    for ext in extensions.active(found):
        if ext.is_builtin or not ext.is_git:
            continue
        try:
            print(extensions.update(ext), flush=True)
        except extensions.ExtensionError as e:
            print(f"launch.py: warning: {ext.name} not updated: {e}", file=sys.stderr)


def update_check() -> str:
    """--update-check: whether this checkout is behind its upstream branch (``git fetch``; A1111 asks GitHub)."""
    from modules import extensions

    state = extensions.check_for_updates(extensions.Extension("stable-diffusion-webui", ROOT, False))
    if state == "latest":
        return "You are up to date with the most recent version."
    if state == "behind":
        return "You are not up to date with the most recent version: run `git pull` in this folder to update."
    return f"Could not check for updates ({state.removeprefix('unknown: ')})."


def _run_extension_installers(ns, paths: Paths) -> None:
    """Each enabled extension's install.py (A1111 runs them at every launch); a failure is reported, not fatal."""
    from modules import extensions
    from modules.settings import Settings

    found = extensions.discover_configured(paths, Settings.load(paths.config_file), ns)
    for message in extensions.run_installers(extensions.active(found)):
        print(f"launch.py: warning: {message}", file=sys.stderr)


def no_checkpoint_hint(paths: Paths) -> str | None:
    """A1111 downloads SD 1.5 when there is no checkpoint; we never download on our own (and never block start-up):
    we say where a checkpoint goes and how to download one."""
    from modules.models.registry import CheckpointRegistry

    if CheckpointRegistry(paths, no_hashing=True).refresh():
        return None
    return (f"No checkpoint found in {paths.ckpt_dirs[0]}. Put a .safetensors/.ckpt file (or a diffusers folder) "
            f"there, or download one in the web UI: Models tab > Download a model (a direct URL, or a Hugging Face "
            f"repo id such as stable-diffusion-v1-5/stable-diffusion-v1-5 with the file "
            f"v1-5-pruned-emaonly.safetensors). Start with --no-download-sd-model to hide this message.")


def _setup_logging(ns) -> None:
    level = getattr(logging, ns.loglevel) if ns.loglevel else logging.INFO
    logging.basicConfig(level=logging.WARNING if not ns.loglevel else level,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("modules").setLevel(level)


def parse_with_extension_flags(argv: list[str] | None = None):
    """Parse the flags, including those extensions add in their preload.py (found from a first, lenient parse
    that only needs --data-dir and the extension switches)."""
    from modules import extension_runtime

    parser = cmd_args.build_parser()
    lenient = cmd_args.build_parser(add_help=False)  # --help is answered once, by the real parse below
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # a malformed flag: the real parse below reports it once
            first, _ = lenient.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit:
        first = None
    if first is not None:
        extension_runtime.run_preload(parser, Paths.from_args(first), args=first)
    return cmd_args.parse_args(argv, parser=parser)


def main(argv: list[str] | None = None) -> int:
    apply_machine_defaults()
    ns = parse_with_extension_flags(argv)
    _setup_logging(ns)
    if ns.version or ns.dump_sysinfo:  # before any install or import of the engine: these answer at once
        from modules import diagnostics

        if ns.version:
            print(diagnostics.version_line(), flush=True)
        if ns.dump_sysinfo:
            import time

            path = diagnostics.dump(Path(time.strftime("sysinfo-%Y-%m-%d-%H-%M.json")), ns)
            print(f"Wrote {path.resolve()}", flush=True)
        return 0

    if not ns.skip_install:
        rc = check_python(ns) or prepare_torch(ns) or prepare_environment()
        if rc:
            return rc
        prepare_xformers(ns)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

    paths = Paths.from_args(ns)
    try:
        paths.ensure_dirs()
    except OSError as e:
        print(f"launch.py: error: cannot create data folders: {e}", file=sys.stderr)
        return 1

    if ns.update_check:
        print(update_check(), flush=True)
    if ns.update_all_extensions:
        update_extensions(ns, paths)
    if not ns.skip_install:
        _run_extension_installers(ns, paths)

    hint = None if ns.no_download_sd_model else no_checkpoint_hint(paths)
    if hint:
        print(hint, flush=True)

    if ns.worker:
        from modules.cluster.node import join_as_node

        return join_as_node(ns)

    from modules import server

    return server.serve(ns, paths=paths)


def _exit_now(rc: int) -> None:
    """Exit without Python's module teardown: with torch, diffusers and gradio loaded it takes ~3 s on a small CPU,
    after everything that matters is done (the server stopped, files are written atomically and closed). The
    at-exit handlers (logging's flush, gradio's clean-up) still run."""
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(rc)


if __name__ == "__main__":
    try:
        status = main()
    except KeyboardInterrupt:
        status = 130
    _exit_now(status)

"""Command-line flags, with A1111's names and defaults.

``build_parser()`` returns a fresh parser (extensions' ``preload(parser)`` hooks may add flags to it before
parsing); ``parse_args(argv)`` parses ``argv`` plus the ``COMMANDLINE_ARGS`` environment variable (appended, split
like a shell would, as ``webui-user.sh`` does) and checks the values. Any bad flag or value ends the program with a
single ``launch.py: error: ...`` line on stderr and exit status 2 (never a traceback).

Importing this module is cheap (standard library only): ``launch.py`` uses it before the requirements are checked.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import NoReturn, Sequence

__all__ = ["build_parser", "parse_args", "ArgumentParser", "DEFAULT_PORT", "DEFAULT_API_PORT", "REPO_ROOT"]

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PORT = 7860  # the UI (Gradio's default)
DEFAULT_API_PORT = 7861  # --nowebui without --port (A1111's api_only())
PROG = "launch.py"


class ArgumentParser(argparse.ArgumentParser):
    """An ``argparse`` parser whose errors are one line on stderr (and exit status 2), without the usage block."""

    def error(self, message: str) -> NoReturn:  # noqa: D401 - argparse API
        message = " ".join(str(message).split())  # keep it on one line whatever argparse built
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# --- value checkers (argparse turns ArgumentTypeError into a one-line error naming the flag) -------------------

def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {value!r}: expected a number from 1 to 65535") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {value!r}: expected a number from 1 to 65535")
    return port


def _dir(value: str) -> str:
    """A directory path: it may not exist yet (it is created at start-up), but it must not be a file."""
    if not value.strip():
        raise argparse.ArgumentTypeError("empty path")
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{value!r} is a file, not a directory")
    return str(path)


def _file(value: str) -> str:
    """A path to a file that may not exist yet (settings files), but that must not be a directory."""
    if not value.strip():
        raise argparse.ArgumentTypeError("empty path")
    path = Path(value).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{value!r} is a directory, not a file")
    return str(path)


def _existing_model(value: str) -> str:
    """``--ckpt``: an existing checkpoint file or diffusers folder."""
    path = Path(value).expanduser()
    if not path.exists():
        raise argparse.ArgumentTypeError(f"checkpoint not found: {value!r}")
    if path.is_dir() and not (path / "model_index.json").is_file():
        raise argparse.ArgumentTypeError(f"{value!r} is a directory without model_index.json (not a diffusers model)")
    return str(path)


def _auth(value: str) -> str:
    """``user:password[,user2:password2...]``."""
    for cred in value.split(","):
        cred = cred.strip()
        if cred and (":" not in cred or not cred.split(":", 1)[0]):
            raise argparse.ArgumentTypeError("expected user:password[,user:password...]")
    return value


def _auth_file(value: str) -> str:
    """A file of ``user:password`` entries (commas or newlines between them), read now so that a missing or empty
    file stops the start instead of leaving the server without a login."""
    from modules.auth import read_login_file

    path = _file(value)
    try:
        read_login_file(path)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return path


def _non_negative_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {value!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"invalid number {value!r}: must be 0 or more")
    return n


_USE_CPU_CHOICES = ("all", "sd", "interrogate", "gfpgan", "swinir", "esrgan", "scunet", "codeformer")


def _use_cpu(value: str) -> str:
    value = value.strip().lower()
    if value not in _USE_CPU_CHOICES:
        raise argparse.ArgumentTypeError(f"invalid choice {value!r} (choose from {', '.join(_USE_CPU_CHOICES)})")
    return value


def build_parser(add_help: bool = True) -> ArgumentParser:
    """A new parser with A1111's flags (names, defaults, value types)."""
    p = ArgumentParser(prog=PROG, description="Stable Diffusion web UI (A1111-compatible flags)", add_help=add_help,
                       conflict_handler="resolve",  # an extension's preload may redefine a flag, as on A1111
                       formatter_class=lambda prog: argparse.HelpFormatter(prog, max_help_position=40, width=120))

    # Paths and models
    g = p.add_argument_group("paths and models")
    add = g.add_argument
    add("--data-dir", type=_dir, default=str(REPO_ROOT),
        help="base path where all user data is stored (default: the program's folder)")
    add("--models-dir", type=_dir, default=None, help="base path for models (default: <data-dir>/models)")
    add("--ckpt", type=_existing_model, default=None,
        help="path to a checkpoint to add to the list and load by default")
    add("--ckpt-dir", type=_dir, default=None, help="extra directory with Stable Diffusion checkpoints")
    add("--vae-dir", type=_dir, default=None, help="extra directory with VAE files")
    add("--text-encoder-dir", type=_dir, default=None,
        help="extra directory with text encoder files for Flux/SD3 (CLIP-L, CLIP-G, T5-XXL)")
    add("--controlnet-dir", type=_dir, default=None,
        help="extra directory with ControlNet models (besides <models-dir>/ControlNet)")
    add("--controlnet-annotator-models-path", type=_dir, default=None,
        help="directory with ControlNet preprocessor weights (default: <models-dir>/ControlNetPreprocessor)")
    add("--gfpgan-models-path", type=_dir, default=None,
        help="directory with GFPGAN model file(s) (default: <models-dir>/GFPGAN)")
    add("--codeformer-models-path", type=_dir, default=None,
        help="directory with CodeFormer model file(s) (default: <models-dir>/Codeformer)")
    add("--lora-dir", type=_dir, default=None, help="directory with LoRA networks (default: <models-dir>/Lora)")
    add("--embeddings-dir", type=_dir, default=None,
        help="directory with textual inversion embeddings (default: <data-dir>/embeddings)")
    add("--hypernetwork-dir", type=_dir, default=None,
        help="directory with hypernetworks (default: <models-dir>/hypernetworks)")
    add("--ui-settings-file", type=_file, default=None, help="settings file (default: <data-dir>/config.json)")
    add("--ui-config-file", type=_file, default=None,
        help="UI defaults file (default: <data-dir>/ui-config.json)")
    add("--styles-file", type=_file, action="append", default=None,
        help="styles file; may be given more than once, the first one receives new styles "
             "(default: <data-dir>/styles.csv)")
    add("--no-download-sd-model", action="store_true",
        help="do not offer to download a checkpoint when none is found")
    add("--no-hashing", action="store_true", help="do not compute sha256 hashes of checkpoints")

    # Server
    g = p.add_argument_group("server")
    add = g.add_argument
    add("--port", type=_port, default=None,
        help=f"port to listen on (default: {DEFAULT_PORT}, or {DEFAULT_API_PORT} with --nowebui)")
    add("--listen", action="store_true",
        help="listen on all network interfaces (0.0.0.0) so other computers can connect")
    add("--server-name", type=str, default=None, help="host name / address to bind to (overrides --listen)")
    add("--api", action="store_true", help="serve the HTTP API (/sdapi/v1) next to the UI")
    add("--nowebui", action="store_true", help="serve the HTTP API only, without the UI")
    add("--api-auth", type=_auth, default=None, help="HTTP basic auth for the API, user:password[,user2:pw2...]")
    add("--api-auth-path", type=_auth_file, default=None,
        help="file with user:password entries (separated by commas or newlines) for the API")
    add("--auth", type=_auth, default=None, help="login for both the UI and the API, user:password[,user2:pw2...]")
    add("--auth-path", type=_auth_file, default=None,
        help="file with user:password entries for both the UI and the API")
    add("--api-server-stop", action="store_true", help="enable the server-stop/restart/kill API endpoints")
    add("--api-log", action="store_true", help="log every API request")
    add("--gradio-auth", type=_auth, default=None, help="UI login, user:password[,user2:pw2...]")
    add("--gradio-auth-path", type=_auth_file, default=None,
        help="file with user:password entries (separated by commas or newlines) for the UI login")
    add("--cors-allow-origins", type=str, default=None, help="allowed CORS origins, comma-separated")
    add("--cors-allow-origins-regex", type=str, default=None, help="allowed CORS origins, as a regular expression")
    add("--timeout-keep-alive", type=_non_negative_int, default=30, help="HTTP keep-alive timeout in seconds")
    add("--share", action="store_true",
        help="also serve at a public https://*.gradio.live address (Gradio's share tunnel; needs internet)")
    add("--autolaunch", action="store_true", help="open the UI in the system's default browser at start-up")
    add("--theme", type=str, default=None, choices=["light", "dark"], help="force the UI's light or dark theme")
    add("--enable-insecure-extension-access", action="store_true",
        help="allow installing extensions from the UI even with --listen")
    add("--disable-all-extensions", action="store_true", help="do not load any extension")
    add("--disable-extra-extensions", action="store_true", help="load only the built-in extensions")
    add("--safe-mode", action="store_true",
        help="start with every third-party extension off (for this run only; to find one that breaks the app)")
    add("--hide-ui-dir-config", action=argparse.BooleanOptionalAction, default=None,
        help="hide the output-folder settings in the UI and refuse changing them through the API (options and "
             "override_settings); on by default with --listen, --share or a --server-name other computers reach, "
             "--no-hide-ui-dir-config keeps them editable there")
    add("--freeze-settings", action="store_true", help="do not allow settings to be changed")
    add("--test-server", action="store_true", help="configure the server for the test suite")

    # Several GPUs or machines (modules/cluster, needs requirements-cluster.txt)
    g = p.add_argument_group("cluster")
    g.add_argument("--cluster", type=str, default=None, metavar="auto|ray://HOST:PORT|address=HOST:PORT",
                   help="run the queue's jobs on Ray workers: 'auto' starts one per GPU on this machine (or "
                        "--cluster-workers CPU workers); an address joins an existing Ray cluster")
    g.add_argument("--cluster-workers", type=_non_negative_int, default=0, metavar="N",
                   help="how many workers --cluster starts (default: one per GPU; 2 on a machine without one)")
    g.add_argument("--worker", action="store_true",
                   help="make this machine a node of the Ray cluster at --cluster address=HOST:PORT (its GPUs take "
                        "the head's jobs) instead of serving the UI; runs until stopped")

    # Devices, memory, precision
    g = p.add_argument_group("devices, memory and precision")
    add = g.add_argument
    add("--use-cpu", type=_use_cpu, nargs="+", default=[], metavar="MODULE",
        help="run these modules on the CPU: all, sd, interrogate, gfpgan, swinir, esrgan, scunet, codeformer")
    add("--device-id", type=str, default=None, help="CUDA device to use (as in CUDA_VISIBLE_DEVICES)")
    add("--threads", type=_non_negative_int, default=0, metavar="N",
        help="CPU threads torch uses for generation and training (default 0: chosen per job from its size and "
             "the cores other programs leave free; see docs/architecture.md)")
    add("--no-half", action="store_true", help="do not switch the model to 16-bit floats")
    add("--no-half-vae", action="store_true", help="do not switch the VAE to 16-bit floats")
    add("--upcast-sampling", action="store_true",
        help="with a 16-bit model, keep the sampler's latents and CFG in fp32 (the UNet still computes in 16 bits; "
             "A1111's Mac default)")
    add("--precision", type=str, default="autocast", choices=["full", "half", "autocast"],
        help="evaluate at this precision")
    add("--opt-sdp-attention", action="store_true", help="use scaled dot product attention")
    add("--opt-sdp-no-mem-attention", action="store_true", help="use scaled dot product attention without memory-efficient kernels")
    add("--xformers", action="store_true", help="use xformers attention (installed at start when missing)")
    add("--force-enable-xformers", action="store_true", help="use xformers even if the check fails")
    add("--opt-split-attention", action="store_true",
        help="compute attention in slices (less memory, slower): the low-memory fallback")
    add("--opt-sub-quad-attention", action="store_true", help="as --opt-split-attention (sliced attention)")
    add("--disable-opt-split-attention", action="store_true", help="never slice attention")
    add("--opt-channelslast", action="store_true", help="use channels-last memory format")
    add("--medvram", action="store_true", help="keep only one model part on the GPU at a time (less VRAM, slower)")
    add("--medvram-sdxl", action="store_true", help="--medvram for SDXL models only")
    add("--lowvram", action="store_true", help="offload aggressively to the CPU (least VRAM, slowest)")
    add("--always-gpu", action="store_true", help="keep every part of the model on the GPU (no offload)")
    add("--always-offload-from-vram", action="store_true",
        help="move each part of the model off the GPU once it is used (Forge; as --medvram)")
    add("--gpu-weights-mb", type=_non_negative_int, default=0, metavar="MB",
        help="at most this many MB of the model's weights on the GPU; the rest is offloaded (Forge's GPU Weights)")
    add("--pin-shared-memory", action="store_true",
        help="keep offloaded weights in pinned host memory (faster transfers, more locked RAM)")
    add("--compile", action="store_true",
        help="compile the denoiser with torch.compile: faster steps after a slow first picture of each size")
    add("--auto-retry-oom", action="store_true",
        help="when the GPU runs out of memory, retry the job once with the next offload mode")
    add("--disable-nan-check", action="store_true", help="do not check generated images/latents for NaNs")
    add("--disable-safe-unpickle", action="store_true", help="accepted for compatibility; .ckpt files are always "
                                                               "loaded with weights_only")

    # Start-up
    g = p.add_argument_group("start-up")
    add = g.add_argument
    add("--skip-install", action="store_true", help="do not check/install requirements at start-up")
    add("--version", action="store_true", help="print the version (and commit, Python, torch) and exit")
    add("--dump-sysinfo", action="store_true",
        help="write versions, device, memory and flags (logins hidden) to sysinfo-<date>.json here and exit")
    add("--skip-prepare-environment", action="store_true", help="same as --skip-install")
    add("--skip-torch-cuda-test", action="store_true", help="after installing a GPU build of torch, do not check that it can use the GPU")
    add("--skip-python-version-check", action="store_true", help="start on a Python newer than the tested ones (3.10 to 3.13)")
    add("--skip-version-check", action="store_true", help="do not check torch/xformers versions")
    add("--reinstall-torch", action="store_true",
        help="install torch again (the build for this machine, or $TORCH_COMMAND) before starting")
    add("--reinstall-xformers", action="store_true",
        help="with --xformers: install xformers again ($XFORMERS_PACKAGE, default xformers) before starting")
    add("--update-check", action="store_true",
        help="at start, say whether this checkout is behind its upstream branch (git fetch)")
    add("--update-all-extensions", action="store_true",
        help="at start, git pull every enabled extension installed from git (before their install.py run)")
    add("--do-not-download-clip", action="store_true", help="accepted for compatibility (models are never downloaded)")
    add("--loglevel", type=str, default=None, choices=["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"],
        help="log level")
    add("--log-startup", action="store_true", help="print start-up timings")
    add("-f", action="store_true", help=argparse.SUPPRESS)  # A1111: allows running as root
    return p


def _split_env(value: str, parser: ArgumentParser) -> list[str]:
    try:
        return shlex.split(value)
    except ValueError as e:
        parser.error(f"COMMANDLINE_ARGS: {e}")


def parse_args(argv: Sequence[str] | None = None, env: dict | None = None,
               parser: ArgumentParser | None = None) -> argparse.Namespace:
    """Parse ``argv`` (default ``sys.argv[1:]``) followed by ``$COMMANDLINE_ARGS`` and resolve dependent defaults.

    After parsing, ``ns.port`` is always set (7860, or 7861 with ``--nowebui``),
    ``--skip-prepare-environment`` implies ``--skip-install``, and ``ns.hide_ui_dir_config`` is a bool (on by
    default when other computers can connect). Errors exit with status 2 and one line on stderr.
    """
    parser = parser or build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    env = os.environ if env is None else env
    extra = env.get("COMMANDLINE_ARGS", "")
    if extra.strip():
        argv += _split_env(extra, parser)
    ns = parser.parse_args(argv)

    if ns.port is None:
        ns.port = DEFAULT_API_PORT if ns.nowebui else DEFAULT_PORT
    if ns.skip_prepare_environment:
        ns.skip_install = True
    if getattr(ns, "hide_ui_dir_config", None) is None:  # other computers may not choose where files are written
        from modules.auth import is_exposed

        ns.hide_ui_dir_config = is_exposed(ns)
    return ns


# What a cluster's worker does not take from the head's flags: serving, logins and the cluster itself.
NOT_FOR_WORKERS = ("port", "listen", "share", "server_name", "api", "nowebui", "cluster", "cluster_workers", "worker",
                   "version", "dump_sysinfo",
                   "api_auth", "api_auth_path", "gradio_auth", "gradio_auth_path", "auth", "auth_path",
                   "api_server_stop", "cors_allow_origins", "cors_allow_origins_regex", "tls_keyfile", "tls_certfile",
                   "hide_ui_dir_config", "enable_insecure_extension_access", "subpath")


def worker_argv(ns: argparse.Namespace) -> list[str]:
    """The flags of `ns` a cluster worker is started with (those that differ from the defaults: data folder,
    model folders, device, precision, memory), without the serving, login and cluster ones."""
    out: list[str] = []
    for action in build_parser()._actions:
        dest = action.dest
        if not action.option_strings or dest in NOT_FOR_WORKERS or not hasattr(ns, dest):
            continue
        value = getattr(ns, dest)
        if value == action.default or value is None:
            continue
        flag = action.option_strings[-1] if action.option_strings[-1].startswith("--") else action.option_strings[0]
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            out.append(flag)
        elif isinstance(value, (list, tuple)):
            out += [flag, *map(str, value)]
        else:
            out += [flag, str(value)]
    return out


def __getattr__(name: str):
    """A1111's module-level `parser` (extensions read flag defaults from it)."""
    if name == "parser":
        return build_parser()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

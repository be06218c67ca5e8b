"""Which torch build to install on this machine, and what else the installers set up: one decision table shared by
``webui.sh``, ``webui.bat`` and ``launch.py`` (standard library only: it runs before anything is installed).

The facts come from the machine (``probe``: the OS, the CPU, ``nvidia-smi``'s driver CUDA version, an AMD card on
Linux from ``lspci``/``rocminfo``, free disk); ``choose`` turns them into a ``TorchPlan`` — the pip command (A1111's
``TORCH_COMMAND`` form: ``pip install ...``), the environment and flags that build needs (A1111's Mac defaults,
ROCm's ``HSA_OVERRIDE_GFX_VERSION``) and what to tell the user. Without this, ``pip install torch`` takes a
multi-GB CUDA build on a CPU-only box and a CPU build on a Windows machine with an NVIDIA card.

As a script: ``python modules/install_plan.py python`` checks the interpreter (webui.sh / webui.bat run it before
making the venv); ``python modules/install_plan.py show`` prints the plan for this machine in words.
"""
from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

#: Python versions the requirements install on (torch, gradio 6); 3.11 is the one tested.
SUPPORTED_PYTHON = ((3, 10), (3, 13))
RECOMMENDED_PYTHON = (3, 11)
#: ``install_plan.py python``'s exit status when the version does not fit (its message printed); any other
#: failure means an interpreter too old to run this file at all.
PYTHON_PROBLEM = 3

TORCH_INDEX = "https://download.pytorch.org/whl/"
#: CUDA builds of torch, newest first: (index suffix, the oldest driver CUDA version that runs it).
CUDA_BUILDS = (("cu130", (13, 0)), ("cu128", (12, 8)), ("cu126", (12, 6)), ("cu118", (11, 8)))
ROCM_BUILD = "rocm6.4"
#: About how much a venv with that torch build and the requirements takes (GB), for the free-space check.
DISK_GB = {"cuda": 9.0, "rocm": 16.0, "mps": 3.0, "cpu": 3.0}
#: A1111's webui-macos-env.sh defaults: MPS has no autocast for fp16, its VAE overflows in fp16.
MAC_ARGS = ("--skip-torch-cuda-test", "--upcast-sampling", "--no-half-vae", "--use-cpu", "interrogate")


@dataclass(frozen=True)
class MachineFacts:
    system: str  # platform.system(): Linux, Windows, Darwin
    machine: str  # platform.machine(): x86_64, AMD64, arm64, aarch64
    python: tuple[int, int]
    nvidia_cuda: tuple[int, int] | None = None  # the driver's CUDA version from nvidia-smi; None: no NVIDIA card
    nvidia_name: str = ""
    amd_gpu: str = ""  # the card's name (lspci / rocminfo) on Linux; "" when none
    free_gb: float | None = None  # free disk where the venv goes


@dataclass(frozen=True)
class TorchPlan:
    kind: str  # "cuda", "rocm", "mps", "cpu"
    command: str  # A1111's TORCH_COMMAND form: "pip install torch torchvision ..."
    reason: str  # one line: what was found and what is installed for it
    env: dict[str, str] = field(default_factory=dict)
    extra_args: tuple[str, ...] = ()  # flags added to COMMANDLINE_ARGS
    warnings: tuple[str, ...] = ()
    gpu_expected: bool = False  # torch.cuda must work after install (the check --skip-torch-cuda-test skips)

    @property
    def disk_gb(self) -> float:
        return DISK_GB[self.kind]


def python_problem(version: tuple[int, int], skip_check: bool = False) -> str | None:
    """What is wrong with this Python for the requirements, in words; None when it fits. A too-new Python is only
    a warning with ``--skip-python-version-check`` (A1111's flag), a too-old one always fails."""
    low, high = SUPPORTED_PYTHON
    v = ".".join(map(str, version))
    wanted = f"{low[0]}.{low[1]} to {high[0]}.{high[1]} ({RECOMMENDED_PYTHON[0]}.{RECOMMENDED_PYTHON[1]} recommended)"
    if version < low:
        return (f"Python {v} is too old: this program needs Python {wanted}. Install Python "
                f"{RECOMMENDED_PYTHON[0]}.{RECOMMENDED_PYTHON[1]} and point PYTHON at it in webui-user.sh / "
                f"webui-user.bat.")
    if version > high and not skip_check:
        return (f"Python {v} is newer than this program is tested with ({wanted}): torch and other requirements "
                f"may have no release for it yet. Install Python {RECOMMENDED_PYTHON[0]}.{RECOMMENDED_PYTHON[1]} "
                f"(PYTHON in webui-user.sh / webui-user.bat), or add --skip-python-version-check to try anyway.")
    return None


def _pip(index: str, reinstall: bool = False) -> str:
    force = " --force-reinstall" if reinstall else ""
    return f"pip install{force} torch torchvision --extra-index-url {TORCH_INDEX}{index}"


def cuda_build(driver: tuple[int, int]) -> str | None:
    """The newest CUDA build of torch the driver runs (a driver runs builds for its CUDA version and older)."""
    for suffix, needs in CUDA_BUILDS:
        if driver >= needs:
            return suffix
    return None


def _gfx_override(name: str) -> dict[str, str]:
    """ROCm has kernels for a few chips; A1111 points related consumer chips at them."""
    low = name.lower()
    if "navi 2" in low or re.search(r"\brx 6\d{3}", low):
        return {"HSA_OVERRIDE_GFX_VERSION": "10.3.0"}
    if "renoir" in low or "cezanne" in low:
        return {"HSA_OVERRIDE_GFX_VERSION": "9.0.0"}
    return {}


def choose(facts: MachineFacts, reinstall: bool = False) -> TorchPlan:
    """The torch build for the machine (NVIDIA → CUDA, AMD on Linux → ROCm, Apple silicon → MPS, else CPU)."""
    system, machine = facts.system, facts.machine.lower()
    if facts.nvidia_cuda is not None and system in ("Linux", "Windows"):
        driver = ".".join(map(str, facts.nvidia_cuda))
        card = facts.nvidia_name or "NVIDIA GPU"
        suffix = cuda_build(facts.nvidia_cuda)
        if suffix is not None:
            return TorchPlan("cuda", _pip(suffix, reinstall), gpu_expected=True,
                             reason=f"{card} (driver for CUDA {driver}): torch's {suffix} build")
        return TorchPlan("cpu", _pip("cpu", reinstall),
                         reason=f"{card} found, but its driver (CUDA {driver}) is older than any CUDA build of "
                                f"torch supports: torch's CPU build",
                         warnings=(f"Update the NVIDIA driver (CUDA {'.'.join(map(str, CUDA_BUILDS[-1][1]))} or "
                                   f"newer) to use the GPU; until then images are made on the CPU (slow).",))
    if facts.amd_gpu and system == "Linux":
        return TorchPlan("rocm", _pip(ROCM_BUILD, reinstall), env=_gfx_override(facts.amd_gpu), gpu_expected=True,
                         reason=f"AMD GPU ({facts.amd_gpu}): torch's {ROCM_BUILD} build")
    if system == "Darwin" and machine in ("arm64", "aarch64"):
        return TorchPlan("mps", f"pip install{' --force-reinstall' if reinstall else ''} torch torchvision",
                         env={"PYTORCH_ENABLE_MPS_FALLBACK": "1"}, extra_args=MAC_ARGS,
                         reason="Apple silicon: torch's default build (Metal, MPS)")
    warnings = ()
    if facts.amd_gpu and system == "Windows":
        warnings = ("torch has no ROCm build for Windows: the AMD card is not used (run on Linux for ROCm).",)
    elif system == "Darwin":
        warnings = ("torch has no GPU build for Intel Macs: images are made on the CPU (slow).",)
    else:
        warnings = ("No NVIDIA or AMD GPU found: images are made on the CPU (minutes per 512x512 image). If there "
                    "is a GPU, install its driver (nvidia-smi must work) or set TORCH_COMMAND in webui-user.",)
    return TorchPlan("cpu", _pip("cpu", reinstall), reason="no usable GPU: torch's CPU build", warnings=warnings)


def disk_problem(plan: TorchPlan, free_gb: float | None, where: str) -> str | None:
    if free_gb is None or free_gb >= plan.disk_gb:
        return None
    return (f"Not enough disk space: torch's {plan.kind} build and the requirements need about {plan.disk_gb:.0f} GB "
            f"in {where}, {free_gb:.1f} GB are free. Free some space or set VENV_DIR in webui-user to a disk with "
            f"room.")


# --- probing the machine ---

def _run(args: list[str]) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def driver_cuda(output: str) -> tuple[int, int] | None:
    """The CUDA version the driver supports, from nvidia-smi's table header ("CUDA Version: 12.8")."""
    m = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", output)
    return (int(m.group(1)), int(m.group(2))) if m else None


def amd_name(lspci: str, rocminfo: str = "") -> str:
    """An AMD display controller in lspci's list (A1111's webui.sh looks the same way), else rocminfo's gfx name."""
    for line in lspci.splitlines():
        if re.search(r"VGA|Display|3D", line) and re.search(r"AMD|ATI|Advanced Micro Devices", line):
            return line.split(":", 2)[-1].strip()
    m = re.search(r"Marketing Name:\s*(AMD .+)", rocminfo)
    return m.group(1).strip() if m else ""


def probe(venv_dir: str = ".") -> MachineFacts:
    cuda, name = None, ""
    if shutil.which("nvidia-smi"):
        cuda = driver_cuda(_run(["nvidia-smi"]))
        name = _run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]).strip().splitlines()[:1]
        name = name[0].strip() if name else ""
        if cuda is None and name:  # a driver too old to print its CUDA version
            cuda = (0, 0)
    amd = ""
    if platform.system() == "Linux" and cuda is None:
        amd = amd_name(_run(["lspci"]) if shutil.which("lspci") else "",
                       _run(["rocminfo"]) if shutil.which("rocminfo") else "")
    where = os.path.abspath(venv_dir)
    while not os.path.exists(where):
        where = os.path.dirname(where)
    try:
        free = shutil.disk_usage(where).free / 1024 ** 3
    except OSError:
        free = None
    return MachineFacts(system=platform.system(), machine=platform.machine(), python=sys.version_info[:2],
                        nvidia_cuda=cuda, nvidia_name=name, amd_gpu=amd, free_gb=free)


def main(argv: list[str]) -> int:
    if len(argv) < 1 or argv[0] not in ("show", "python"):
        print("usage: install_plan.py show [--reinstall-torch] | python [--skip-python-version-check]",
              file=sys.stderr)
        return 2
    if argv[0] == "python":
        problem = python_problem(sys.version_info[:2], "--skip-python-version-check" in argv)
        if problem:
            print(problem, file=sys.stderr)
            return PYTHON_PROBLEM
        return 0
    plan = choose(probe(os.environ.get("VENV_DIR") or "venv"), reinstall="--reinstall-torch" in argv)
    print(f"torch for this machine: {plan.reason}\n  {plan.command}")
    for w in plan.warnings:
        print(f"  note: {w}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The installers (webui.sh, webui.bat, launch.py's torch step) pick the torch build a user's machine needs: the
decision table (modules/install_plan.py) for each kind of machine, the Windows scripts' structure, and webui.sh run
for real in a fresh venv with a fake nvidia-smi on PATH or none, installing from a local wheel folder."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import launch
from modules import install_plan as ip

ROOT = Path(__file__).resolve().parent.parent


def _facts(system="Linux", machine="x86_64", cuda=None, name="", amd="", python=(3, 11), free=100.0):
    return ip.MachineFacts(system=system, machine=machine, python=python, nvidia_cuda=cuda, nvidia_name=name,
                           amd_gpu=amd, free_gb=free)


# --- the decision table ---

@pytest.mark.parametrize("system", ["Linux", "Windows"])
@pytest.mark.parametrize("driver, build", [((13, 1), "cu130"), ((12, 8), "cu128"), ((12, 6), "cu126"),
                                           ((12, 4), "cu118"), ((11, 8), "cu118")])
def test_an_nvidia_card_gets_the_newest_cuda_build_its_driver_runs(system, driver, build):
    plan = ip.choose(_facts(system=system, cuda=driver, name="NVIDIA GeForce RTX 4090"))
    assert plan.kind == "cuda" and plan.gpu_expected
    assert plan.command == f"pip install torch torchvision --extra-index-url https://download.pytorch.org/whl/{build}"
    assert "RTX 4090" in plan.reason and not plan.extra_args


def test_a_driver_too_old_for_any_cuda_build_gets_the_cpu_build_and_says_update_the_driver():
    plan = ip.choose(_facts(cuda=(11, 4)))
    assert plan.kind == "cpu" and plan.command.endswith("/whl/cpu") and not plan.gpu_expected
    assert "Update the NVIDIA driver" in plan.warnings[0]


def test_no_gpu_gets_the_cpu_build_not_the_multi_gb_cuda_one_and_says_it_will_be_slow():
    plan = ip.choose(_facts())
    assert plan.kind == "cpu" and plan.command.endswith("--extra-index-url https://download.pytorch.org/whl/cpu")
    assert "CPU" in plan.warnings[0] and "TORCH_COMMAND" in plan.warnings[0]


@pytest.mark.parametrize("card, override", [
    ("Advanced Micro Devices, Inc. [AMD/ATI] Navi 21 [Radeon RX 6800/6800 XT / 6900 XT]", "10.3.0"),
    ("Advanced Micro Devices, Inc. [AMD/ATI] Renoir", "9.0.0"),
    ("Advanced Micro Devices, Inc. [AMD/ATI] Navi 31 [Radeon RX 7900 XT/7900 XTX]", None)])
def test_an_amd_card_on_linux_gets_rocm_with_the_gfx_override_its_chip_needs(card, override):
    plan = ip.choose(_facts(amd=card))
    assert plan.kind == "rocm" and plan.command.endswith(f"/whl/{ip.ROCM_BUILD}") and plan.gpu_expected
    assert plan.env.get("HSA_OVERRIDE_GFX_VERSION") == override


def test_an_amd_card_on_windows_gets_the_cpu_build_and_is_told_why():
    plan = ip.choose(_facts(system="Windows", machine="AMD64", amd="AMD Radeon RX 7900"))
    assert plan.kind == "cpu" and "no ROCm build for Windows" in plan.warnings[0]


def test_apple_silicon_gets_the_default_build_with_a1111s_mac_defaults():
    plan = ip.choose(_facts(system="Darwin", machine="arm64"))
    assert plan.kind == "mps" and plan.command == "pip install torch torchvision"
    assert plan.env == {"PYTORCH_ENABLE_MPS_FALLBACK": "1"}
    assert {"--upcast-sampling", "--no-half-vae", "--skip-torch-cuda-test"} <= set(plan.extra_args)


def test_an_intel_mac_gets_the_cpu_build():
    plan = ip.choose(_facts(system="Darwin", machine="x86_64"))
    assert plan.kind == "cpu" and "Intel Macs" in plan.warnings[0]


def test_reinstall_forces_pip_to_install_again():
    assert ip.choose(_facts(cuda=(12, 8)), reinstall=True).command.startswith("pip install --force-reinstall torch")


def test_python_versions_outside_the_tested_range_are_named_with_what_to_do():
    assert ip.python_problem((3, 11)) is None and ip.python_problem((3, 10)) is None
    old = ip.python_problem((3, 9))
    assert "Python 3.9 is too old" in old and "3.10 to 3.13" in old and "PYTHON" in old
    assert ip.python_problem((3, 9), skip_check=True) == old  # too old never starts
    assert "--skip-python-version-check" in ip.python_problem((3, 14))
    assert ip.python_problem((3, 14), skip_check=True) is None


def test_short_disk_is_named_with_the_space_needed_and_free():
    plan = ip.choose(_facts(cuda=(12, 8)))
    message = ip.disk_problem(plan, 2.5, "/home/me/webui/venv")
    assert "9 GB" in message and "2.5 GB are free" in message and "/home/me/webui/venv" in message
    assert ip.disk_problem(plan, 50.0, "x") is None and ip.disk_problem(plan, None, "x") is None


def test_the_machine_is_read_from_nvidia_smi_and_lspci_output():
    header = "| NVIDIA-SMI 570.86.15      Driver Version: 570.86.15      CUDA Version: 12.8     |"
    assert ip.driver_cuda(header) == (12, 8) and ip.driver_cuda("NVIDIA-SMI has failed") is None
    lspci = ("00:02.0 VGA compatible controller: Intel Corporation UHD Graphics 630\n"
             "03:00.0 VGA compatible controller: Advanced Micro Devices, Inc. [AMD/ATI] Navi 21 [Radeon RX 6800]\n")
    assert "Navi 21" in ip.amd_name(lspci) and ip.amd_name("00:02.0 VGA compatible controller: Intel UHD") == ""


def test_launch_applies_the_mac_defaults_only_where_the_user_gave_no_flags(monkeypatch):
    monkeypatch.setattr(launch.platform, "system", lambda: "Darwin")
    monkeypatch.setattr(launch.platform, "machine", lambda: "arm64")
    env = {"COMMANDLINE_ARGS": ""}
    launch.apply_machine_defaults(env)
    assert env["COMMANDLINE_ARGS"].split() == list(ip.MAC_ARGS) and env["PYTORCH_ENABLE_MPS_FALLBACK"] == "1"
    env = {"COMMANDLINE_ARGS": "--listen"}
    launch.apply_machine_defaults(env)
    assert env["COMMANDLINE_ARGS"] == "--listen"


def test_the_shell_scripts_share_the_python_range_and_exit_status_of_the_decision_module():
    sh = (ROOT / "webui.sh").read_text()
    bat = (ROOT / "webui.bat").read_bytes().decode()
    low, high = ip.SUPPORTED_PYTHON
    wanted = f"{low[0]}.{low[1]} to {high[0]}.{high[1]}"
    assert wanted in sh and wanted in bat
    assert f"    {ip.PYTHON_PROBLEM}) exit 1 ;;" in sh
    assert f"if errorlevel {ip.PYTHON_PROBLEM} goto :end_error" in bat
    subprocess.run(["bash", "-n", str(ROOT / "webui.sh"), str(ROOT / "webui-user.sh")], check=True)


@pytest.mark.parametrize("name", ["webui.bat", "webui-user.bat"])
def test_the_windows_scripts_are_well_formed_batch_files(name):
    """No cmd.exe here: what breaks a batch file when edited on Linux — LF line ends, a goto to a missing label,
    unbalanced parentheses — is checked; the decisions themselves are the module's, tested above."""
    raw = (ROOT / name).read_bytes()
    assert raw.count(b"\r\n") == raw.count(b"\n") > 0, "batch files need CRLF line ends"
    text = raw.decode("ascii")
    lines = text.split("\r\n")
    assert lines[0] == "@echo off"
    labels = {line[1:].strip().lower() for line in lines if line.startswith(":")}
    for target in re.findall(r"goto\s+:?(\w+)", text, flags=re.I):
        assert target.lower() in labels | {"eof"}, f"goto {target} has no label"
    for line in lines:
        code = re.sub(r'"[^"]*"', "", line)
        if not code.lower().startswith("rem") and not code.lower().startswith("echo"):
            assert code.count("(") == code.count(")"), line
    if name == "webui-user.bat":
        for var in ("COMMANDLINE_ARGS", "PYTHON", "VENV_DIR", "TORCH_COMMAND"):
            assert f"set {var}=" in text
        assert "call webui.bat %*" in text
    else:
        assert '"%PYTHON%" "%~dp0modules\\install_plan.py" python' in text
        assert '"%PYTHON%" -m venv "%VENV_DIR%"' in text and '"%~dp0launch.py" %*' in text


# --- webui.sh for real ---

FAKE_NVIDIA_SMI = """#!/bin/sh
if [ "$1" = "--query-gpu=name" ]; then echo "NVIDIA GeForce RTX 4090"; exit 0; fi
echo "| NVIDIA-SMI 570.86.15      Driver Version: 570.86.15      CUDA Version: 12.8     |"
"""


def _fresh_copy(dest: Path) -> Path:
    """The project's files as a fresh checkout has them (git's list when there is one)."""
    try:
        files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        names = [n for n in files.decode().split("\0") if n and (ROOT / n).is_file()]
    except (OSError, subprocess.CalledProcessError):
        names = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file() and ".git" not in p.parts]
    for name in names:
        if name.startswith(("tests/", "bench/", "docs/")):
            continue
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    return dest


def _webui_sh(app: Path, tmp: Path, venv: str, args: str, nvidia: bool, wait_for_port: int | None = None):
    """Run webui.sh as a user would, with pip limited to a local wheel folder; a fake nvidia-smi first on PATH
    (or a PATH with none), and the venv seeing this machine's packages (installing torch's 3 GB again is not
    what is tested: the choice, the steps and the start are)."""
    bin_dir = tmp / ("bin-nvidia" if nvidia else "bin")
    bin_dir.mkdir(exist_ok=True)
    if nvidia:
        (bin_dir / "nvidia-smi").write_text(FAKE_NVIDIA_SMI)
        (bin_dir / "nvidia-smi").chmod(0o755)
    (tmp / "wheels").mkdir(exist_ok=True)
    path = [str(bin_dir)] + [p for p in os.environ["PATH"].split(os.pathsep)
                             if p and not (Path(p) / "nvidia-smi").exists()]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "TORCH_COMMAND", "COMMANDLINE_ARGS"))}
    env.update(PATH=os.pathsep.join([str(Path(sys.executable).parent)] + path), PYTHON=sys.executable,
               VENV_DIR=str(tmp / venv), VENV_OPTIONS="--system-site-packages --without-pip", PIP_NO_INDEX="1",
               PIP_FIND_LINKS=str(tmp / "wheels"), COMMANDLINE_ARGS=f"-f {args}")
    proc = subprocess.Popen(["bash", str(app / "webui.sh")], cwd=tmp, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    if wait_for_port is None:
        out, _ = proc.communicate(timeout=240)
        return proc.returncode, out
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{wait_for_port}/sdapi/v1/sd-models", timeout=5) as r:
                    return 0, r.read().decode()
            except OSError:
                time.sleep(0.5)
        return proc.poll(), proc.stdout.read() if proc.poll() is not None else "no answer"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow  # makes venvs and starts the server
def test_webui_sh_chooses_cuda_or_cpu_by_the_machine_and_the_server_answers(tmp_path):
    from tests.test_launch import free_port

    app = _fresh_copy(tmp_path / "app")
    bad_data = f"--data-dir {tmp_path / 'file'}/data"  # stops right after the install steps
    (tmp_path / "file").write_text("")

    rc, out = _webui_sh(app, tmp_path, "venv-gpu", bad_data, nvidia=True)
    assert "Creating the Python environment" in out
    assert "NVIDIA GeForce RTX 4090 (driver for CUDA 12.8): torch's cu128 build" in out
    assert "pip install torch torchvision --extra-index-url https://download.pytorch.org/whl/cu128" in out
    assert rc == 1 and "torch is not able to use the GPU" in out and "--skip-torch-cuda-test" in out

    port = free_port()
    models = tmp_path / "app" / "models" / "Stable-diffusion"
    rc, answer = _webui_sh(app, tmp_path, "venv-gpu", f"--skip-torch-cuda-test --api --port {port} "
                           f"--data-dir {tmp_path / 'data'} --ckpt-dir {models}", nvidia=True, wait_for_port=port)
    assert rc == 0 and "demo-shapes" in answer, answer

    rc, out = _webui_sh(app, tmp_path, "venv-gpu", f"--skip-torch-cuda-test {bad_data}", nvidia=True)
    assert "Installing torch" not in out and "Creating the Python" not in out, "a later run starts at once"
    assert rc == 1 and "cannot create data folders" in out

    rc, out = _webui_sh(app, tmp_path, "venv-cpu", bad_data, nvidia=False)
    assert "no usable GPU: torch's CPU build" in out and "https://download.pytorch.org/whl/cpu" in out
    assert "No NVIDIA or AMD GPU found" in out and "not able to use the GPU" not in out
    assert rc == 1 and "cannot create data folders" in out


@pytest.mark.slow
def test_webui_sh_names_a_python_that_cannot_run_it(tmp_path):
    fake = tmp_path / "python2"
    fake.write_text("#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'Python 2.7.18'; exit 0; fi\n"
                    "echo 'SyntaxError: invalid syntax' >&2; exit 1\n")
    fake.chmod(0o755)
    env = dict(os.environ, PYTHON=str(fake), VENV_DIR=str(tmp_path / "venv"), COMMANDLINE_ARGS="-f")
    out = subprocess.run(["bash", str(ROOT / "webui.sh")], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "Python 2.7.18 cannot run the installer" in out.stderr
    assert "3.10 to 3.13" in out.stderr and not (tmp_path / "venv").exists()


def test_xformers_is_installed_from_torchs_index_with_torch_pinned_and_a_failure_only_warns(
        tmp_path, monkeypatch, capsys):
    import importlib.metadata as md
    import importlib.util

    from modules import cmd_args

    record = tmp_path / "sd-webui-torch.json"
    record.write_text('{"command": "pip install torch torchvision --extra-index-url '
                      'https://download.pytorch.org/whl/cu128"}')
    monkeypatch.setattr(launch, "_torch_record", lambda: record)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "xformers"
                        else real_find_spec(name, *a))
    calls = []

    def fake_pip(args):
        pins = args[args.index("-c") + 1]
        calls.append((args, Path(pins).read_text()))
        return 1

    monkeypatch.setattr(launch.subprocess, "call", fake_pip)
    launch.prepare_xformers(cmd_args.parse_args(["--skip-install"], env={}))
    assert calls == [], "nothing is installed without --xformers"
    launch.prepare_xformers(cmd_args.parse_args(["--xformers"], env={}))
    args, pins = calls[-1]
    assert args[3:6] == ["install", "xformers", "--extra-index-url"] and args[6].endswith("/whl/cu128")
    assert pins == f"torch=={md.version('torch')}\n"
    err = capsys.readouterr().err
    assert "installing xformers failed" in err and "SDPA" in err

    monkeypatch.setattr(importlib.util, "find_spec", real_find_spec)
    monkeypatch.setenv("XFORMERS_PACKAGE", "xformers==0.0.33")
    launch.prepare_xformers(cmd_args.parse_args(["--xformers", "--reinstall-xformers"], env={}))
    assert calls[-1][0][3:7] == ["install", "--force-reinstall", "--no-deps", "xformers==0.0.33"]

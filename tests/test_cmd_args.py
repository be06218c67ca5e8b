import os
import subprocess
import sys
from pathlib import Path

import pytest

from modules import cmd_args
from modules.cmd_args import build_parser, parse_args

ROOT = Path(__file__).resolve().parent.parent
NO_ENV: dict = {}


def parse(*argv, env=NO_ENV):
    return parse_args(list(argv), env=env)


def test_defaults():
    ns = parse()
    assert ns.port == 7860
    assert ns.data_dir == str(ROOT)
    assert ns.models_dir is None and ns.ckpt is None and ns.ckpt_dir is None
    assert ns.precision == "autocast"
    assert ns.use_cpu == []
    assert ns.device_id is None
    for flag in ("listen", "api", "nowebui", "api_server_stop", "no_half", "no_half_vae", "opt_sdp_attention",
                 "xformers", "medvram", "medvram_sdxl", "lowvram", "no_download_sd_model", "skip_install",
                 "skip_torch_cuda_test", "no_hashing", "disable_all_extensions", "enable_insecure_extension_access",
                 "disable_nan_check", "test_server"):
        assert getattr(ns, flag) is False, flag
    assert ns.api_auth is None and ns.gradio_auth is None and ns.server_name is None


def test_nowebui_port():
    assert parse("--nowebui").port == 7861
    assert parse("--nowebui", "--port", "9000").port == 9000
    assert parse("--api").port == 7860


def test_all_a1111_flags_accepted(tmp_path):
    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(b"x")
    ns = parse(
        "--data-dir", str(tmp_path / "d"), "--models-dir", str(tmp_path / "m"), "--ckpt", str(ckpt),
        "--ckpt-dir", str(tmp_path / "c"), "--vae-dir", str(tmp_path / "v"), "--lora-dir", str(tmp_path / "l"),
        "--embeddings-dir", str(tmp_path / "e"), "--port", "8123", "--listen", "--server-name", "0.0.0.0",
        "--api", "--api-auth", "u:p", "--api-server-stop", "--gradio-auth", "a:b,c:d", "--use-cpu", "all",
        "--no-half", "--no-half-vae", "--precision", "full", "--opt-sdp-attention", "--xformers", "--medvram",
        "--medvram-sdxl", "--lowvram", "--no-download-sd-model", "--skip-install", "--skip-torch-cuda-test",
        "--no-hashing", "--disable-all-extensions", "--enable-insecure-extension-access",
        "--ui-settings-file", str(tmp_path / "cfg.json"), "--ui-config-file", str(tmp_path / "ui.json"),
        "--styles-file", str(tmp_path / "s.csv"), "--device-id", "1", "--disable-nan-check", "--test-server",
    )
    assert ns.port == 8123 and ns.listen and ns.api and ns.precision == "full"
    assert ns.use_cpu == ["all"] and ns.device_id == "1" and ns.gradio_auth == "a:b,c:d"
    assert ns.ckpt == str(ckpt) and ns.styles_file == [str(tmp_path / "s.csv")]


def test_use_cpu_multiple():
    assert parse("--use-cpu", "sd", "Interrogate").use_cpu == ["sd", "interrogate"]


def test_commandline_args_env_appended():
    ns = parse("--api", env={"COMMANDLINE_ARGS": "--listen --port 9001 --gradio-auth 'u:p w'"})
    assert ns.api and ns.listen and ns.port == 9001 and ns.gradio_auth == "u:p w"


def test_skip_prepare_environment_implies_skip_install():
    assert parse("--skip-prepare-environment").skip_install


@pytest.mark.parametrize("argv, fragment", [
    (["--port", "abc"], "--port"),
    (["--port", "70000"], "--port"),
    (["--precision", "bogus"], "--precision"),
    (["--bogus-flag"], "--bogus-flag"),
    (["--use-cpu", "gpu"], "--use-cpu"),
    (["--gradio-auth", "nopassword"], "--gradio-auth"),
    (["--ckpt", "/definitely/not/here.safetensors"], "--ckpt"),
])
def test_bad_values_one_line_exit_2(argv, fragment, capsys):
    with pytest.raises(SystemExit) as e:
        parse(*argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("launch.py: error: ")
    assert fragment in err


def test_data_dir_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(SystemExit) as e:
        parse("--data-dir", str(f))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("launch.py: error: argument --data-dir") and "not a directory" in err


def test_bad_commandline_args_env(capsys):
    with pytest.raises(SystemExit) as e:
        parse(env={"COMMANDLINE_ARGS": "--port 'unclosed"})
    assert e.value.code == 2
    assert "COMMANDLINE_ARGS" in capsys.readouterr().err


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as e:
        parse("--help")
    assert e.value.code == 0
    assert "--data-dir" in capsys.readouterr().out


def test_build_parser_is_fresh_and_extensible():
    p = build_parser()
    p.add_argument("--my-extension-flag", action="store_true")
    ns = parse_args(["--my-extension-flag"], env={}, parser=p)
    assert ns.my_extension_flag
    assert not hasattr(parse(), "my_extension_flag")


def _run_launch(*args):
    env = {k: v for k, v in os.environ.items() if k != "COMMANDLINE_ARGS"}
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), *args], capture_output=True, text=True,
                          env=env, timeout=60, cwd=str(ROOT))


def test_launch_bad_port_subprocess():
    r = _run_launch("--port", "abc")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("launch.py: error: argument --port")
    assert r.stdout == ""


def test_launch_unknown_flag_subprocess():
    r = _run_launch("--precision", "bogus")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_parse_args_is_cheap_to_import():
    # launch.py imports cmd_args before checking requirements: it must not pull heavy packages in.
    code = "import sys; import modules.cmd_args, modules.paths; print(sorted(m for m in ('torch','fastapi','diffusers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(ROOT), timeout=60)
    assert out.stdout.strip() == "[]"
    assert cmd_args.DEFAULT_PORT == 7860 and cmd_args.DEFAULT_API_PORT == 7861

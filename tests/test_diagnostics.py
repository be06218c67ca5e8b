"""What a user pastes into a bug report: `launch.py --version`, `--dump-sysinfo` and `GET /sdapi/v1/system-info`
say the versions, the device and the flags, never a login."""
from __future__ import annotations

import json

import launch
from modules import diagnostics


def test_version_and_dump_sysinfo_answer_at_once_without_logins(tmp_path, capsys, monkeypatch):
    assert launch.main(["--version", "--data-dir", str(tmp_path)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("v") and "Python 3." in line and "torch " in line
    monkeypatch.chdir(tmp_path)
    assert launch.main(["--dump-sysinfo", "--data-dir", str(tmp_path), "--api-auth", "alice:s3cret"]) == 0
    (dumped,) = tmp_path.glob("sysinfo-*.json")
    info = json.loads(dumped.read_text())
    assert info["flags"]["api_auth"] == "<hidden>" and "s3cret" not in dumped.read_text()
    assert info["packages"]["torch"] and info["packages"]["diffusers"] and "cuda_available" in info["device"]


def test_system_info_route_and_a1111_sysinfo_hide_logins(engine, data_dir):
    from fastapi.testclient import TestClient

    from modules import cmd_args
    from modules.a1111.sysinfo import hidden_logins
    from modules.server import AppContext, create_app

    ns = cmd_args.parse_args(["--data-dir", str(data_dir), "--skip-install", "--nowebui", "--gradio-auth",
                              "bob:pw"], env={})
    with TestClient(create_app(AppContext(args=ns, engine=engine))) as client:
        info = client.get("/sdapi/v1/system-info").json()
    assert info["version"] == diagnostics.VERSION and info["engine_device"] == "cpu"
    assert info["flags"]["gradio_auth"] == "<hidden>" and "pw" not in json.dumps(info["flags"])
    assert isinstance(info["extensions"], list) and info["data_dir"] == str(engine.paths.data_dir)
    engine.visible_queue.shutdown()
    assert hidden_logins(["launch.py", "--api-auth", "a:b", "--gradio-auth=c:d", "--listen"]) == [
        "launch.py", "--api-auth", "<hidden>", "--gradio-auth=<hidden>", "--listen"]

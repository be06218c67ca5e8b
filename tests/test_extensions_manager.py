"""The extension manager with real git repositories made in the test: install from a URL (clone, branch, name,
install.py importing ``launch``), the refusals, metadata.ini ordering, enable/disable persisted in config.json,
update checks, pip's core-package guard, the index, and ``GET /sdapi/v1/extensions``."""
from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from modules import cmd_args, extensions, launch_utils
from modules.extensions import ExtensionError
from modules.paths import Paths
from modules.settings import Settings
from tests.ext_fixtures import git

INSTALL_PY = """\
import os, pathlib, launch
here = pathlib.Path(os.path.dirname(os.path.abspath(__file__)))
ok = launch.is_installed("numpy") and not launch.is_installed("no-such-package-4f2a")
(here / "installed.txt").write_text(f"{ok} {os.getcwd()}")
"""


def make_repo(path: Path, files: dict[str, str]) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    commit(path, files, "first")
    return path


def commit(repo: Path, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def make_folder(path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    return path


@pytest.fixture
def paths(tmp_path) -> Paths:
    ns = cmd_args.parse_args(["--data-dir", str(tmp_path / "data"), "--skip-install"], env={})
    p = dataclasses.replace(Paths.from_args(ns), extensions_builtin_dir=tmp_path / "builtin")
    p.extensions_dir.mkdir(parents=True)
    return p


def args(*flags: str):
    return cmd_args.parse_args(list(flags), env={})


def leftovers(paths: Paths) -> list[str]:
    return sorted(p.name for p in paths.extensions_dir.iterdir())


# --- install from a URL -------------------------------------------------------------------------------------------

def test_install_from_url_clones_branch_and_runs_install_py(tmp_path, paths):
    origin = make_repo(tmp_path / "origin" / "sd-webui-hello.git", {"scripts/hello.py": "X = 1\n"})
    git(origin, "checkout", "-q", "-b", "dev")
    dev_commit = commit(origin, {"install.py": INSTALL_PY, "dev-only.txt": "dev\n"}, "dev work")
    git(origin, "checkout", "-q", "main")
    url = origin.as_uri()

    ext = extensions.install_from_url(paths, url, branch="dev")

    target = paths.extensions_dir / "sd-webui-hello"
    assert ext.name == "sd-webui-hello" and ext.path == target
    assert (target / "dev-only.txt").is_file()
    assert (ext.branch, ext.commit_hash, ext.remote) == ("dev", dev_commit, url)
    ok, cwd = (target / "installed.txt").read_text().split(" ", 1)
    assert ok == "True"  # install.py imported launch and asked is_installed()
    assert Path(cwd) == launch_utils.REPO_ROOT  # A1111 runs install.py from the program folder
    assert [e.name for e in extensions.discover(paths)] == ["sd-webui-hello"]
    assert leftovers(paths) == ["sd-webui-hello"]  # no temporary folder left

    named = extensions.install_from_url(paths, str(origin), name="second-copy", run_installer=False)
    assert named.path == paths.extensions_dir / "second-copy" and named.branch == "main"
    assert not (named.path / "installed.txt").exists()


def test_install_refused_when_listening_without_the_insecure_flag(tmp_path, paths):
    origin = make_repo(tmp_path / "ext-a", {"scripts/a.py": ""})
    for flags in (["--listen"], ["--server-name", "0.0.0.0"], ["--share"]):
        with pytest.raises(ExtensionError, match="extension access disabled because of command line flags"):
            extensions.install_from_url(paths, origin.as_uri(), args=args(*flags))
    assert leftovers(paths) == []
    ext = extensions.install_from_url(paths, origin.as_uri(),
                                      args=args("--listen", "--enable-insecure-extension-access"))
    assert ext.path.is_dir()


def test_existing_folder_and_unsafe_names_are_refused(tmp_path, paths):
    origin = make_repo(tmp_path / "ext-b", {"scripts/b.py": "B = 1\n"})
    extensions.install_from_url(paths, origin.as_uri())
    (paths.extensions_dir / "ext-b" / "scripts" / "b.py").write_text("B = 'mine'\n")
    with pytest.raises(ExtensionError, match="already exists"):
        extensions.install_from_url(paths, origin.as_uri())
    assert (paths.extensions_dir / "ext-b" / "scripts" / "b.py").read_text() == "B = 'mine'\n"  # untouched
    for bad in ("../escape", "a/b", "..", ".hidden", "x" * 101):
        with pytest.raises(ExtensionError, match="invalid extension folder name"):
            extensions.install_from_url(paths, origin.as_uri(), name=bad)
    with pytest.raises(ExtensionError, match="ext:: URLs are not allowed"):
        extensions.install_from_url(paths, "ext::sh -c touch% /tmp/pwned", name="x")
    assert leftovers(paths) == ["ext-b"] and not (paths.extensions_dir.parent / "escape").exists()


def test_bad_url_is_a_clean_error_and_leaves_no_folder(tmp_path, paths):
    with pytest.raises(ExtensionError, match=r"git clone failed: .*does not appear to be a git repository"):
        extensions.install_from_url(paths, (tmp_path / "nowhere" / "repo.git").as_uri())
    with pytest.raises(ExtensionError, match="enter the URL"):
        extensions.install_from_url(paths, "  ")
    origin = make_repo(tmp_path / "ext-c", {"a.txt": "a"})
    with pytest.raises(ExtensionError, match="git clone failed"):
        extensions.install_from_url(paths, origin.as_uri(), branch="no-such-branch")
    assert leftovers(paths) == []


def test_failing_install_py_keeps_the_extension_and_reports_its_output(tmp_path, paths):
    origin = make_repo(tmp_path / "broken", {"install.py": "print('fetching weights'); raise SystemExit('boom')\n"})
    with pytest.raises(extensions.InstallerError, match=r"(?s)install.py failed: .*status 1.*boom") as info:
        extensions.install_from_url(paths, origin.as_uri())
    assert info.value.extension.path.is_dir()
    errors = extensions.run_installers(extensions.discover(paths))  # as at launch: reported, never raised
    assert len(errors) == 1 and "broken" in errors[0] and "boom" in errors[0]


# --- discovery and metadata.ini -----------------------------------------------------------------------------------

METADATA_ALPHA = """\
[Extension]
Name = Alpha
Requires = omega-ext

[scripts/main.py]
Before = x, y
After = z
Requires = omega-ext
"""


def test_metadata_requirements_order_and_warnings(paths, caplog):
    make_folder(paths.extensions_builtin_dir / "zbuiltin", {"scripts/z.py": ""})
    make_folder(paths.extensions_dir / "alpha", {
        "metadata.ini": METADATA_ALPHA, "scripts/main.py": "", "scripts/_helper.py": "", "scripts/b.py": "",
        "scripts/notes.txt": "", "javascript/b.js": "", "javascript/a.js": "", "style.css": "", "preload.py": ""})
    make_folder(paths.extensions_dir / "beta", {"metadata.ini": "[Extension]\nRequires = missing-one, omega-ext\n"})
    make_folder(paths.extensions_dir / "omega", {"metadata.ini": "[Extension]\nName = omega-ext\n"})
    (paths.extensions_dir / "README.md").write_text("not an extension")
    (paths.extensions_dir / ".installing-x").mkdir()

    found = extensions.discover(paths)
    assert [e.name for e in found] == ["zbuiltin", "omega", "alpha", "beta"]  # built-in first, requirements first
    alpha = found[2]
    assert alpha.canonical_name == "alpha" and alpha.requires == ["omega-ext"]
    assert alpha.script_order == {"scripts/main.py": extensions.ScriptOrder(["x", "y"], ["z"], ["omega-ext"])}
    assert [p.name for p in alpha.script_files()] == ["b.py", "main.py"]
    assert [p.name for p in alpha.javascript_files()] == ["a.js", "b.js"]
    assert alpha.style_css and alpha.preload_file and alpha.install_file is None
    assert found[0].is_builtin and not alpha.is_builtin
    assert found[3].warnings == ['Extension "beta" requires "missing-one" which is not installed.']
    assert 'requires "missing-one" which is not installed' in caplog.text

    found = extensions.discover(paths, disabled=["omega"])
    by_name = {e.name: e for e in found}
    assert not by_name["omega"].enabled
    assert 'requires "omega" which is disabled' in by_name["alpha"].warnings[0]
    assert [e.name for e in extensions.active(found)] == ["zbuiltin", "alpha", "beta"]
    assert [e.name for e in extensions.active(extensions.discover(paths, disable_all="extra"))] == ["zbuiltin"]
    assert extensions.active(extensions.discover(paths, disable_all="all")) == []


def test_enable_disable_persisted_in_config_json(paths):
    from webui.extensions_tab import ExtensionsView

    make_folder(paths.extensions_builtin_dir / "builtin-one", {"scripts/a.py": ""})
    make_folder(paths.extensions_dir / "user-one", {"scripts/a.py": ""})
    make_folder(paths.extensions_dir / "user-two", {"scripts/a.py": ""})
    engine = SimpleNamespace(paths=paths, settings=Settings.load(paths.config_file))
    view = ExtensionsView(engine, args())

    message = view.apply(["builtin-one", "user-two"], "extra")
    assert "Saved" in message and "restart" in message.lower()
    stored = json.loads(paths.config_file.read_text())
    assert stored["disabled_extensions"] == ["user-one"] and stored["disable_all_extensions"] == "extra"

    settings = Settings.load(paths.config_file)  # as at the next start
    enabled = {e.name: e.enabled for e in extensions.discover_configured(paths, settings)}
    assert enabled == {"builtin-one": True, "user-one": False, "user-two": False}
    settings.set("disable_all_extensions", "none")
    enabled = {e.name: e.enabled for e in extensions.discover_configured(paths, settings)}
    assert enabled == {"builtin-one": True, "user-one": False, "user-two": True}
    flagged = extensions.discover_configured(paths, settings, args("--disable-all-extensions"))
    assert not any(e.enabled for e in flagged)

    engine.extension_errors = ["user-two/scripts/a.py: ModuleNotFoundError: No module named 'insightface'"]
    assert "No module named &#x27;insightface&#x27;" in view.errors_html()  # shown on top of the Installed tab

    refused = ExtensionsView(engine, args("--listen")).apply([], "all")
    assert "extension access disabled" in refused
    assert json.loads(paths.config_file.read_text())["disable_all_extensions"] == "extra"


# --- updates ------------------------------------------------------------------------------------------------------

def test_check_for_updates_then_update_pulls_the_new_commit(tmp_path, paths):
    origin = make_repo(tmp_path / "upd", {"scripts/u.py": "V = 1\n"})
    ext = extensions.install_from_url(paths, origin.as_uri())
    assert extensions.check_for_updates(ext) == "latest"

    new = commit(origin, {"scripts/u.py": "V = 2\n"}, "second")
    assert extensions.check_for_updates(ext) == "behind"
    message = extensions.update(ext)
    assert "updated" in message and new[:8] in message
    assert ext.commit_hash == new and (ext.path / "scripts" / "u.py").read_text() == "V = 2\n"
    assert extensions.check_for_updates(ext) == "latest"

    plain = extensions.Extension("plain", make_folder(paths.extensions_dir / "plain", {"a.py": ""}), False)
    assert extensions.check_for_updates(plain) == "unknown: not a git repository"
    with pytest.raises(ExtensionError, match="not a git repository"):
        extensions.update(plain)


def test_update_all_extensions_at_launch_pulls_each_git_extension_and_warns_for_one_that_cannot(
        tmp_path, paths, capsys):
    import launch

    origin = make_repo(tmp_path / "pulled", {"scripts/u.py": "V = 1\n"})
    stuck_origin = make_repo(tmp_path / "stuck", {"scripts/s.py": "V = 1\n"})
    pulled = extensions.install_from_url(paths, origin.as_uri())
    stuck = extensions.install_from_url(paths, stuck_origin.as_uri())
    new = commit(origin, {"scripts/u.py": "V = 2\n"}, "second")
    commit(stuck_origin, {"scripts/s.py": "V = 2\n"}, "second")
    (stuck.path / "scripts" / "s.py").write_text("V = 'my own edit'\n")  # local changes: a pull must not lose them

    ns = cmd_args.parse_args(["--data-dir", str(paths.data_dir), "--update-all-extensions"], env={})
    launch.update_extensions(ns, paths)
    out = capsys.readouterr()
    assert "pulled updated from" in out.out and new[:8] in out.out
    assert (pulled.path / "scripts" / "u.py").read_text() == "V = 2\n"
    assert "warning: stuck not updated" in out.err
    assert (stuck.path / "scripts" / "s.py").read_text() == "V = 'my own edit'\n"


def test_update_check_says_whether_the_program_is_behind_its_upstream(tmp_path, monkeypatch):
    import launch

    origin = make_repo(tmp_path / "origin", {"launch.py": "\n"})
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", origin.as_uri(), str(clone))
    monkeypatch.setattr(launch, "ROOT", clone)
    assert launch.update_check() == "You are up to date with the most recent version."
    commit(origin, {"launch.py": "# new\n"}, "second")
    assert "not up to date" in launch.update_check() and "git pull" in launch.update_check()
    monkeypatch.setattr(launch, "ROOT", tmp_path / "no-git")
    (tmp_path / "no-git").mkdir()
    assert launch.update_check() == "Could not check for updates (not a git repository)."


# --- pip guard ------------------------------------------------------------------------------------------------------

def test_run_pip_refuses_to_change_a_core_package(monkeypatch, capsys):
    import importlib.metadata as md

    ran = []

    def fake_run(command, desc=None, errdesc=None, live=False):  # records the pip command instead of running it
        constraints = Path(command[command.index("-c") + 1]).read_text()
        ran.append((command, constraints))
        return ""

    monkeypatch.setattr(launch_utils, "run", fake_run)
    assert launch_utils.run_pip("install transformers==4.30.0", "old transformers") == ""
    assert ran == []  # nothing else was asked for: pip is not even started
    err = capsys.readouterr().err
    assert "refused to change core package transformers" in err and md.version("transformers") in err

    launch_utils.run_pip("install -U torch<2 tiny-extension-dep==1.0", "deps")
    (command, constraints), = ran
    assert "tiny-extension-dep==1.0" in command and not any(c.startswith("torch") for c in command)
    assert f"torch=={md.version('torch')}" in constraints.splitlines()  # dependencies cannot move it either
    assert "refused to change core package torch" in capsys.readouterr().err


# --- the index ------------------------------------------------------------------------------------------------------

INDEX = {
    "tags": {"script": "a script", "tab": "a tab"},
    "extensions": [
        {"name": "Hello", "url": "https://github.com/someone/sd-webui-hello", "description": "says hello",
         "tags": ["script"], "added": "2023-01-02", "created_at": "2022-12-30T10:00:00Z", "stars": 42},
        {"name": "No URL"},
        {"name": "Tabby", "url": "https://github.com/someone/tabby.git", "tags": ["tab"], "stars": None},
    ],
}


def test_load_index_from_a_local_file_and_clear_errors(tmp_path):
    index = tmp_path / "index.json"
    index.write_text(json.dumps(INDEX))
    entries = extensions.load_index(str(index))
    assert [(e.name, e.stars, e.tags) for e in entries] == [("Hello", 42, ["script"]), ("Tabby", 0, ["tab"])]
    assert entries[0].description == "says hello" and entries[0].added == "2023-01-02"
    assert extensions.load_index(index.as_uri()) == entries

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/index.json"
    with pytest.raises(ExtensionError, match=r"^could not read the extension index from http://127\.0\.0\.1:\d+/"):
        extensions.load_index(url, timeout=3)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ExtensionError, match="not valid JSON"):
        extensions.load_index(str(tmp_path / "bad.json"))
    with pytest.raises(ExtensionError, match="could not read the extension index from .*missing.json"):
        extensions.load_index(str(tmp_path / "missing.json"))


# --- the API --------------------------------------------------------------------------------------------------------

def test_api_lists_extensions_in_a1111_shape(tmp_path, paths):
    from fastapi.testclient import TestClient

    from modules.engine import Engine
    from modules.server import AppContext, create_app

    origin = make_repo(tmp_path / "api-ext", {"scripts/a.py": ""})
    installed = extensions.install_from_url(paths, origin.as_uri())
    make_folder(paths.extensions_dir / "local-only", {"scripts/a.py": ""})
    paths.config_file.write_text(json.dumps({"disabled_extensions": ["local-only"]}))
    ns = args("--nowebui", "--data-dir", str(paths.data_dir))
    with TestClient(create_app(AppContext(args=ns, engine=Engine.create(paths)))) as client:
        r = client.get("/sdapi/v1/extensions")
    assert r.status_code == 200
    rows = {row["name"]: row for row in r.json()}
    keys = {"name", "remote", "branch", "commit_hash", "commit_date", "version", "enabled"}
    assert all(set(row) == keys for row in rows.values())
    api = rows["api-ext"]
    assert (api["remote"], api["branch"], api["commit_hash"], api["enabled"]) == \
        (origin.as_uri(), "main", installed.commit_hash, True)
    assert api["version"] == installed.commit_hash[:8] and isinstance(api["commit_date"], int)
    assert rows["local-only"] == {"name": "local-only", "remote": None, "branch": None, "commit_hash": None,
                                  "commit_date": None, "version": None, "enabled": False}


def test_launch_reexports_the_installer_helpers():
    code = ("import launch; print(launch.is_installed('numpy'), launch.is_installed('no-such-package-4f2a'), "
            "callable(launch.run_pip), callable(launch.run), len(launch.commit_hash()) > 0, launch.python)")
    out = subprocess.run([sys.executable, "-c", code], cwd=launch_utils.REPO_ROOT, capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["True", "False", "True", "True", "True", sys.executable]

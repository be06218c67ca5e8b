"""Real-world trial of A1111 extensions against this web UI (not a test: run by hand, never by pytest).

For each git URL or local repository given, the script:

1. installs it through our own install path (`modules.extensions.install_from_url`, which clones and runs the
   extension's `install.py` exactly as the Extensions tab does) into a fresh scratch data dir;
2. starts the server (`launch.py --data-dir <scratch> --api --port <port> --skip-install`; `install.py` already ran
   in step 1) with the repo's demo checkpoint linked into the scratch models folder;
3. records, against a baseline run without extensions: the load errors and every traceback in the server log,
   the tabs / components / settings / scripts the extension added, the page's javascript errors and failed requests
   (with `--browser`: Debian's Chromium via Playwright, a screenshot of the page and of every new tab), a plain
   `/sdapi/v1/txt2img`, and a second one with every always-on script the extension added switched on (each boolean
   argument labelled "enable"/"active" set to true), with the prompts and infotext keys that came back;
4. prints a table and writes everything (JSON, server logs, screenshots) under `--work`.

Nothing in here knows any extension by name: every check is generic.

    python -m venv --system-site-packages /tmp/extrial/venv        # optional: install.py's pip stays out of the
    /tmp/extrial/venv/bin/python bench/extensions_trial.py \\        # main environment
        --work /tmp/extrial/run --browser --mode both \\
        https://github.com/adieyal/sd-dynamic-prompts /work/.mirror/Bing-su+adetailer/repo ...

Arguments are URLs or paths, optionally `URL=NAME` to choose the folder name (a bare `.../owner+name/repo` mirror
path is named `name`). `--list FILE` reads one per line (`#` comments). `--mode alone` runs each extension by
itself, `together` installs them all into one data dir, `both` does both. The whole run's JSON goes to
`<work>/results.json`; `--markdown FILE` also writes the table as Markdown.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent  # --repo changes it (e.g. a `git archive HEAD` snapshot)
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ENABLE_LABEL = re.compile(r"\b(enable|enabled|active|activate|activated|on)\b", re.I)
TRACEBACK_START = re.compile(r"^Traceback \(most recent call last\):")


# ------------------------------------------------------------------------------------------------ helpers

def free_port(start: int) -> int:
    for port in range(start, start + 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port")


def http(method: str, url: str, body=None, timeout: float = 300):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    except Exception as e:  # noqa: BLE001 - report, never stop the trial
        return None, f"{type(e).__name__}: {e}"
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode("utf-8", "replace")


def name_for(spec: str) -> tuple[str, str]:
    """(url, folder name) from `URL[=NAME]`; a mirror path `.../owner+name/repo` is named `name`."""
    m = re.match(r"^(.+)=([\w.-]+)$", spec)
    if m:
        return m.group(1), m.group(2)
    from modules.extensions import name_from_url

    path = Path(spec)
    if path.name in ("repo", ".git", "repo.git") and "+" in path.parent.name:
        return spec, path.parent.name.split("+", 1)[1]
    return spec, name_from_url(spec)


def tracebacks(text: str) -> list[str]:
    """Every `Traceback ...` block of a log (until the exception line), plus ERROR lines without one."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if TRACEBACK_START.match(lines[i].lstrip()):
            block = [lines[i]]
            i += 1
            while i < len(lines) and (lines[i].startswith((" ", "\t")) or not lines[i].strip()
                                      or lines[i].startswith(("During handling", "The above exception"))
                                      or TRACEBACK_START.match(lines[i])):
                block.append(lines[i])
                i += 1
            if i < len(lines):
                block.append(lines[i])  # the exception line
            out.append("\n".join(block).strip())
        elif re.match(r"^(ERROR|CRITICAL)\b|^\*\*\* Error|^Error ", lines[i]):
            out.append(lines[i])
        i += 1
    return out


def last_line(tb: str) -> str:
    return tb.strip().splitlines()[-1][:300] if tb.strip() else ""


# ------------------------------------------------------------------------------------------------ server

class Server:
    def __init__(self, python: str, data: Path, port: int, log: Path, extra: list[str] | None = None):
        self.python, self.data, self.port, self.log_path = python, data, port, log
        self.extra = extra or []
        self.proc = None
        self.url = f"http://127.0.0.1:{port}"

    def start(self, timeout: float) -> tuple[bool, float]:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("COMMANDLINE_ARGS", None)
        self._log = open(self.log_path, "w")
        t0 = time.time()
        self.proc = subprocess.Popen([self.python, "launch.py", "--data-dir", str(self.data), "--api", "--port",
                                      str(self.port), "--skip-install", *self.extra], cwd=str(REPO_ROOT),
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                return False, time.time() - t0
            status, _ = http("GET", self.url + "/sdapi/v1/options", timeout=5)
            if status == 200:
                # the page is mounted after the API: wait for it too
                status, _ = http("GET", self.url + "/config", timeout=10)
                if status == 200:
                    return True, time.time() - t0
            time.sleep(1)
        return False, time.time() - t0

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)  # our own process group only (start_new_session)
                self.proc.wait(15)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if getattr(self, "_log", None):
            self._log.close()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


# ------------------------------------------------------------------------------------------------ probes

def ui_summary(config) -> dict:
    if not isinstance(config, dict):
        return {"error": str(config)[:300]}
    comps = config.get("components", [])
    tabs = [c.get("props", {}).get("label") for c in comps if c.get("type") in ("tabitem", "tab")]
    ids = [c.get("props", {}).get("elem_id") for c in comps if c.get("props", {}).get("elem_id")]
    return {"components": len(comps), "tabs": tabs, "elem_ids": ids, "head_len": len(config.get("head") or ""),
            "css_len": len(config.get("css") or "")}


def collect_state(url: str) -> dict:
    st = {}
    for key, path in (("extensions", "/sdapi/v1/extensions"), ("scripts", "/sdapi/v1/scripts"),
                      ("script_info", "/sdapi/v1/script-info"), ("options", "/sdapi/v1/options")):
        status, body = http("GET", url + path, timeout=60)
        st[key] = body if status == 200 else {"status": status, "body": str(body)[:500]}
    status, config = http("GET", url + "/config", timeout=60)
    st["ui"] = ui_summary(config if status == 200 else f"{status}: {str(config)[:300]}")
    return st


def diff_state(st: dict, base: dict) -> dict:
    out = {}
    ui, bui = st.get("ui", {}), base.get("ui", {})
    if "components" in ui and "components" in bui:
        out["components_added"] = ui["components"] - bui["components"]
        out["tabs_added"] = list((Counter(ui["tabs"]) - Counter(bui["tabs"])).elements())
        out["elem_ids_added"] = list((Counter(ui["elem_ids"]) - Counter(bui["elem_ids"])).elements())
    else:
        out["ui_error"] = ui.get("error")
    opts, bopts = st.get("options"), base.get("options")
    if isinstance(opts, dict) and isinstance(bopts, dict) and "status" not in opts:
        out["options_added"] = sorted(set(opts) - set(bopts))
    scr, bscr = st.get("scripts"), base.get("scripts")
    if isinstance(scr, dict) and isinstance(bscr, dict) and "txt2img" in scr:
        out["scripts_added"] = {k: sorted(set(scr.get(k, [])) - set(bscr.get(k, []))) for k in ("txt2img", "img2img")}
    info, binfo = st.get("script_info"), base.get("script_info")
    if isinstance(info, list) and isinstance(binfo, list):
        known = {(s["name"], s["is_img2img"]) for s in binfo}
        out["new_script_info"] = [s for s in info if (s["name"], s["is_img2img"]) not in known]
    return out


def txt2img(url: str, prompt: str, alwayson: dict | None = None, timeout: float = 300) -> dict:
    body = {"prompt": prompt, "negative_prompt": "", "steps": 4, "width": 64, "height": 64, "batch_size": 2,
            "cfg_scale": 5, "seed": 1, "sampler_name": "Euler a", "send_images": True, "save_images": False}
    if alwayson:
        body["alwayson_scripts"] = alwayson
    t0 = time.time()
    status, res = http("POST", url + "/sdapi/v1/txt2img", body, timeout=timeout)
    out = {"status": status, "seconds": round(time.time() - t0, 1)}
    if status == 200 and isinstance(res, dict):
        info = res.get("info")
        try:
            info = json.loads(info) if isinstance(info, str) else info
        except ValueError:
            pass
        out["images"] = len(res.get("images") or [])
        if isinstance(info, dict):
            out["all_prompts"] = info.get("all_prompts")
            infotexts = info.get("infotexts") or []
            out["infotext"] = infotexts[0] if infotexts else None
        out["ok"] = out["images"] >= 2
        import hashlib

        out["image_hash"] = hashlib.sha1("".join(res.get("images") or []).encode()).hexdigest()[:12]
    else:
        out["ok"] = False
        out["error"] = str(res)[:1500]
    return out


def infotext_keys(text: str | None) -> set[str]:
    if not text:
        return set()
    last = text.strip().splitlines()[-1]
    return {m.group(1) for m in re.finditer(r"(?:^|, )([^:,]+): ", last)}


def enabled_args(script: dict) -> list | None:
    """The script's default args with every boolean labelled enable/active switched on; None if it has none."""
    args = [a.get("value") for a in script.get("args", [])]
    hit = False
    for i, a in enumerate(script.get("args", [])):
        if isinstance(a.get("value"), bool) and a.get("value") is False and ENABLE_LABEL.search(a.get("label") or ""):
            args[i] = True
            hit = True
    return args if hit else None


def browser_probe(url: str, out_dir: Path, new_tabs: list[str], timeout_ms: int = 60000) -> dict:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return {"skipped": "playwright is not installed"}
    if not Path(CHROMIUM).exists():
        return {"skipped": f"{CHROMIUM} not found"}
    res = {"console_errors": [], "page_errors": [], "failed_requests": [], "tabs": {}}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(timeout_ms)
            page.on("console", lambda m: m.type == "error" and res["console_errors"].append(m.text[:500]))
            page.on("pageerror", lambda e: res["page_errors"].append(str(e)[:800]))
            page.on("requestfailed", lambda r: res["failed_requests"].append(f"FAILED {r.url[:200]}"))
            page.on("response", lambda r: r.status >= 400 and res["failed_requests"].append(
                f"{r.status} {r.url[:200]}"))
            t0 = time.time()
            page.goto(url, wait_until="load")
            try:
                page.wait_for_selector("#txt2img_prompt textarea")
                res["ui_loaded"] = True
            except Exception as e:  # noqa: BLE001
                res["ui_loaded"] = False
                res["ui_error"] = str(e)[:300]
            res["load_seconds"] = round(time.time() - t0, 1)
            page.wait_for_timeout(3000)  # onUiLoaded / timers of the extensions' javascript
            page.screenshot(path=str(out_dir / "page.png"), full_page=False)
            for i, tab in enumerate(dict.fromkeys(t for t in new_tabs if t)):
                try:
                    btn = page.get_by_role("tab", name=tab, exact=True).first
                    btn.click(timeout=5000)
                    page.wait_for_timeout(1500)
                    shot = out_dir / f"tab-{i}.png"
                    page.screenshot(path=str(shot), full_page=False)
                    res["tabs"][tab] = {"clicked": True, "screenshot": str(shot)}
                except Exception as e:  # noqa: BLE001
                    res["tabs"][tab] = {"clicked": False, "error": str(e).splitlines()[0][:200]}
        finally:
            browser.close()
    return res


# ------------------------------------------------------------------------------------------------ a run

def prepare_data(data: Path) -> None:
    if data.exists():
        shutil.rmtree(data)
    ckpt = data / "models" / "Stable-diffusion"
    ckpt.mkdir(parents=True)
    demo = REPO_ROOT / "models" / "Stable-diffusion" / "demo-shapes.safetensors"
    os.symlink(demo, ckpt / demo.name)


FINGERPRINT = ("import importlib.metadata as m, json\nout = {}\n"
               "for n in ('numpy', 'torch', 'gradio', 'diffusers', 'transformers', 'pillow', 'pandas', 'fastapi'):\n"
               "    try: out[n] = m.version(n)\n    except Exception as e: out[n] = None\n"
               "try:\n    import numpy, pandas, gradio, torch, diffusers\nexcept Exception as e:\n"
               "    out['import_error'] = f'{type(e).__name__}: {e}'[:300]\nprint(json.dumps(out))")


def env_fingerprint(python: str) -> dict:
    """Versions of the core packages as the server's interpreter sees them, and whether they still import: an
    install.py that runs pip by itself can change them under the app."""
    r = subprocess.run([python, "-c", FINGERPRINT], capture_output=True, text=True, timeout=300)
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"import_error": (r.stderr or r.stdout)[-300:]}


def install(data: Path, specs: list[str], install_py: bool) -> list[dict]:
    from modules import cmd_args, extensions
    from modules.paths import Paths

    paths = Paths.from_args(cmd_args.parse_args(["--data-dir", str(data)], env={}))
    paths.ensure_dirs()
    rows = []
    for spec in specs:
        url, name = name_for(spec)
        row = {"spec": spec, "url": url, "name": name}
        t0 = time.time()
        try:
            ext = extensions.install_from_url(paths, url, name=name, run_installer=install_py)
            row.update(installed=True, install_ok=True)
        except extensions.InstallerError as e:
            ext = e.extension
            row.update(installed=True, install_ok=False, install_error=str(e)[-3000:])
        except Exception as e:  # noqa: BLE001
            ext = None
            row.update(installed=False, install_ok=False, install_error=f"{type(e).__name__}: {e}"[-3000:])
        row["install_seconds"] = round(time.time() - t0, 1)
        if ext is not None:
            row.update(commit=(ext.commit_hash or "")[:10], remote=ext.remote,
                       has_install_py=ext.install_file is not None, has_preload=ext.preload_file is not None,
                       javascript=[f.name for f in ext.javascript_files()], style_css=ext.style_css is not None,
                       scripts=[f.name for f in ext.script_files()])
        rows.append(row)
    return rows


def run_one(label: str, specs: list[str], a, base: dict | None) -> dict:
    work = Path(a.work) / label
    data = work / "data"
    work.mkdir(parents=True, exist_ok=True)
    prepare_data(data)
    result = {"label": label, "specs": specs}
    print(f"== {label}: installing {len(specs)} extension(s)", flush=True)
    before = env_fingerprint(a.python) if specs else {}
    result["install"] = install(data, specs, not a.no_install_py) if specs else []
    after = env_fingerprint(a.python) if specs else {}
    changed = {k: [before.get(k), after.get(k)] for k in set(before) | set(after) if before.get(k) != after.get(k)}
    if changed:
        result["env_changed"] = changed
    port = free_port(a.port)
    srv = Server(a.python, data, port, work / "server.log")
    print(f"== {label}: starting the server on :{port}", flush=True)
    try:
        up, secs = srv.start(a.start_timeout)
        result["server_up"], result["start_seconds"] = up, round(secs, 1)
        if up:
            st = collect_state(srv.url)
            result["state"] = {k: st[k] for k in ("extensions", "scripts", "ui")}
            result["state"]["ui"] = {k: v for k, v in st["ui"].items() if k != "elem_ids"}
            if base is not None:
                result["added"] = diff_state(st, base)
            else:
                result["_state_full"] = st
            result["txt2img"] = txt2img(srv.url, a.prompt)
            new_scripts = (result.get("added") or {}).get("new_script_info") or []
            alwayson = {s["name"]: {"args": enabled_args(s)} for s in new_scripts
                        if s.get("is_alwayson") and not s.get("is_img2img") and enabled_args(s) is not None}
            if alwayson:
                result["alwayson_enabled"] = list(alwayson)
                r = txt2img(srv.url, a.prompt, alwayson)
                plain = result["txt2img"]
                r["infotext_keys_added"] = sorted(infotext_keys(r.get("infotext")) - infotext_keys(plain.get("infotext")))
                r["image_changed"] = r.get("image_hash") != plain.get("image_hash")
                result["txt2img_enabled"] = r
            if a.browser:
                tabs = (result.get("added") or {}).get("tabs_added") or []
                try:
                    result["browser"] = browser_probe(srv.url, work, tabs)
                except Exception as e:  # noqa: BLE001
                    result["browser"] = {"error": f"{type(e).__name__}: {e}"[:500]}
            # a last request: did anything above break the server?
            status, _ = http("GET", srv.url + "/sdapi/v1/options", timeout=30)
            result["alive_at_end"] = status == 200
    finally:
        srv.stop()
    log = srv.log_text()
    result["tracebacks"] = tracebacks(log)
    result["log_tail"] = "\n".join(log.splitlines()[-15:])
    result["log"] = str(srv.log_path)
    result["verdict"], result["why"] = verdict(result)
    return result


def verdict(r: dict) -> tuple[str, str]:
    """works: installed, no traceback or page error, txt2img ok (also with its scripts on); fails: it did not
    load at all (install failed, server down, all its scripts failed to import); partial otherwise."""
    why = []
    if r.get("env_changed"):
        why.append(f"install changed the core packages: {r['env_changed']}")
    inst = r.get("install") or []
    for row in inst:
        if not row.get("installed"):
            return "fails", f"install: {last_line(row.get('install_error', ''))}"
        if not row.get("install_ok"):
            why.append(f"install.py: {last_line(row.get('install_error', ''))}")
    if not r.get("server_up"):
        tb = r.get("tracebacks") or []
        return "fails", "server did not start: " + (last_line(tb[-1]) if tb else r.get("log_tail", "")[-300:])
    tbs = r.get("tracebacks") or []
    why += [last_line(t) for t in tbs[:4]]
    if not r.get("txt2img", {}).get("ok"):
        why.append("txt2img: " + str(r.get("txt2img", {}).get("error", ""))[:200])
    en = r.get("txt2img_enabled")
    if en is not None and not en.get("ok"):
        why.append("txt2img with its scripts on: " + str(en.get("error", ""))[:200])
    b = r.get("browser") or {}
    if b.get("page_errors"):
        why += [f"page error: {e.splitlines()[0][:200]}" for e in b["page_errors"][:3]]
    if b and b.get("ui_loaded") is False:
        why.append("page did not load")
    failed = [f for f in b.get("failed_requests", []) if "favicon" not in f]
    if failed:
        why += [f"request: {f}" for f in failed[:3]]
    added = r.get("added") or {}
    nothing = (not added.get("components_added") and not added.get("options_added")
               and not any((added.get("scripts_added") or {}).values()))
    # "could not load <script>.py" is how this server logs a script that failed to import (A1111: "Error loading
    # script"); an extension whose only scripts failed to import adds nothing, so it failed, it is not partial
    if any(k in t.lower() for t in tbs for k in ("error loading script", "failed to import", "could not load")) \
            and nothing:
        return "fails", "; ".join(dict.fromkeys(why))
    if why:
        return "partial", "; ".join(dict.fromkeys(why))
    return "works", "no error; " + describe(r)


def describe(r: dict) -> str:
    added = r.get("added") or {}
    parts = []
    if added.get("tabs_added"):
        parts.append("tabs " + ", ".join(map(str, added["tabs_added"][:5])))
    if added.get("components_added"):
        parts.append(f"+{added['components_added']} components")
    if added.get("options_added"):
        parts.append(f"+{len(added['options_added'])} options")
    sa = added.get("scripts_added") or {}
    if sa.get("txt2img"):
        parts.append("scripts " + ", ".join(sa["txt2img"][:4]))
    t = r.get("txt2img") or {}
    if t.get("all_prompts") and t["all_prompts"] != r.get("_prompt"):
        parts.append(f"prompts {t['all_prompts']}")
    en = r.get("txt2img_enabled") or {}
    if en:
        parts.append(f"enabled run ok, infotext +{en.get('infotext_keys_added')}, image changed={en.get('image_changed')}")
    return "; ".join(parts)


def table(results: list[dict]) -> str:
    lines = ["| run | commit | verdict | install | start s | +components | +tabs | +options | txt2img | on-run | "
             "page errors | why |", "|" + "---|" * 12]
    for r in results:
        inst = r.get("install") or []
        commit = ",".join(row.get("commit", "?") or "?" for row in inst)[:40]
        ins = "ok" if all(row.get("install_ok") for row in inst) else "FAIL"
        added = r.get("added") or {}
        t = r.get("txt2img") or {}
        en = r.get("txt2img_enabled")
        b = r.get("browser") or {}
        lines.append("| " + " | ".join(str(x).replace("|", "/").replace("\n", " ") for x in (
            r["label"], commit, r.get("verdict"), ins, r.get("start_seconds"), added.get("components_added", "-"),
            len(added.get("tabs_added") or []), len(added.get("options_added") or []),
            ("ok" if t.get("ok") else "FAIL") + (f" {t.get('all_prompts')}" if t.get("all_prompts") else ""),
            "-" if en is None else ("ok" if en.get("ok") else "FAIL"),
            len(b.get("page_errors") or []) if b else "-", (r.get("why") or "")[:400])) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    global REPO_ROOT
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("specs", nargs="*", help="git URLs or local repositories, optionally URL=NAME")
    ap.add_argument("--list", help="a file with one URL/path per line")
    ap.add_argument("--work", default="/tmp/extensions-trial", help="scratch folder (data dirs, logs, JSON)")
    ap.add_argument("--mode", choices=("alone", "together", "both"), default="both")
    ap.add_argument("--port", type=int, default=7960, help="first port to try")
    ap.add_argument("--python", default=sys.executable, help="the interpreter that runs launch.py")
    ap.add_argument("--prompt", default="a {red|blue} circle on a black background",
                    help="the prompt of the txt2img probes (all_prompts is reported)")
    ap.add_argument("--browser", action="store_true", help="also open the page in Chromium (Playwright)")
    ap.add_argument("--no-install-py", action="store_true", help="clone only, do not run install.py")
    ap.add_argument("--start-timeout", type=float, default=240)
    ap.add_argument("--markdown", help="also write the table to this file")
    ap.add_argument("--repo", default=None,
                    help="the checkout to try (launch.py, modules.extensions, the demo model); default: this one")
    ap.add_argument("--only", help="comma-separated labels: rerun only these (results.json keeps the others)")
    a = ap.parse_args(argv)
    REPO_ROOT = Path(a.repo).resolve() if a.repo else REPO_ROOT
    sys.path.insert(0, str(REPO_ROOT))
    specs = list(a.specs)
    if a.list:
        specs += [ln.split("#", 1)[0].strip() for ln in Path(a.list).read_text().splitlines()
                  if ln.split("#", 1)[0].strip()]
    if not specs:
        ap.error("give at least one URL or path")
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    out_json = work / "results.json"
    previous = {r["label"]: r for r in json.loads(out_json.read_text())} if a.only and out_json.exists() else {}
    only = set(a.only.split(",")) if a.only else None

    base_file = work / "baseline.json"
    if base_file.exists():
        base = json.loads(base_file.read_text())
    else:
        b = run_one("_baseline", [], a, None)
        if not b.get("server_up"):
            print(table([b]))
            print("the baseline server did not start; see", b["log"])
            return 1
        base = b["_state_full"]
        base_file.write_text(json.dumps(base))

    runs = []
    if a.mode in ("alone", "both"):
        runs += [(name_for(s)[1], [s]) for s in specs]
    if a.mode in ("together", "both") and len(specs) > 1:
        runs.append(("ALL-TOGETHER", specs))
    results = []
    for label, group in runs:
        if only is not None and label not in only:
            if label in previous:
                results.append(previous[label])
            continue
        r = run_one(label, group, a, base)
        r["_prompt"] = a.prompt
        results.append(r)
        print(f"-- {label}: {r['verdict']}: {r['why'][:300]}", flush=True)
        out_json.write_text(json.dumps(results, indent=1, default=str))
    out_json.write_text(json.dumps(results, indent=1, default=str))
    text = table(results)
    print(text)
    if a.markdown:
        Path(a.markdown).write_text(text + "\n")
    print(f"\nresults: {out_json}; logs and screenshots under {work}/<run>/")
    return 0


if __name__ == "__main__":
    sys.exit(main())

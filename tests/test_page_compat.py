"""The page as A1111 extensions see it, over real HTTP against the launched server: the root `/file=` route (what it
serves, what it refuses, --gradio-auth), each extension's style.css linked with its mtime (a rewrite shows on the
next load), and in a browser the A1111 page globals a fixture extension's javascript calls."""
from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import urllib.parse
from pathlib import Path

import pytest

from modules import cmd_args, extensions
from modules.paths import Paths
from tests import ext_fixtures
from tests.test_webui import Server

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(64))

PAGE_JS = r"""
window.pageCompat = {loaded: [], updates: 0, tabChanges: 0};
onUiLoaded(function() { throw new Error("page-compat: this callback always fails"); });
onUiLoaded(function() {
    const r = window.pageCompat;
    r.loaded.push("second");
    const content = get_uiCurrentTabContent();
    r.content = content ? content.id : null;
    r.img2imgPrompt = !!gradioApp().getElementById("img2img_prompt");
    r.extraRefresh = !!gradioApp().getElementById("txt2img_extra_refresh");
    const area = gradioApp().querySelector("#txt2img_prompt textarea");
    area.value = "one two three four five";
    updateInput(area);
});
onUiUpdate(function(mutations) { window.pageCompat.updates += mutations.length ? 1 : 0; });
onUiTabChange(function() {
    window.pageCompat.tabChanges += 1;
    window.pageCompat.lastTab = get_uiCurrentTabContent() ? get_uiCurrentTabContent().id : null;
});
"""

FRAME_COUNTER = """
window.framesAsked = 0;
const askFrame = window.requestAnimationFrame;
window.requestAnimationFrame = function(callback) { window.framesAsked += 1; return askFrame.call(window, callback); };
"""

# Gradio's scan for a component's events and the fixed build's index, on this page's own config plus listeners that
# name a component twice (only the first counts) or with no event name (dropped)
ATTACHED_EVENTS_CHECK = """([scan, index]) => {
    const Build = eval(`(class { ${scan} ${index} })`), build = new Build();
    const [a, b] = window.gradio_config.components.slice(0, 2).map(c => c.id);
    const deps = window.gradio_config.dependencies.concat([{targets: [[a, "focus"], [a, "blur"], [b, ""]]}]);
    const indexed = build.attached_events_by_id(deps), ids = window.gradio_config.components.map(c => c.id);
    const differ = ids.filter(id => {
        const node = {id: id, props: {shared_props: {}}};
        build.find_attached_events(node, deps);
        return JSON.stringify(node.props.shared_props.attached_events) !== JSON.stringify(indexed.get(id) || []);
    });
    return {components: ids.length, differ: differ, with_events: ids.filter(id => indexed.has(id)).length};
}"""


def _method(source: str, name: str) -> str:
    """`name(…){…}`: a method of a minified class (which follows the one before it), found by its braces (these two
    hold no braces in strings)."""
    start = source.index("}" + name + "(") + 1
    depth, i = 0, source.index("{", start)
    while True:
        depth += {"{": 1, "}": -1}.get(source[i], 0)
        if depth == 0:
            return source[start:i + 1]
        i += 1


FILES = {
    "scripts/nothing.py": "X = 1\n",
    "javascript/page.js": PAGE_JS,
    "style.css": "#txt2img_prompt { outline: 1px solid rgb(4, 5, 6); }\n",
}


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("page-compat")
    data = root / "data"
    ckpt = data / "models" / "Stable-diffusion"
    ckpt.mkdir(parents=True)
    shutil.copy(tiny_models.path("sd1.safetensors"), ckpt / "sd1.safetensors")
    paths = Paths.from_args(cmd_args.parse_args(["--data-dir", str(data)], env={}))
    paths.ensure_dirs()
    extensions.install_from_url(paths, ext_fixtures.make_repo(root / "origins" / "page-ext", FILES),
                                run_installer=False)
    ext = paths.extensions_dir / "page-ext"
    (ext / "images").mkdir()
    (ext / "images" / "x.png").write_bytes(PNG)
    secret = root / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("not for the web")
    os.symlink(secret, ext / "leak.txt")
    os.symlink(secret.parent, ext / "leakdir")
    (paths.txt2img_samples_dir / "done.png").write_bytes(PNG[::-1])
    (data / "ui-config.json").write_text(json.dumps({  # a user allowing 500 steps; a value beyond the range
        "txt2img/Sampling steps/maximum": 500, "txt2img/Sampling steps/value": 400,
        "img2img/Sampling steps/value": 999, "customscript/refiner.py/txt2img/Switch at/value": 0.6}))
    paths.tmp_dir.mkdir(parents=True, exist_ok=True)
    (paths.tmp_dir / "extensionPaths.txt").write_text("written by an extension for its page script")
    srv = Server(data, root / "server.log").start("--api")
    yield {"url": srv.url, "data": data, "ext": ext, "secret": secret, "root": root}
    srv.stop()


def raw_get(url: str, path: str, headers: dict | None = None):
    """GET with the path sent exactly as written (no `..` folding by a client library)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read(), resp
    finally:
        conn.close()


@pytest.mark.slow
def test_file_route_serves_extension_assets_and_outputs(site):
    status, body, resp = raw_get(site["url"], "/file=extensions/page-ext/images/x.png")
    assert status == 200 and body == PNG
    assert resp.getheader("content-type") == "image/png"
    status, body, _ = raw_get(site["url"], "/file=" + urllib.parse.quote(str(site["ext"] / "images" / "x.png")))
    assert status == 200 and body == PNG  # absolute paths, as A1111 writes them for folders elsewhere
    status, body, _ = raw_get(site["url"], "/file=outputs/txt2img-images/done.png")
    assert status == 200 and body == PNG[::-1]
    assert raw_get(site["url"], "/file=extensions/page-ext/images/missing.png")[0] == 404
    status, body, _ = raw_get(site["url"], "/file=tmp/extensionPaths.txt")  # the data folder's tmp/
    assert status == 200 and body.startswith(b"written by an extension")


@pytest.mark.parametrize("path", [
    "/file=/etc/passwd",
    "/file=extensions/page-ext/../../../../../../../../etc/passwd",
    "/file=extensions/page-ext/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/file=extensions%2fpage-ext%2f..%2f..%2fconfig.json",
    "/file=extensions/page-ext/leak.txt",  # a symlink in an extension folder to a file outside
    "/file=extensions/page-ext/leakdir/secret.txt",
    "/file=extensions/page-ext/.git/config",
    "/file=config.json",
    "/file=models/Stable-diffusion/sd1.safetensors",
])
def test_file_route_refuses_anything_else(site, path):
    status, body, _ = raw_get(site["url"], path)
    assert status == 403, (path, status, body[:200])
    assert b"not for the web" not in body and b"root:" not in body


def head_of(url: str) -> str:
    status, body, _ = raw_get(url, "/config")
    assert status == 200
    return json.loads(body)["head"]


def test_page_links_extension_css_with_its_mtime_and_a_reload_sees_a_rewrite(site):
    css = site["ext"] / "style.css"
    head = head_of(site["url"])
    href = re.search(r'<link rel="stylesheet" href="(file=extensions/page-ext/style\.css\?([0-9.]+))">', head)
    assert href, head[-2000:]
    assert float(href.group(2)) == pytest.approx(os.path.getmtime(css))
    status, body, _ = raw_get(site["url"], "/" + href.group(1))
    assert status == 200 and body == css.read_bytes()
    # our globals come first, then the extensions' javascript
    assert 0 <= head.index("function gradioApp()") < head.index("page-compat: this callback always fails")
    status, page, _ = raw_get(site["url"], "/")
    assert status == 200 and b"file=extensions/page-ext/style.css?" in page

    css.write_text("#txt2img_prompt { outline: 2px solid rgb(7, 8, 9); }\n")
    later = os.path.getmtime(css) + 10
    os.utime(css, (later, later))
    again = re.search(r'href="file=extensions/page-ext/style\.css\?([0-9.]+)"', head_of(site["url"]))
    assert float(again.group(1)) == pytest.approx(later)
    assert raw_get(site["url"], "/file=extensions/page-ext/style.css?" + again.group(1))[1] == css.read_bytes()


@pytest.mark.slow
def test_file_route_needs_the_login_with_gradio_auth(site):
    srv = Server(site["data"], site["root"] / "auth-server.log").start("--gradio-auth", "ann:secret-pw")
    try:
        status, body, _ = raw_get(srv.url, "/file=extensions/page-ext/images/x.png")
        assert status == 401 and body != PNG
        assert raw_get(srv.url, "/file=extensions/page-ext/style.css")[0] == 401
        parts = urllib.parse.urlsplit(srv.url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        conn.request("POST", "/login", body=urllib.parse.urlencode({"username": "ann", "password": "secret-pw"}),
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
        cookies = "; ".join(c.split(";", 1)[0] for c in resp.headers.get_all("set-cookie"))
        conn.close()
        status, body, _ = raw_get(srv.url, "/file=extensions/page-ext/images/x.png", {"Cookie": cookies})
        assert status == 200 and body == PNG
        assert raw_get(srv.url, "/file=/etc/passwd", {"Cookie": cookies})[0] == 403
    finally:
        srv.stop()


@pytest.mark.slow
def test_extension_javascript_uses_the_a1111_page_globals(site):
    playwright_api = pytest.importorskip("playwright.sync_api")
    from tests.test_webui import CHROMIUM, FLAGS, open_ui
    from webui import frontend_fixes

    expect = playwright_api.expect
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            errors = []
            page = open_ui(browser, site["url"])
            page.add_init_script(FRAME_COUNTER)
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.reload()
            page.wait_for_selector("#txt2img_prompt textarea")
            page.wait_for_function("window.pageCompat && window.pageCompat.loaded.length === 1")
            state = page.evaluate("window.pageCompat")
            # the first onUiLoaded callback threw; the next still ran, with the page built as in A1111
            assert state["loaded"] == ["second"]
            assert any("page-compat: this callback always fails" in e for e in errors)
            assert state["content"] == "tab_txt2img" and state["img2imgPrompt"] and state["extraRefresh"]
            assert state["updates"] > 0
            # updateInput: Gradio took the value (the server counted the prompt's tokens)
            expect(page.locator("#txt2img_prompt textarea")).to_have_value("one two three four five")
            expect(page.locator("#txt2img_token_counter")).not_to_contain_text("0/75")
            expect(page.locator("#tabs > .tabitem#tab_txt2img")).to_be_visible()
            outline = page.evaluate("getComputedStyle(document.querySelector('#txt2img_prompt')).outlineColor")
            assert outline in ("rgb(4, 5, 6)", "rgb(7, 8, 9)")  # the linked style.css applies
            # Gradio's own footer: its Settings link alone, no separator left before it
            assert page.locator("footer[aria-label='Gradio footer navigation']").inner_text().split() == ["Settings"]

            for element_id in ("tabs", "tab_txt2img", "txt2img", "img2img", "quicksettings", "txt2img_prompt",
                               "img2img_prompt", "txt2img_neg_prompt", "img2img_neg_prompt", "tab_img2img",
                               "txt2img_extra_refresh", "txt2img_generate", "img2img_generate", "img2img_image",
                               "setting_sd_model_checkpoint"):
                assert page.evaluate(f"!!gradioApp().getElementById('{element_id}')"), element_id
            assert page.evaluate("!!document.querySelector('#quicksettings #setting_sd_model_checkpoint')")

            assert page.evaluate("switch_to_img2img('a', 2)") == ["a", 2]
            expect(page.locator("#tab_img2img")).to_be_visible()
            page.wait_for_function("window.pageCompat.lastTab === 'tab_img2img'")
            assert page.evaluate("get_uiCurrentTabContent().id") == "tab_img2img"
            assert page.evaluate("uiElementIsVisible(gradioApp().getElementById('img2img_prompt'))")
            assert not page.evaluate("uiElementIsVisible(gradioApp().getElementById('txt2img_prompt'))")
            assert page.evaluate("switch_to_txt2img(7)") == [7]
            expect(page.locator("#tab_txt2img")).to_be_visible()

            args = page.evaluate("submit(null, 'a cat', 3)")
            assert args[0].startswith("task(") and args[1:] == ["a cat", 3]
            assert len(page.evaluate("submit_img2img(null, null, 'x')")) == 3
            assert page.evaluate("typeof titles === 'object' && typeof localization === 'object' && "
                                 "typeof opts === 'object' && typeof executeCallbacks === 'function' && "
                                 "typeof onOptionsChanged === 'function' && typeof onAfterUiUpdate === 'function'")

            # requestProgress polls the server's progress (nothing runs: it ends after its inactivity timeout)
            result = page.evaluate("""() => new Promise(resolve => {
                const seen = [];
                const box = gradioApp().getElementById('txt2img_gallery');
                requestProgress('task(test)', box, box, () => resolve({seen: seen,
                    barGone: !document.querySelector('.progressDiv')}), res => seen.push(res), 1);
            })""")
            assert result["seen"] and result["barGone"]
            assert result["seen"][0]["active"] is False and "progress" in result["seen"][0]

            # the fixed page build gives every component of this page the events Gradio's own scan gives it
            core = next(frontend_fixes.GRADIO_ASSETS.glob("core-*.js"))
            methods = [_method(frontend_fixes.fixed_asset(core.name).decode(), name)
                       for name in ("find_attached_events", "attached_events_by_id")]
            events = page.evaluate(ATTACHED_EVENTS_CHECK, methods)
            assert events["components"] > 1000 and events["with_events"] > 100 and events["differ"] == [], events

            # an idle page soon draws nothing (Gradio's loader ends its last turn within ~4 s of the load); the
            # loading tracker Gradio removes had asked for 60 frames a second for as long as the page was open
            frames = []
            while len(frames) < 10 and (not frames or frames[-1] >= 10):
                frames.append(page.evaluate("() => new Promise(done => { const n = window.framesAsked; "
                                            "setTimeout(() => done(window.framesAsked - n), 1000); })"))
            assert frames[-1] < 10, frames
        finally:
            browser.close()


@pytest.mark.slow
def test_ui_config_sets_a_sliders_range_and_value_as_in_a1111(site):
    config = json.loads(raw_get(site["url"], "/config")[1])
    props = {c["props"].get("elem_id"): c["props"] for c in config["components"]}
    assert (props["txt2img_steps"]["maximum"], props["txt2img_steps"]["value"]) == (500, 400)
    assert (props["img2img_steps"]["maximum"], props["img2img_steps"]["value"]) == (150, 150)  # brought into range
    assert props["txt2img_switch_at"]["value"] == 0.6
    saved = json.loads((site["data"] / "ui-config.json").read_text())
    assert saved["txt2img/Width/maximum"] == 2048 and saved["img2img/CFG Scale/step"] == 0.5  # there to be edited
    assert saved["txt2img/Hires steps/maximum"] == 150 and saved["img2img/Mask blur/value"] == 4
    assert saved["customscript/refiner.py/img2img/Switch at/value"] == 0.8  # A1111's key for its refiner script
    assert saved["img2img/Mask transparency/maximum"] == 100


def test_gradios_front_end_is_served_with_its_idle_loop_fixed(site):
    from webui import frontend_fixes

    for fix in frontend_fixes.FIXES:  # each fix still finds its text in the installed Gradio
        name = next(frontend_fixes.GRADIO_ASSETS.glob(f"{fix.prefix}*.js")).name
        assert frontend_fixes.fixed_asset(name) is not None, f"{name}: {fix.why} (Gradio changed: review the fix)"
        status, body, resp = raw_get(site["url"], f"/assets/{name}")
        assert status == 200 and fix.new.encode() in body and resp.getheader("content-type").startswith("text/java")
        assert "immutable" in resp.getheader("cache-control")
    status, body, _ = raw_get(site["url"], "/assets/" + next(frontend_fixes.GRADIO_ASSETS.glob("index-*.js")).name)
    assert status == 200 and body  # every other asset is Gradio's own
    assert raw_get(site["url"], "/assets/statustracker-AAAAAAAA.js")[0] == 404  # a name Gradio lacks stays unknown


def test_the_footer_links_the_api_docs_and_the_page_carries_no_event_api_description(site):
    # A1111's footer "API" opens /docs (started with --api here); Gradio's description of the UI's own events is
    # left out of the page (it made every page 2 MB heavier and was not an API anyone named).
    status, page, _ = raw_get(site["url"], "/")
    assert status == 200 and len(page) < 2_000_000
    assert b'window.gradio_api_info = {"named_endpoints":{},"unnamed_endpoints":{}' in page
    config = json.loads(raw_get(site["url"], "/config")[1])
    footer = next(c["props"]["value"] for c in config["components"] if c["props"].get("elem_id") == "footer")
    assert '<a href="./docs"' in footer and "torch: " in footer and "python: " in footer
    assert raw_get(site["url"], "/docs")[0] == 200
    from webui.app import footer_html  # without --api there are no docs to open: the footer says how to get them

    off = footer_html(argparse.Namespace(api=False, nowebui=False))
    assert "API: off" in off and "--api" in off and "./docs" not in off

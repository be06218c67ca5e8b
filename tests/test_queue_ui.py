"""The job queue from the page (webui/queue_panel.py, webui/runner.py): two browsers queue jobs at once and each
gets its own pictures; the Queue panel lists every job (the API's blocking calls too), moves and cancels them; a
reload re-attaches to a waiting job and shows its result; "Generate forever" (A1111's right-click on Generate)
queues the same job again until it is cancelled."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

playwright_api = pytest.importorskip("playwright.sync_api")
from tests.test_webui import CHROMIUM, FLAGS, artifacts, open_ui  # noqa: E402,F401 - skips without chromium

expect = playwright_api.expect

from tests.servers import Server, SharedCache, tiny_ui_data  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_models):
    data = tiny_ui_data(tmp_path_factory.mktemp("queue-ui"), tiny_models)
    srv = Server(data, tmp_path_factory.mktemp("logs") / "server.log").start("--api")
    _client[srv.url] = srv.client()  # one for the queue polls (a new client loads the CA store each time)
    yield srv
    _client.pop(srv.url).close()
    srv.stop()


@pytest.fixture(scope="module")
def browsers():
    """Two browsers (separate contexts: each its own localStorage, so its own id in the queue)."""
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        one, two = SharedCache(b), b.new_context(viewport={"width": 1280, "height": 900})
        yield one, two
        two.close()
        one.close()


@pytest.fixture(scope="module")
def page_a(server, browsers):
    """The first browser's page, for both tests (a page load costs ~3 CPU seconds): each sets its own prompts and
    waits for results that carry them."""
    pg = open_ui(browsers[0], server.url)
    yield pg
    pg.close()


_client: dict = {}


def _jobs(server) -> list[dict]:
    return _client[server.url].get("/sdapi/v1/queue").json()["jobs"]


def _wait_for(predicate, what: str, timeout: float = 90):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _queue(page, prompt: str) -> None:
    page.fill("#txt2img_prompt textarea", prompt)
    page.click("#txt2img_generate")


def _open_panel(page) -> None:
    page.locator("#txt2img_queue_panel").get_by_text("Queue", exact=True).first.click()
    expect(page.locator("#txt2img_queue_status")).to_contain_text("queued")


def test_two_browsers_queue_move_cancel_and_a_reload_re_attaches(server, browsers, page_a, artifacts):
    _, two = browsers
    with server.client() as c:
        c.post("/sdapi/v1/queue/pause")
    a = page_a
    page_b = two.new_page()
    page_b.goto(server.url)
    page_b.wait_for_selector("#txt2img_prompt textarea")
    try:
        _queue(a, "alpha one")
        _wait_for(lambda: len([j for j in _jobs(server) if j["status"] == "queued"]) == 1, "the first job")
        _queue(a, "alpha two")
        _wait_for(lambda: len([j for j in _jobs(server) if j["status"] == "queued"]) == 2, "the second job")
        _queue(page_b, "beta")
        jobs = _wait_for(lambda: (js := [j for j in _jobs(server) if j["status"] == "queued"]) and len(js) == 3
                         and js, "three queued jobs")
        ids = {j["prompt"]: j["id"] for j in jobs}
        assert [j["prompt"] for j in jobs] == ["alpha one", "alpha two", "beta"]
        assert jobs[0]["client"] == jobs[1]["client"] != jobs[2]["client"]  # by browser, not by connection
        expect(a.locator("#txt2img_progress")).to_contain_text("Waiting in queue")

        _open_panel(a)
        listed = a.locator("#txt2img_queue_jobs label")
        expect(listed).to_have_count(3)
        expect(a.locator("#txt2img_queue_status")).to_contain_text("3 queued · 0 running · ⏸ paused")
        expect(listed.nth(0)).to_contain_text("alpha one")
        expect(listed.nth(0)).to_contain_text("this browser")
        expect(listed.nth(2)).to_contain_text("another page")
        a.screenshot(path=str(Path(artifacts) / "queue-panel.png"))

        listed.nth(1).click()  # "alpha two" …
        a.click("#txt2img_queue_up")  # … goes first
        _wait_for(lambda: [j["prompt"] for j in _jobs(server) if j["status"] == "queued"] ==
                  ["alpha two", "alpha one", "beta"], "the move")
        expect(listed.nth(0)).to_contain_text("alpha two")
        listed.nth(1).click()  # "alpha one" is cancelled
        a.click("#txt2img_queue_cancel")
        expect(a.locator("#txt2img_queue_message")).to_contain_text("Cancelled.")

        page_b.reload()  # a reload while its job waits: the page finds it again
        page_b.wait_for_selector("#txt2img_prompt textarea")
        expect(page_b.locator("#txt2img_progress")).to_contain_text("Waiting in queue", timeout=30000)

        a.click("#txt2img_queue_pause")  # resume from the page
        expect(a.locator("#html_info_txt2img")).to_contain_text("alpha two", timeout=90000)
        expect(a.locator("#html_info_txt2img")).to_contain_text("Steps:", timeout=90000)
        expect(page_b.locator("#html_info_txt2img")).to_contain_text("Steps:", timeout=90000)
        assert a.locator("#html_info_txt2img").inner_text().startswith("alpha two")
        assert page_b.locator("#html_info_txt2img").inner_text().startswith("beta")  # never crossed
        expect(page_b.locator("#txt2img_gallery img").first).to_be_visible()
        with server.client() as c:
            done = {p: c.get(f"/sdapi/v1/queue/{i}").json() for p, i in ids.items()}
        assert done["alpha one"]["status"] == "cancelled"
        assert done["alpha two"]["status"] == done["beta"]["status"] == "done"
        assert done["alpha two"]["started"] < done["beta"]["started"]  # in the order the panel set
    finally:
        page_b.close()


def test_generate_forever_and_api_calls_interleave_each_served_once(server, page_a):
    page = page_a
    page.fill("#txt2img_prompt textarea", "forever circle")
    page.click("#txt2img_generate", button="right")
    page.locator("#sd-context-menu").get_by_text("Generate forever", exact=True).click()
    expect(page.locator("#txt2img_generate_forever input")).to_be_checked()

    answers: dict[str, list] = {}

    def call(prompt: str) -> None:
        with server.client() as c:
            r = c.post("/sdapi/v1/txt2img", json={"prompt": prompt, "steps": 2, "width": 64, "height": 64},
                       timeout=120)
        answers.setdefault(prompt, []).append(json.loads(r.json()["info"])["prompt"])

    callers = [threading.Thread(target=call, args=(f"api {n}",)) for n in ("one", "two")]
    for t in callers:
        t.start()
    ran = _wait_for(lambda: (done := [j for j in _jobs(server) if j["prompt"] == "forever circle"
                                      and j["status"] == "done"]) and len(done) >= 3 and done,
                    "three forever runs")
    assert len({j["id"] for j in ran}) == len(ran)
    for t in callers:
        t.join(120)
    assert answers == {"api one": ["api one"], "api two": ["api two"]}  # each answered once, with its own
    api_jobs = [j for j in _jobs(server) if j["source"] == "api" and j["prompt"].startswith("api ")]
    assert sorted(j["prompt"] for j in api_jobs) == ["api one", "api two"]  # listed while they ran
    assert all(j["status"] == "done" for j in api_jobs)

    page.click("#txt2img_generate", button="right")
    page.locator("#sd-context-menu").get_by_text("Cancel generate forever", exact=True).click()
    expect(page.locator("#txt2img_generate_forever input")).not_to_be_checked()
    _wait_for(lambda: not [j for j in _jobs(server) if j["prompt"] == "forever circle"
                           and j["status"] in ("queued", "running")], "the forever chain to stop")
    settled = len([j for j in _jobs(server) if j["prompt"] == "forever circle"])
    time.sleep(1.0)
    assert len([j for j in _jobs(server) if j["prompt"] == "forever circle"]) == settled
    expect(page.locator("#html_info_txt2img")).to_contain_text("forever circle")

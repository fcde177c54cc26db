"""ft rate in a real browser: Debian's Chromium driven by playwright against uvicorn on 127.0.0.1."""

import json
import os
import socket
import threading
import time

import pytest
from typer.testing import CliRunner

from finetune_cli.cli import app as cli_app
from rate_eval_dir import XSS, make_eval_dir

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run installs it)")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


class LiveServer:
    """uvicorn serving ``make_app(...)`` in a thread; ``restart`` builds a fresh app on the same port."""

    def __init__(self, eval_dir, port=None, **kw):
        self.eval_dir, self.kw = eval_dir, kw
        self.port = port or self._free_port()
        self.url = f"http://127.0.0.1:{self.port}/"

    @staticmethod
    def _free_port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def start(self):
        import uvicorn

        from finetune_cli.rate.app import make_app

        self.server = uvicorn.Server(uvicorn.Config(make_app(self.eval_dir, **self.kw), host="127.0.0.1",
                                                    port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.02)
        return self

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)

    def restart(self):
        self.stop()
        return self.start()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1200, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(10_000)
    yield pg
    ctx.close()


def test_rate_by_mouse_and_keyboard_across_a_restart(tmp_path, page):
    from playwright.sync_api import expect

    d = make_eval_dir(tmp_path / "eval", prompts=2)  # 2 prompts × 2 conditions × 1 pair of candidates
    srv = LiveServer(d, seed=5).start()
    try:
        page.goto(srv.url)
        page.fill("#who-name", "ana")
        page.click("text=Start")
        expect(page.locator("#progress-text")).to_have_text("0 of 4 rated")
        assert "rater=ana" in page.url  # a reload keeps the rater
        first = page.text_content("#answer-a")
        page.click("button[data-choice=A]")
        expect(page.locator("#progress-text")).to_have_text("1 of 4 rated")
        assert page.text_content("#answer-a") != first
        page.fill("#reason", "more Doric")
        page.press("#reason", "1")  # typing in the reason box chooses nothing
        expect(page.locator("#reason")).to_have_value("more Doric1")
        assert page.text_content("#progress-text") == "1 of 4 rated"
        page.click("button[data-choice=tie]")
        expect(page.locator("#progress-text")).to_have_text("2 of 4 rated")
        page.keyboard.press("2")
        expect(page.locator("#progress-text")).to_have_text("3 of 4 rated")

        srv.restart()  # mid-session: the open page goes on talking to the new server
        page.keyboard.press("4")
        expect(page.locator("#finished")).to_be_visible()
        expect(page.locator("#progress-text")).to_have_text("4 of 4 rated")
        page.reload()
        expect(page.locator("#finished")).to_be_visible()
    finally:
        srv.stop()
    rows = [json.loads(line) for line in (d / "ratings.jsonl").read_text().splitlines()]
    assert [r["choice"] for r in rows] == ["A", "tie", "B", "both_bad"]
    assert rows[1]["reason"] == "more Doric1" and len({r["pair"] for r in rows}) == 4
    assert rows[0]["winner"] == rows[0]["shown"][0] and rows[2]["winner"] == rows[2]["shown"][1]
    r = CliRunner().invoke(cli_app, ["rate", "--summary", str(d), "--json"])
    s = json.loads(r.stdout)
    [w] = s["win_rates"]
    assert w["n"] == 4 and w["ties"] == 1 and w["both_bad"] == 1 and w["a_wins"] + w["b_wins"] == 2


def test_untrusted_answers_execute_nothing(tmp_path, page):
    from playwright.sync_api import expect

    d = make_eval_dir(tmp_path / "eval", prompts=1, conditions=("system",),
                      text=lambda c, cond, i: XSS[["base", "tuned"].index(c)])
    srv = LiveServer(d).start()
    try:
        page.goto(srv.url + "?rater=eve")
        expect(page.locator("#progress-text")).to_have_text("0 of 1 rated")
        shown = {page.text_content("#answer-a"), page.text_content("#answer-b")}
        assert shown == set(XSS)  # shown as text, character for character
        assert "&lt;script&gt;" in page.inner_html("#answers")
        assert page.locator("#answers script, #answers img").count() == 0
        page.wait_for_timeout(200)  # an onerror would have fired by now
        assert page.evaluate("window.__pwned") is None
    finally:
        srv.stop()


def test_exposed_server_refuses_requests_without_the_token(tmp_path, page):
    from playwright.sync_api import expect

    d = make_eval_dir(tmp_path / "eval", prompts=1)
    srv = LiveServer(d, token="tok-123").start()
    try:
        assert page.goto(srv.url).status == 403
        assert page.goto(srv.url + "?token=nope").status == 403
        assert page.request.get(srv.url + "api/next?rater=ana").status == 403
        assert page.request.post(srv.url + "api/rate", data={"rater": "ana", "pair": "x", "choice": "A"}).status == 403
        assert page.goto(srv.url + "?token=tok-123&rater=ana").status == 200
        expect(page.locator("#progress-text")).to_have_text("0 of 2 rated")
        page.keyboard.press("1")  # the page sends the token with its API calls
        expect(page.locator("#progress-text")).to_have_text("1 of 2 rated")
    finally:
        srv.stop()
    assert len((d / "ratings.jsonl").read_text().splitlines()) == 1

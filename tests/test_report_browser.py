"""The report in a real browser: headless Chromium loads the page, the figures decode and draw, the examples
render, the prompt-id search filters them, and the page makes no network request.

Chromium is driven through the DevTools protocol over ``--remote-debugging-pipe`` (JSON messages separated
by NUL bytes on file descriptors 3 and 4), so no websocket client or browser-automation package is needed.
Every request the page makes is seen as a ``Network.requestWillBeSent`` event; only the page's own
``file://`` URL and ``data:`` URLs (the embedded figures) are allowed.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import subprocess
import threading
from typing import Any

import pytest
from test_eval_diagnostics import fake_run
from test_report import fake_eval, fake_train_logs

from metareward.report import write_compare, write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (make setup-browser)")]

WAIT_S = 60  # upper bound for one browser answer; a healthy run answers in well under a second


class DevTools:
    """A headless Chromium and one page session on it, over the DevTools pipe."""

    def __init__(self, profile: str):
        cmd_r, self._cmd_w = os.pipe()
        self._out_r, out_w = os.pipe()

        def child_fds() -> None:  # chromium reads commands on fd 3 and writes answers on fd 4
            os.dup2(cmd_r, 3)
            os.dup2(out_w, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            preexec_fn=child_fds, pass_fds=(3, 4), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(cmd_r)
        os.close(out_w)
        self.inbox: queue.Queue[dict[str, Any]] = queue.Queue()
        self.events: list[dict[str, Any]] = []
        self._id = 0
        threading.Thread(target=self._read, daemon=True).start()
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

    def _read(self) -> None:
        buf = b""
        while chunk := os.read(self._out_r, 1 << 16):
            buf += chunk
            *messages, buf = buf.split(b"\0")
            for m in messages:
                self.inbox.put(json.loads(m))

    def _next(self) -> dict[str, Any]:
        try:
            msg = self.inbox.get(timeout=WAIT_S)
        except queue.Empty:
            raise AssertionError(f"chromium sent nothing for {WAIT_S} s") from None
        if "method" in msg:
            self.events.append(msg)
        return msg

    def call(self, method: str, params: dict[str, Any] | None = None, session: bool = False) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        while True:
            answer = self._next()
            if answer.get("id") == self._id:
                if "error" in answer:
                    raise AssertionError(f"{method}: {answer['error']}")
                return answer["result"]

    def wait_event(self, method: str) -> None:
        while not any(e["method"] == method for e in self.events):
            self._next()

    def js(self, expression: str) -> Any:
        out = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=True)
        if "exceptionDetails" in out:
            raise AssertionError(f"page script failed: {out['exceptionDetails']}")
        return out["result"].get("value")

    def open(self, uri: str) -> None:
        self.call("Network.enable", session=True)
        self.call("Page.enable", session=True)
        self.call("Page.navigate", {"url": uri}, session=True)
        self.wait_event("Page.loadEventFired")

    def requested_urls(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e["method"] == "Network.requestWillBeSent"]

    def close(self) -> None:
        with contextlib.suppress(AssertionError):  # the browser may close before it answers
            self.call("Browser.close")
        try:
            self.proc.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._cmd_w)


@pytest.fixture
def browser(tmp_path):
    b = DevTools(str(tmp_path / "profile"))
    yield b
    b.close()


FIGURES_JS = """[...document.querySelectorAll('img[data-figure]')].map(i => [i.dataset.figure,
  i.complete && i.naturalWidth > 100 && i.getBoundingClientRect().height > 100])"""


def assert_offline(browser: DevTools, uri: str) -> None:
    urls = browser.requested_urls()
    assert uri in urls  # the monitor saw the page itself
    assert [u for u in urls if u != uri and not u.startswith("data:")] == []


def test_report_renders_offline_with_figures_and_examples(tmp_path, browser):
    run = fake_run(tmp_path / "run")
    fake_eval(run)
    fake_train_logs(run)
    uri = write_report(run).resolve().as_uri()
    browser.open(uri)
    figs = browser.js(FIGURES_JS)
    assert len(figs) == 9 and all(ok for _, ok in figs), figs
    assert "training-curves" in [name for name, _ in figs]
    assert browser.js("document.querySelectorAll('[data-example]').length") == 16
    # folded until opened; "expand all" opens them and the battle matrices show
    assert browser.js("document.querySelector('table.matrix').checkVisibility()") is False
    browser.js("mrExpand(true)")
    assert browser.js("document.querySelector('table.matrix').checkVisibility()") is True
    assert browser.js("document.querySelector('table.matrix').getBoundingClientRect().height") > 50
    # search by prompt id: only that prompt's examples stay visible (one per iteration that drew it)
    pid = browser.js("document.querySelector('[data-example]').dataset.prompt")
    browser.js(f"document.getElementById('search').value = '{pid}'; mrFilter('{pid}')")
    visible = browser.js("[...document.querySelectorAll('[data-example]')].filter(e => e.offsetHeight > 0)"
                         ".map(e => e.dataset.prompt)")
    assert visible and set(visible) == {pid}
    assert browser.js("document.getElementById('search-count').textContent") == f"{len(visible)} shown"
    browser.js("mrFilter('')")
    assert browser.js("[...document.querySelectorAll('[data-example]')].filter(e => e.offsetHeight > 0).length") == 16
    assert_offline(browser, uri)


def test_compare_page_renders_offline(tmp_path, browser):
    a, b = fake_run(tmp_path / "a"), fake_run(tmp_path / "b", seed=1)
    fake_train_logs(a)
    uri = write_compare([a, b], tmp_path / "compare.html").resolve().as_uri()
    browser.open(uri)
    figs = browser.js(FIGURES_JS)
    assert [name for name, _ in figs] == ["compare-scores", "compare-lengths", "compare-bias", "compare-training",
                                         "compare-judge-accuracy", "compare-winrates"]
    assert all(ok for _, ok in figs), figs
    assert_offline(browser, uri)


def test_the_monitor_sees_a_network_request(tmp_path, browser):
    """The check above can fail: a page that loads an external image is caught."""
    page = tmp_path / "leaky.html"
    page.write_text('<!DOCTYPE html><html><body><img src="http://127.0.0.1:9/x.png"></body></html>')
    browser.open(page.as_uri())
    assert "http://127.0.0.1:9/x.png" in browser.requested_urls()

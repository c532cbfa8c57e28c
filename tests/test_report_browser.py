"""The HTML report in a real browser: Debian's headless Chromium, driven over the DevTools
protocol, must load it with no console error, no failed load and every chart decoded. The
screenshot is kept under ``artifacts/`` (git-ignored) for people and CI to look at.

Skipped only when ``TEST_CHROMIUM`` is unset; ``scripts/ci-services.sh`` sets it in CI.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_report_support import make_calls, restamped
from typer.testing import CliRunner

from atlas_middleware.cli.app import app
from atlas_middleware.cli.commands import report as _registered  # noqa: F401
from atlas_middleware.ledger import SQLiteLedger

CHROMIUM = os.environ.get("TEST_CHROMIUM")
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
pytestmark = pytest.mark.skipif(
    not CHROMIUM, reason="TEST_CHROMIUM is unset: run scripts/ci-services.sh (CI always does)"
)
# Flags that keep Chromium off the (closed) network and out of the sandbox a container lacks.
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
)


class DevTools:
    """Just enough of the Chrome DevTools protocol: commands and collected events."""

    def __init__(self, ws_url: str) -> None:
        from websockets.sync.client import connect

        self.ws = connect(ws_url, max_size=64 * 1024 * 1024, open_timeout=30)
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None

    def send(self, method: str, timeout: float = 30, **params: Any) -> dict[str, Any]:
        msg_id = next(self.ids)
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            msg["sessionId"] = self.session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + timeout
        while True:
            reply = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return dict(reply.get("result", {}))
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic()))))

    def close(self) -> None:
        self.ws.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[DevTools]:
    assert CHROMIUM
    profile = tmp_path / "profile"
    proc = subprocess.Popen(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1",
         "--remote-debugging-port=0", "--window-size=1400,1000", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            assert proc.poll() is None, "chromium exited at start"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.1)
        port, path = port_file.read_text().splitlines()[:2]
        tools = DevTools(f"ws://127.0.0.1:{port}{path}")
        target = tools.send("Target.createTarget", url="about:blank")["targetId"]
        tools.session = tools.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            tools.send(f"{domain}.enable")
        yield tools
        tools.close()
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def load(tools: DevTools, page: Path) -> list[str]:
    """Open ``page``; returns the console errors, uncaught exceptions and failed loads."""
    tools.events.clear()
    tools.send("Page.navigate", url=page.resolve().as_uri())
    tools.wait_for("Page.loadEventFired")
    tools.send("Runtime.evaluate", expression="1", awaitPromise=True)  # drain queued events
    problems = []
    for e in tools.events:
        p = e.get("params", {})
        if e.get("method") == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert", "warning"):
            problems.append(f"console.{p['type']}: {[a.get('value') for a in p.get('args', [])]}")
        elif e.get("method") == "Runtime.exceptionThrown":
            problems.append(f"exception: {p['exceptionDetails'].get('text')}")
        elif e.get("method") == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
            problems.append(f"log.{p['entry']['level']}: {p['entry']['text']}")
        elif e.get("method") == "Network.loadingFailed":
            problems.append(f"load failed: {p.get('errorText')}")
    return problems


def evaluate(tools: DevTools, expression: str) -> Any:
    return tools.send("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")


def screenshot(tools: DevTools, out: Path) -> None:
    size = tools.send("Page.getLayoutMetrics")["cssContentSize"]
    shot = tools.send("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                      clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(base64.b64decode(shot["data"]))


def test_the_detector_sees_console_errors_and_broken_images(browser: DevTools, tmp_path: Path) -> None:
    # Without this negative control, "no problems" could just mean "not listening".
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><script>console.error("boom")</script>'
                   '<img src="missing.png"></body></html>')
    problems = load(browser, bad)
    assert any("boom" in p for p in problems)
    assert any("load failed" in p or "missing.png" in p for p in problems)


def test_html_report_loads_cleanly_in_chromium(browser: DevTools, tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    url = f"sqlite:///{db}"
    make_calls(url, rounds=3, spool="none")
    store = SQLiteLedger(db)
    today = store.records()
    for days_back, cost in ((1, 0.0021), (2, 0.0013), (4, None)):
        for r in restamped(today, days_back, cost):
            store.append(r)
    store.close()
    page = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["report", "--ledger", url, "--format", "html", "--out", str(page),
                                      "--group-by", "model"])
    assert result.exit_code == 0, result.output

    problems = load(browser, page)
    assert problems == []
    assert evaluate(browser, "document.images.length") == 6
    # Every chart decoded to its real size: a broken data URL gives naturalWidth 0.
    sizes = evaluate(browser, "Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
    assert sizes == [[True, 800, 400]] * 6
    # Net dollars lead the page: the headline sentence, and the first card.
    assert evaluate(browser, "document.querySelector('p.headline').textContent").startswith("Teaching cost $")
    assert evaluate(browser, "document.querySelector('.card .k').textContent") == "net dollars (+ saved)"
    assert evaluate(browser, "document.querySelector('tr.total td').textContent") == "all"
    # The per-family chart is inline SVG: laid out at its size, one row per family in the table.
    box = evaluate(browser, "(b => [b.width, b.height])(document.querySelector('svg.family-chart').getBoundingClientRect())")
    assert box[0] > 400 and box[1] > 100, box
    assert evaluate(browser, "document.querySelectorAll('svg.family-chart g.family').length") == evaluate(
        browser, "document.querySelector('table.families').querySelectorAll('tbody tr').length") > 0
    shot = ARTIFACTS / "report-html-screenshot.png"
    screenshot(browser, shot)
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 20_000


LAPTOP = 1366
"""A laptop screen's width in CSS pixels: the page must be read there without scrolling sideways."""


def test_html_report_fits_a_laptop_screen(browser: DevTools, tmp_path: Path) -> None:
    # Long names where they hurt most: a provider-prefixed model, a long tag, texts kept so
    # derived families carry their readable label.
    db = tmp_path / "ledger.db"
    make_calls(f"sqlite:///{db}", rounds=2, spool="none", store_texts=True)
    store = SQLiteLedger(db)
    for r in restamped(store.records(), 1, 0.0021):
        long_tag = "t:" + "quarterly revenue reconciliation for the finance team " * 2
        store.append(r.model_copy(update={
            "student_model": "openrouter/meta-llama/llama-3.1-70b-instruct-turbo",
            "task_family": long_tag.strip() if r.task_family and r.task_family.startswith("t:") else r.task_family,
        }))
    store.close()
    page = tmp_path / "report.html"
    for group_by in ("model", "family"):
        result = CliRunner().invoke(app, ["report", "--ledger", f"sqlite:///{db}", "--format", "html", "--out",
                                          str(page), "--group-by", group_by])
        assert result.exit_code == 0, result.output
        browser.send("Emulation.setDeviceMetricsOverride", width=LAPTOP, height=800, deviceScaleFactor=1, mobile=False)
        assert load(browser, page) == []
        assert evaluate(browser, "innerWidth") == LAPTOP
        assert evaluate(browser, "document.documentElement.scrollWidth <= innerWidth"), group_by
        # No table scrolls inside its box either, and none is cut at the window's edge.
        wider = evaluate(browser, "Array.from(document.querySelectorAll('.wide, table'))"
                                  ".filter(e => e.scrollWidth > e.clientWidth + 1"
                                  " || e.getBoundingClientRect().right > innerWidth).map(e => e.className)")
        assert wider == [], group_by
        # Derived families carry the masked start of their template, not only f:<hex>.
        labels = evaluate(browser, "Array.from(document.querySelectorAll('table.families .label'))"
                                   ".map(e => e.textContent)")
        assert "what is <num> + <num>?" in labels, labels
        screenshot(browser, ARTIFACTS / f"report-html-{LAPTOP}-{group_by}.png")
    if os.environ.get("UPDATE_DOCS_SCREENSHOT"):  # refresh the picture in docs/reports.md
        shutil.copyfile(ARTIFACTS / f"report-html-{LAPTOP}-model.png",
                        Path(__file__).resolve().parent.parent / "docs" / "img" / "report-html.png")

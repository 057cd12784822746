"""The review page in a real headless browser (Debian's chromium driven by Playwright).

Upload a query → ranked list with thumbnails → compare view (both videos, frame strips) →
verdicts by keyboard and button → verdict list → export. Screenshots of each view go to the
test's output folder (and to $DNSVR_SCREENSHOTS when set).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("DNSVR_CHROMIUM", "/usr/bin/chromium")
pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
playwright_api = pytest.importorskip("playwright.sync_api")
if not Path(CHROMIUM).exists():
    pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

from dnsvr.serve import create_app  # noqa: E402
from serve_helpers import TOKEN, serve_data  # noqa: E402,F401 - the fixture

BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """uvicorn in a thread on 127.0.0.1 (stopped by the fixture)."""

    def __init__(self, app) -> None:
        self.port = _free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}/"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def _until(page, js: str, timeout: float = 60.0) -> None:
    """Poll ``js`` (a function expression) until it returns true. Not ``wait_for_function``: that
    evaluates strings inside the page, which the page's CSP (no 'unsafe-eval') rightly refuses."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(js):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {js}")
        time.sleep(0.1)


@pytest.fixture
def shots(tmp_path: Path):
    folder = tmp_path / "screenshots"
    folder.mkdir()
    yield folder
    extra = os.environ.get("DNSVR_SCREENSHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        for p in folder.glob("*.png"):
            shutil.copy(p, Path(extra) / p.name)


@pytest.mark.slow
def test_review_page_upload_compare_verdict_export(serve_data, tmp_path, shots):
    index = serve_data.fresh_index(tmp_path / "idx")
    app = create_app(index, media_roots=[serve_data.root], token=TOKEN)
    with _Server(app) as url, playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            outside: list[str] = []
            page.on("request", lambda req: None if req.url.startswith(url) or req.url.startswith(("blob:", "data:"))
                    else outside.append(req.url))
            page.goto(url + f"#token={TOKEN}")
            _until(page, "document.querySelector('#index-info').textContent.includes('videos indexed')")
            assert "token set" in page.inner_text("#token-state")
            assert "#token" not in page.url  # the token leaves the address bar

            # accessible basics: every form control has a label, every button a name
            unlabeled = page.evaluate("""() => [...document.querySelectorAll('input, select')]
                .filter(e => !e.labels || e.labels.length === 0).map(e => e.id)""")
            assert unlabeled == []

            # 1. upload a query
            page.set_input_files("#upload-file", str(serve_data.query))
            page.click("#upload-form button[type=submit]")
            page.wait_for_selector("#result-list .result", timeout=120_000)
            # 2. ranked list with thumbnails
            _until(page, """() => { const imgs = [...document.querySelectorAll('#result-list img.thumb')];
                return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0); }""", timeout=60)
            ids = page.eval_on_selector_all("#result-list .result", "els => els.map(e => e.dataset.video)")
            assert set(ids[:2]) == {"orig_0_crop", "orig_0_hflip"}, ids
            assert "orig_0" in page.inner_text("#results-meta")
            assert page.locator("#result-list .timeline.q span").count() > 0  # matched segments drawn
            page.screenshot(path=str(shots / "1-results.png"), full_page=True)

            # 3. compare view: both videos load, frame strips show, segment seeks both players
            page.click("#result-list .result:nth-child(1) .compare-btn")
            assert page.locator("#result-list .timeline.t span").count() > 0
            page.wait_for_selector("#compare:not([hidden])")
            _until(page, """() => ['#q-video', '#t-video'].every(s => document.querySelector(s).readyState >= 1)
                && ['#q-strip', '#t-strip'].every(s => { const i = document.querySelector(s);
                    return i.complete && i.naturalWidth > 0; })""", timeout=60)
            page.click("#play-both")
            # both players sit at their side of the matched segment and play
            _until(page, """() => { const s = state.current.r.segments[0];
                const q = document.querySelector('#q-video'), t = document.querySelector('#t-video');
                return !q.paused && !t.paused && Math.abs(q.currentTime - s.query_start) < 2
                    && Math.abs(t.currentTime - s.target_start) < 2; }""")
            page.click("#q-video")  # focus leaves the button; keys still work outside inputs
            page.evaluate("() => { document.querySelector('#q-video').pause(); document.querySelector('#t-video').pause(); }")
            page.screenshot(path=str(shots / "2-compare.png"), full_page=True)

            # 4. verdicts: a key in the compare view, then next result and a button
            page.keyboard.press("1")
            _until(page, "document.querySelector('#verdict-state').textContent.includes('saved: copy')")
            page.keyboard.press("j")
            _until(page, f"document.querySelector('#t-name').textContent === {json.dumps(ids[1])}")
            page.fill("#verdict-note", "mirrored")
            page.click("button.v.partial")
            _until(page, "document.querySelector('#verdict-state').textContent.includes('saved: partial')")
            page.keyboard.press("Escape")
            page.wait_for_selector("#compare", state="hidden")
            _until(page, "document.querySelectorAll('#verdict-table tbody tr').length === 2")
            assert page.locator("#result-list .badge.copy").count() == 1
            page.screenshot(path=str(shots / "3-verdicts.png"), full_page=True)

            # 5. export the verdicts as a benchmark ground-truth file
            with page.expect_download() as dl:
                page.click("#export")
            saved = tmp_path / "exported.json"
            dl.value.save_as(saved)
            assert json.loads(saved.read_text()) == {"orig_0": {ids[0]: "copy", ids[1]: "partial"}}
            assert errors == [], errors
            assert outside == [], outside
        finally:
            browser.close()
    for name in ("1-results.png", "2-compare.png", "3-verdicts.png"):
        assert (shots / name).stat().st_size > 10_000

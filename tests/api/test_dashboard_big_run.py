"""The run page of a very long run, in a real browser: a bounded number of bounded requests.

A run of a million events (`STEPSTONE_TEST_BIG_RUN_EVENTS` to change it), written straight
through the aggregate, projected, then shown: the page must ask for one page per panel (the
run, its attempts, its newest events, its newest checkpoints), render, page backwards on a
click with one more request, and keep a small heap. Slow (a minute to write the run), so
marked: `pytest -m slow`. Chromium as in test_dashboard_browser.py.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from test_dashboard_browser import chromium_or_skip
from world import Server

from engine import Engine, Settings
from projections import catch_up

sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))
from synthetic import build_long_run

EVENTS = int(os.environ.get("STEPSTONE_TEST_BIG_RUN_EVENTS", "1000000"))


@pytest.mark.slow
@pytest.mark.timeout(900)  # writing and projecting the million events takes a minute or two
def test_run_page_of_a_million_events_is_bounded(tmp_path: Path) -> None:
    chromium = chromium_or_skip()
    from playwright.sync_api import expect, sync_playwright

    url = f"sqlite:///{tmp_path / 'store.db'}"
    with Engine(Settings(database_url=url)) as engine:
        run_id = build_long_run(engine.store, EVENTS)
    catch_up(url)
    server = Server(url, tmp_path)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium,
                                        args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            errors: list[str] = []
            asked: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: asked.append(r.url) if f"/runs/{run_id}" in r.url
                    else None)
            page.goto(f"{server.base}/#/runs/{run_id}")
            expect(page.locator("#r-status")).to_have_text("completed", timeout=30_000)
            expect(page.locator("#events tbody tr")).to_have_count(200, timeout=30_000)
            expect(page.locator("#checkpoints tbody tr")).to_have_count(100)
            expect(page.locator("#timeline .tl-row")).to_have_count(1)
            expect(page.locator("#live-text")).to_have_text("run finished", timeout=30_000)
            # The run, its attempts, newest events and checkpoints, the stream; then a refresh
            # or two of the attempts, new events and checkpoints as the stream reports the run
            # and its end: a handful, whatever the run's size (it was 1,824 before).
            assert len(asked) <= 16, asked
            newest = page.locator("#events tbody tr").first.inner_text()
            before = len(asked)
            page.locator("#older-events").click()
            expect(page.locator("#events tbody tr")).to_have_count(400, timeout=30_000)
            assert page.locator("#events tbody tr").first.inner_text() == newest
            # One request for the older page (a refresh the stream's end asked for may still
            # be landing meanwhile: it reads the newest events, never older ones).
            older = [u for u in asked[before:] if "limit=200&before=" in u]
            assert len(older) == 1, asked[before:]
            heap = page.evaluate("performance.memory.usedJSHeapSize")
            assert heap < 100 * 2**20, heap
            page.screenshot(path=str(tmp_path / "big-run.png"), full_page=True)
            assert errors == []
            browser.close()
    finally:
        assert server.stop() == 0, server.logs()

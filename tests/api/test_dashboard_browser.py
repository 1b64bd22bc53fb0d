"""The dashboard in a real browser: Debian's headless Chromium, driven by Playwright.

Nothing downloads a browser: Playwright is pointed at the system binary
(`STEPSTONE_TEST_CHROMIUM`, default /usr/bin/chromium). Without it the test is skipped with
the reason, except under CI=true, where a missing browser is a failure. It takes 10-20 s, so
it is marked slow: `pytest -m slow` (which CI runs) includes it.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest
from apiwf import counting
from world import Server

from engine import Engine, RunStatus, Settings
from engine.status import RECORDED

CHROMIUM = os.environ.get("STEPSTONE_TEST_CHROMIUM", "/usr/bin/chromium")


def chromium_or_skip() -> str:
    if shutil.which(CHROMIUM) is None:
        reason = f"no Chromium at {CHROMIUM} (apt-get install chromium, or set " \
                 "STEPSTONE_TEST_CHROMIUM)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI=true: a missing browser is a failure")
        pytest.skip(reason)
    return CHROMIUM


@pytest.mark.slow
def test_dashboard_shows_a_run_advance_live(tmp_path: Path) -> None:
    chromium = chromium_or_skip()
    from playwright.sync_api import expect, sync_playwright

    url = f"sqlite:///{tmp_path / 'store.db'}"
    with Engine(Settings(database_url=url, worker_id="dashboard-test")) as engine:
        for total in (3, 5):
            engine.run(counting, {"total": total})
        run_id = engine.start(counting, {"total": 100, "unit_ms": 60})
        server = Server(url, tmp_path)
        driver = threading.Thread(target=engine.resume, args=(run_id,))
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium,
                                            args=["--no-sandbox", "--disable-gpu"])
                page = browser.new_page(viewport={"width": 1440, "height": 900})
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(server.base + "/")
                row = page.locator(f'tr[data-run="{run_id}"]')
                expect(row).to_be_visible(timeout=15_000)
                # The status filter and the workflow cards list the engine's statuses, which
                # the page loaded from /vocabulary.json.
                options = page.locator("#f-status option")
                expect(options).to_have_count(len(RunStatus) + 1)
                assert set(options.all_inner_texts()[1:]) == {s.value for s in RunStatus}
                counts = page.locator("#workflows .card").first.locator(".counts span")
                # Counted statuses (interrupted is read per run, off the leases) + p50, p95
                expect(counts).to_have_count(len(RECORDED) + 2)
                expect(page.locator("#live-text")).to_have_text("live", timeout=10_000)
                driver.start()
                # The list row updates from /stream while the run goes on.
                expect(row.locator(".pill")).to_have_text("running", timeout=15_000)
                bar = row.locator(".progress span")
                expect(bar).to_contain_text("%", timeout=15_000)
                first = bar.inner_text()
                expect(bar).not_to_have_text(first, timeout=15_000)
                page.screenshot(path=str(tmp_path / "runs.png"), full_page=True)
                # The run page follows /runs/{id}/stream: its bar and checkpoints advance.
                row.locator("a").click()
                run_bar = page.locator("#r-bar-text")
                expect(run_bar).to_contain_text("steps", timeout=10_000)
                before = run_bar.inner_text()
                expect(run_bar).not_to_have_text(before, timeout=15_000)
                expect(page.locator("#checkpoints tbody tr").first).to_be_visible()
                page.screenshot(path=str(tmp_path / "run.png"), full_page=True)
                expect(page.locator("#r-status")).to_have_text("completed", timeout=30_000)
                expect(page.locator("#timeline .tl-row")).to_have_count(2, timeout=10_000)
                expect(page.locator("#live-text")).to_have_text("run finished")
                page.screenshot(path=str(tmp_path / "run-done.png"), full_page=True)
                page.emulate_media(color_scheme="dark")
                page.locator("a.back").click()
                expect(page.locator(f'tr[data-run="{run_id}"] .pill')).to_have_text("completed")
                page.screenshot(path=str(tmp_path / "runs-dark.png"), full_page=True)
                assert errors == []
                browser.close()
        finally:
            if driver.is_alive() or driver.ident is not None:
                driver.join()
            assert server.stop() == 0, server.logs()
    for name in ("runs.png", "run.png", "run-done.png", "runs-dark.png"):
        assert (tmp_path / name).stat().st_size > 10_000


@pytest.mark.slow
def test_the_token_stays_in_its_tab_and_docs_work_offline(tmp_path: Path) -> None:
    """The token is asked for once, kept in sessionStorage and sent as a header (the live
    streams included); no cookie is set, and a page from another port of the same host cannot
    read it. /docs renders Swagger UI with every request to anywhere but this server blocked."""
    chromium = chromium_or_skip()
    import http.server

    from playwright.sync_api import Route, expect, sync_playwright

    url = f"sqlite:///{tmp_path / 'store.db'}"
    token = "browser-token-0123456789"
    with Engine(Settings(database_url=url, worker_id="dashboard-test")) as engine:
        run_id = engine.run(counting, {"total": 3}).run_id
    server = Server(url, tmp_path, token=token)
    # A neighbour: another server on the same host, another port (another origin).
    neighbour = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=neighbour.serve_forever, daemon=True).start()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium,
                                        args=["--no-sandbox", "--disable-gpu"])
            context = browser.new_context()
            outside: list[str] = []

            def only_local(route: Route) -> None:
                if route.request.url.startswith("http://127.0.0.1:"):
                    route.continue_()
                else:
                    outside.append(route.request.url)
                    route.abort()

            context.route("**/*", only_local)
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(server.base + "/")
            expect(page.locator("#login-view")).to_be_visible(timeout=10_000)
            errors.clear()  # the 401 that brought the form up is logged by the browser
            page.locator("#token").fill(token)
            page.locator("#login button").click()
            row = page.locator(f'tr[data-run="{run_id}"]')
            expect(row).to_be_visible(timeout=15_000)
            expect(page.locator("#live-text")).to_have_text("live", timeout=10_000)
            row.locator("a").click()
            expect(page.locator("#r-status")).to_have_text("completed", timeout=10_000)
            expect(page.locator("#live-text")).to_have_text("run finished", timeout=10_000)
            assert page.evaluate("sessionStorage.getItem('stepstone.token')") == token
            assert page.evaluate("document.cookie") == ""
            assert context.cookies() == []
            other = context.new_page()
            other.goto(f"http://127.0.0.1:{neighbour.server_address[1]}/")
            assert other.evaluate("document.cookie") == ""
            assert other.evaluate("sessionStorage.getItem('stepstone.token')") is None
            # Swagger UI, offline: its operations render from the package's own files.
            page.goto(server.base + "/docs")
            expect(page.locator(".opblock").first).to_be_visible(timeout=15_000)
            assert page.locator(".opblock").count() >= 9
            expect(page.locator("button.authorize")).to_be_visible()
            page.screenshot(path=str(tmp_path / "docs.png"), full_page=True)
            assert outside == []
            assert errors == []
            browser.close()
    finally:
        neighbour.shutdown()
        assert server.stop() == 0, server.logs()
    assert token not in server.logs()


@pytest.mark.slow
def test_progress_and_timeline_of_a_stopped_run(tmp_path: Path) -> None:
    """A preempted run's bar counts its steps against the latest completed run's, says so,
    and its timeline ends at its last event instead of stretching to now."""
    chromium = chromium_or_skip()
    import time

    import apiwf
    from playwright.sync_api import expect, sync_playwright

    url = f"sqlite:///{tmp_path / 'store.db'}"
    with Engine(Settings(database_url=url, worker_id="dashboard-test")) as engine:
        engine.run(counting, {"total": 3})
        apiwf.PREEMPT_HOOK[0] = lambda: engine.preempt("the test stops it")
        try:
            stopped = engine.run(counting, {"total": 9, "stop_at": 3}).run_id
        finally:
            apiwf.PREEMPT_HOOK[0] = lambda: None
            engine.token.clear()
    time.sleep(3)  # "now" is well past the run's last event
    server = Server(url, tmp_path)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium,
                                        args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page()
            page.goto(server.base + "/")
            row = page.locator(f'tr[data-run="{stopped}"]')
            expect(row.locator(".progress span")).to_have_text("0 of 2 steps", timeout=15_000)
            assert "latest completed run" in (row.locator(".progress").get_attribute("title")
                                              or "")
            row.locator("a").click()
            expect(page.locator("#r-status")).to_have_text("preempted", timeout=10_000)
            expect(page.locator("#r-bar-text")).to_have_text("0 of 2 steps")
            expect(page.locator("#timeline .tl-row")).to_have_count(1, timeout=10_000)
            span = page.locator("#t-span").inner_text()
            amount, unit = span.split(" over ")[1].split()
            seconds = float(amount) / 1000 if unit == "ms" else float(amount)
            assert unit in ("ms", "s"), span
            assert seconds < 2, span
            browser.close()
    finally:
        assert server.stop() == 0, server.logs()

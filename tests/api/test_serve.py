"""`stepstone serve` for real: a subprocess whose projector child keeps the views live."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from uuid import UUID

import httpx
import orjson
import pytest
from apiwf import counting
from world import Server

from engine import Engine, Settings
from support import wait_until

TOKEN = "serve-test-token-0123456789"


def test_serve_feeds_views_streams_progress_and_stops_cleanly(
    store_url: str, tmp_path: Path
) -> None:
    with Engine(Settings(database_url=store_url, worker_id="live")) as engine:
        run_id = engine.start(counting, {"total": 30, "unit_ms": 40})
        server = Server(store_url, tmp_path, token=TOKEN)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        try:
            assert httpx.get(server.base + "/runs").status_code == 401
            projector = server.children()
            assert len(projector) == 1
            wait_until(lambda: httpx.get(server.base + f"/runs/{run_id}", headers=auth)
                       .status_code == 200, "the projector child to project the new run")
            driver = threading.Thread(target=engine.resume, args=(run_id,))
            driver.start()
            seen: list[int] = []
            with httpx.stream("GET", server.base + f"/runs/{run_id}/stream", headers=auth,
                              timeout=30) as stream:
                assert stream.status_code == 200
                for line in stream.iter_lines():
                    if line.startswith("data:") and line != "data: completed":
                        body = orjson.loads(line[5:])
                        assert UUID(body["run_id"]) == run_id
                        seen.append(body["last_position"])
                    if line == "event: end":
                        break
            driver.join()
            assert seen == sorted(seen)
            assert len(seen) >= 3, "the stream should push progress while the run goes on"
            last = engine.history(run_id)[-1].position
            assert seen[-1] == last
            r = httpx.get(server.base + f"/runs/{run_id}", params={"after": last}, headers=auth)
            assert r.json()["status"] == "completed"
            with httpx.stream("GET", server.base + "/stream", headers=auth, timeout=30) as all_:
                first = next(line for line in all_.iter_lines() if line.startswith("event:"))
            assert first == "event: position"
        finally:
            code = server.stop()
        assert code == 0, server.logs()
        for pid in projector:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        logs = server.logs()
        assert "GET /runs" in logs  # the access log is there...
        assert TOKEN not in logs  # ...and the token is not


def test_serve_refuses_a_bad_store_url_in_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "stepstone", "serve", "--db", "mysql://x/y"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert r.stderr.startswith("error: unsupported store URL")

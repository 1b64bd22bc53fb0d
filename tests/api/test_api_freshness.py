"""`?after=`: reads wait, bounded, for the views to reach a position, and say so when they don't."""

from __future__ import annotations

import threading
import time

from apiwf import counting
from world import client_for

from engine import Engine, Settings
from projections import catch_up


def test_after_waits_for_the_projector_then_answers(store_url: str) -> None:
    with Engine(Settings(database_url=store_url)) as engine:
        first = engine.run(counting, {"total": 2}).run_id
        catch_up(store_url)
        second = engine.run(counting, {"total": 3}).run_id
        position = engine.history(second)[-1].position
    with client_for(store_url, after_timeout_s=0.3) as client:
        assert client.get(f"/runs/{first}").status_code == 200
        assert client.get(f"/runs/{second}").status_code == 404  # not projected yet
        started = time.monotonic()
        late = client.get(f"/runs/{second}", params={"after": position})
        assert late.status_code == 503
        assert "did not reach" in late.json()["detail"]
        assert time.monotonic() - started < 2
        past = client.get("/runs", params={"after": position + 1000})
        assert past.status_code == 422
        projector = threading.Timer(0.1, catch_up, args=(store_url,))
        projector.start()
        try:
            with client_for(store_url, after_timeout_s=10) as patient:
                r = patient.get(f"/runs/{second}", params={"after": position})
                assert r.status_code == 200
                assert r.json()["last_position"] == position
                assert r.json()["status"] == "completed"
        finally:
            projector.join()


def test_readyz_says_when_views_are_missing_or_behind(store_url: str) -> None:
    with Engine(Settings(database_url=store_url)) as engine:
        engine.run(counting, {"total": 2})
    with client_for(store_url, ready_max_lag=0) as client:
        r = client.get("/readyz")
        assert r.status_code == 503
        assert r.json()["ready"] is False
        assert client.get("/runs").status_code == 503
        assert "stepstone projections run" in client.get("/runs").json()["detail"]
        catch_up(store_url)
        assert client.get("/readyz").status_code == 200
        with Engine(Settings(database_url=store_url)) as engine:
            engine.run(counting, {"total": 1})
        behind = client.get("/readyz").json()
        assert behind["ready"] is False
        assert all(v["lag"] > 0 for v in behind["views"])

"""Published values, both stores: readable from the log before the run ends, replayed once,
waited for, refused when never published; the API's `/runs/{id}/published` from the view."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from uuid import uuid4

import pytest

import msgwf
from engine import (
    Engine,
    InvalidInputError,
    NotPublishedError,
    RunNotFoundError,
    RunStatus,
    publish,
)
from engine.events import ValuePublished
from projections import Projector
from support import call_when

sys.path.insert(0, str(Path(__file__).parent.parent / "api"))
from world import client_for


def test_a_waiting_run_shows_what_it_published(engine: Engine) -> None:
    run_id = engine.start(msgwf.exporter, {"rows": 7})
    assert engine.leases.claim_run(run_id, engine.settings.worker_id, 30, workflow="exporter",
                                   queue="default") is None
    engine.drive_claimed(run_id, since=time.monotonic(), suspend_after_s=1.0)
    assert engine.status(run_id).status is RunStatus.WAITING
    assert engine.read_published(run_id, "file") == {"path": "export-7.csv"}
    assert engine.read_published(run_id, "stage") == "exported"  # the latest one
    with pytest.raises(NotPublishedError, match="has not published 'size'; wait longer"):
        engine.read_published(run_id, "size", wait=0.1)
    engine.send(run_id, "finish", None)
    assert engine.resume(run_id).output == "export-7.csv"  # replays the publishes, once each
    kinds = [e.fields["key"] for e in engine.history(run_id) if e.kind is ValuePublished]
    assert kinds == ["stage", "file", "stage"]
    with pytest.raises(NotPublishedError, match="it ended without publishing it"):
        engine.read_published(run_id, "size", wait=5)  # ended: no waiting
    with pytest.raises(RunNotFoundError):
        engine.read_published(uuid4(), "file")
    with pytest.raises(InvalidInputError):
        engine.read_published(run_id, "")


def test_read_published_waits_for_the_value(engine: Engine) -> None:
    run_id = engine.start(msgwf.exporter, {"rows": 2})
    driver = call_when(lambda: True, lambda: engine.resume(run_id))
    assert engine.read_published(run_id, "file", wait=60) == {"path": "export-2.csv"}
    engine.send(run_id, "finish", None)
    driver.join(60)
    assert engine.status(run_id).status is RunStatus.COMPLETED


def test_publish_outside_a_run_is_a_no_op_and_checks_its_input() -> None:
    publish("k", 1)
    with pytest.raises(InvalidInputError, match="must be JSON"):
        publish("k", {1, 2})


def test_the_api_serves_the_latest_value_of_each_key(store_url: str) -> None:
    with Engine.from_url(store_url) as engine:
        run_id = engine.start(msgwf.exporter, {"rows": 5})
        engine.send(run_id, "finish", None)
        engine.resume(run_id)
        with Projector(engine.store) as projector:
            projector.catch_up()
    with client_for(store_url) as client:
        page = client.get(f"/runs/{run_id}/published").json()
        assert [(i["key"], i["value"]) for i in page["items"]] == [
            ("file", {"path": "export-5.csv"}), ("stage", "exported")]
        first = client.get(f"/runs/{run_id}/published?limit=1").json()
        assert [i["key"] for i in first["items"]] == ["file"]
        rest = client.get(f"/runs/{run_id}/published",
                          params={"cursor": first["next_cursor"]}).json()
        assert [i["key"] for i in rest.get("items", [])] == ["stage"], rest
        assert client.get(f"/runs/{uuid4()}/published").status_code == 404

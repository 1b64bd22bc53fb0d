"""Damaged logs and snapshots: named errors and warnings, never tracebacks or silent results.

Each case damages the store with direct SQL, as a bad restore, a disk error or someone with
database access could, on both stores.
"""

from __future__ import annotations

import logging
import time
from uuid import UUID

import orjson
import pytest
from click.testing import CliRunner
from tamper import (
    delete,
    read,
    read_snapshot,
    snapshot_versions,
    write,
    write_snapshot,
)
from test_audit_replay_check import runs_row

from engine import DamagedLogError, Engine, RunStatus, Settings, UnknownEventError, step, workflow
from engine.audit.verify import verify
from projections import Projector
from stepstone.cli import main


@step
def add(i: int) -> int:
    return i + 1


@workflow("damaged-log")
def chain_of(n: int) -> int:
    return sum(add(i) for i in range(n))


def two_runs(url: str, n: int = 30, snapshots: int = 20) -> tuple[UUID, UUID]:
    with Engine(Settings(database_url=url, snapshot_interval=snapshots)) as engine:
        a = engine.run(chain_of, {"n": n}, key="a").run_id
        b = engine.run(chain_of, {"n": n}, key="b").run_id
    return a, b


def cli(url: str, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [*args, "--db", url])
    return result.exit_code, result.stdout, result.stderr


def test_a_missing_version_is_named_everywhere_and_other_runs_still_list(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = two_runs(store_url, snapshots=0)  # (a hole before a snapshot is not read on load)
    with Engine.from_url(store_url) as engine:
        delete(engine, a, 8)
        position = engine.store.position_of(a, 9)
        with pytest.raises(DamagedLogError) as e:
            engine.status(a)
        assert (e.value.run_id, e.value.version, e.value.position) == (a, 8, position)
        message = str(e.value)
        assert str(a) in message
        assert "version 8" in message
        assert f"position {position}" in message
        assert "stepstone verify" in message
        assert "Upgrade" not in message
        with caplog.at_level(logging.WARNING):
            listed = [info.run_id for info in engine.runs()]
        assert listed == [b]
        assert f"skipping run {a}" in caplog.text
    code, out, err = cli(store_url, "runs")
    assert code == 0, err
    assert str(b) in out
    assert "Traceback" not in err
    for command in (["status", str(a)], ["resume", str(a)]):
        code, _, err = cli(store_url, *command)
        assert code == 2, (command, err)
        assert "version 8" in err
        assert "stepstone verify" in err
        assert "Traceback" not in err
    code, _, err = cli(store_url, "verify", str(a))
    assert code == 1
    assert "TAMPERED" in err


def test_garbage_in_a_payload_is_damage_not_a_newer_release(store_url: str) -> None:
    a, _ = two_runs(store_url, n=3)
    with Engine.from_url(store_url) as engine:
        topic, _ = read(engine, a, 4)
        write(engine, a, 4, topic, b"\x00not json")
        with pytest.raises(DamagedLogError) as damaged:
            engine.status(a)
        assert "version 4" in str(damaged.value)
        assert "Upgrade" not in str(damaged.value)
        with pytest.raises(DamagedLogError):
            engine.history(a)
        # A type of our own vocabulary that this release lacks is from a newer release.
        write(engine, a, 4, "engine.events:RunTeleported", b"{}")
        with pytest.raises(UnknownEventError) as newer:
            engine.status(a)
        assert "Upgrade Stepstone" in str(newer.value)
        # A type from nowhere is damage again.
        write(engine, a, 4, "nowhere.at.all:Thing", b"{}")
        with pytest.raises(DamagedLogError):
            engine.status(a)


def test_the_views_skip_an_undecodable_event_with_a_warning(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = two_runs(store_url, n=3)
    with Engine.from_url(store_url) as engine:
        topic, _ = read(engine, a, 4)
        write(engine, a, 4, topic, b"[1, 2")
    with caplog.at_level(logging.WARNING), Projector(store_url) as projector:
        projector.catch_up()
        assert set(projector.positions().values()) == {projector.head()}  # went past it
        row = runs_row(projector, b)
    assert row["status"] == "completed"
    assert str(a) in caplog.text
    assert "version 4" in caplog.text


def test_a_snapshot_that_does_not_match_its_event_is_ignored(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    a, _ = two_runs(store_url)
    with Engine(Settings(database_url=store_url, snapshot_interval=0)) as plain:
        truth = plain.store.load(a)
    with Engine(Settings(database_url=store_url, snapshot_interval=20)) as engine:
        versions = snapshot_versions(engine, a)
        assert versions
        last = versions[-1]
        doc = orjson.loads(read_snapshot(engine, a, last))
        doc["state"]["last_hash"] = "0" * 64  # not the hash of the event at that version
        doc["state"]["output"] = 999
        write_snapshot(engine, a, last, orjson.dumps(doc))
        with caplog.at_level(logging.WARNING):
            run = engine.store.load(a)
        assert run.state == truth.state
        assert f"ignoring the snapshot of run {a} at version {last}" in caplog.text
        caplog.clear()
        write_snapshot(engine, a, last, b"garbage")
        with caplog.at_level(logging.WARNING):
            run = engine.store.load(a)
        assert run.state == truth.state
        assert "does not decode" in caplog.text


def test_verify_finds_an_edited_snapshot_that_keeps_its_hash(store_url: str) -> None:
    a, b = two_runs(store_url)
    with Engine.from_url(store_url) as engine:
        assert verify(engine.store).ok
        last = snapshot_versions(engine, a)[-1]
        doc = orjson.loads(read_snapshot(engine, a, last))
        step = next(iter(doc["state"]["steps"]))
        doc["state"]["steps"][step]["output"] = 12345  # the hash is left as it was
        write_snapshot(engine, a, last, orjson.dumps(doc))
        report = verify(engine.store)
        assert not report.ok
        assert [(p.run_id, p.version) for p in report.problems] == [(a, last)]
        assert "snapshot" in report.problems[0].what
        assert verify(engine.store, b).ok
    code, _, err = cli(store_url, "verify")
    assert code == 1
    assert f"the snapshot at version {last}" in err


def test_a_run_with_a_hole_is_not_driven_further(store_url: str) -> None:
    a, _ = two_runs(store_url, n=5, snapshots=0)
    with Engine.from_url(store_url) as engine:
        delete(engine, a, 3)
        with pytest.raises(DamagedLogError):
            engine.resume(a)
        # A worker that claims it (as one would a run whose hole came mid-flight)...
        since = time.monotonic()
        assert engine.leases.claim_run(a, engine.settings.worker_id, 30.0,
                                       workflow="damaged-log", queue="default") is None
        with pytest.raises(DamagedLogError):
            engine.drive_claimed(a, since=since)
        # ...parks it in the runnable index, so no worker claims it again and again.
        place = engine.placement(a)
        assert place is not None
        assert place.state == "parked"
        assert "stepstone verify" in (place.note or "")
        assert engine.leases.claim("any-worker", None, 10, 30.0) == []
        other = engine.run(chain_of, {"n": 2}, key="c")
        assert other.status is RunStatus.COMPLETED


def test_verify_checks_older_snapshots_when_asked_and_chains_alone_when_told(
    store_url: str,
) -> None:
    a, _ = two_runs(store_url)
    with Engine.from_url(store_url) as engine:
        first = snapshot_versions(engine, a)[0]
        assert first != snapshot_versions(engine, a)[-1]
        doc = orjson.loads(read_snapshot(engine, a, first))
        doc["state"]["output"] = "edited"
        write_snapshot(engine, a, first, orjson.dumps(doc))
        assert verify(engine.store, a).ok  # the latest one, which loads trust, is intact
        report = verify(engine.store, a, snapshots="all")
        assert [(p.run_id, p.version) for p in report.problems] == [(a, first)]
        assert verify(engine.store, snapshots="none").ok
    code, _, err = cli(store_url, "verify", "--snapshots", "all")
    assert code == 1
    assert f"the snapshot at version {first}" in err

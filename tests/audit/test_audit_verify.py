"""Tamper evidence: verify finds an edited, removed, inserted or swapped event, on both stores."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import orjson
import pytest
from click.testing import CliRunner
from tamper import delete, read, swap, write

from engine import Engine, Settings, step, workflow
from engine.audit.verify import read_anchors, verify
from stepstone.cli import main


@step
def square(i: int) -> int:
    return i * i


@workflow("audit-squares")
def squares(n: int) -> int:
    return sum(square(i) for i in range(n))


@pytest.fixture
def two_runs(store_url: str) -> Iterator[tuple[Engine, UUID, UUID]]:
    # Snapshots every few events: verify must read events, never trust snapshots.
    with Engine(Settings(database_url=store_url, snapshot_interval=4)) as engine:
        a = engine.run(squares, {"n": 4}).run_id
        b = engine.run(squares, {"n": 3}).run_id
        yield engine, a, b


def _position(engine: Engine, run_id: UUID, version: int) -> int:
    return next(p for p, e in engine.store.events_with_positions(run_id)
                if e.originator_version == version)


def test_an_untouched_log_verifies_clean(two_runs: tuple[Engine, UUID, UUID]) -> None:
    engine, a, b = two_runs
    report = verify(engine.store)
    assert report.ok
    assert not report.unchained
    assert report.events == engine.store.head()
    heads = {h.run_id: h for h in report.heads}
    assert heads[a].version == engine.store.load(a).version
    assert heads[a].hash == engine.store.load(a).state.last_hash
    assert verify(engine.store, b).ok


def test_an_edited_payload_is_named(two_runs: tuple[Engine, UUID, UUID]) -> None:
    engine, a, _ = two_runs
    topic, state = read(engine, a, 5)
    assert topic.endswith("StepCompleted")
    doc = orjson.loads(state)
    doc["output"] = doc["output"] + 1
    write(engine, a, 5, topic, orjson.dumps(doc))
    expected = _position(engine, a, 5)
    for report in (verify(engine.store), verify(engine.store, a)):
        assert not report.ok
        assert report.first is not None
        assert (report.first.position, report.first.version) == (expected, 5)
        assert "edited" in report.first.what
    # Loading still works (from a snapshot or not): only verify can tell.
    assert engine.store.load(a).status.value == "completed"


def test_a_removed_event_is_named(two_runs: tuple[Engine, UUID, UUID]) -> None:
    engine, a, _ = two_runs
    next_position = _position(engine, a, 4)
    delete(engine, a, 3)
    for report in (verify(engine.store), verify(engine.store, a)):
        assert report.first is not None
        assert (report.first.position, report.first.version) == (next_position, 4)
        assert "version 3 was expected" in report.first.what


def test_swapped_events_are_named(two_runs: tuple[Engine, UUID, UUID]) -> None:
    engine, _, b = two_runs
    swap(engine, b, 2, 3)
    expected = _position(engine, b, 2)
    for report in (verify(engine.store), verify(engine.store, b)):
        assert report.first is not None
        assert (report.first.position, report.first.version) == (expected, 2)


def test_an_inserted_event_is_named(two_runs: tuple[Engine, UUID, UUID]) -> None:
    engine, a, _ = two_runs
    # Forge a copy of event 3 as a new last event: a valid JSON payload, but not chained.
    last = engine.store.load(a).version
    topic, state = read(engine, a, 3)
    from engine.audit.export import import_records

    import_records(engine.store, [{"run_id": str(a), "version": last + 1, "topic": topic,
                                   "event": orjson.loads(state), "position": 0}])
    report = verify(engine.store, a)
    assert report.first is not None
    assert report.first.version == last + 1
    assert report.first.position == _position(engine, a, last + 1)


def test_anchors_catch_a_cut_tail_and_a_rewritten_chain(
    two_runs: tuple[Engine, UUID, UUID], tmp_path: object
) -> None:
    engine, a, _ = two_runs
    anchors = read_anchors(
        {"run_id": h.run_id, "version": h.version, "hash": h.hash}
        for h in verify(engine.store).heads
    )
    last = engine.store.load(a).version
    delete(engine, a, last)  # the last event: a chain alone cannot tell
    assert verify(engine.store).ok
    report = verify(engine.store, anchors=anchors)
    assert not report.ok
    assert report.first is not None
    assert report.first.run_id == a
    assert "removed" in report.first.what


def test_verify_command_exit_codes_and_heads(two_runs: tuple[Engine, UUID, UUID],
                                             store_url: str, tmp_path: object) -> None:
    engine, a, _ = two_runs
    ok = CliRunner().invoke(main, ["verify", "--db", store_url, "--json"])
    assert ok.exit_code == 0, ok.output
    heads = [orjson.loads(line) for line in ok.stdout.splitlines()]
    assert {h["run_id"] for h in heads} == {str(a), str(two_runs[2])}
    assert "intact" in ok.stderr
    delete(engine, a, 3)
    bad = CliRunner().invoke(main, ["verify", str(a), "--db", store_url])
    assert bad.exit_code == 1
    assert f"position {_position(engine, a, 4)}" in bad.stderr
    assert "TAMPERED" in bad.stderr


def test_the_chain_continues_across_a_snapshot(store_url: str) -> None:
    from auditwf import STOP_IN_SHIP, v1
    from engine import RunStatus

    with Engine(Settings(database_url=store_url, snapshot_interval=2)) as engine:
        STOP_IN_SHIP["on"] = True
        try:
            stopped = engine.run(v1, {"order": "o-snap"})
        finally:
            STOP_IN_SHIP["on"] = False
        assert stopped.status is RunStatus.PREEMPTED
        assert engine.store.snapshots is not None
        snaps = list(engine.store.snapshots.get(stopped.run_id))
        assert snaps  # the resume below loads from this snapshot
        assert snaps[-1].state.last_hash is not None
        assert engine.resume(stopped.run_id).status is RunStatus.COMPLETED
        report = verify(engine.store, stopped.run_id)
        assert report.ok, report.first
        assert report.heads[0].version > snaps[-1].originator_version


def test_audits_of_what_does_not_exist_do_not_pass(two_runs: tuple[Engine, UUID, UUID],
                                                   store_url: str, tmp_path: Path) -> None:
    _, a, _ = two_runs
    nobody = "00000000-0000-0000-0000-000000000000"
    r = CliRunner().invoke(main, ["verify", nobody, "--db", store_url])
    assert r.exit_code == 2, r.output
    assert f"no run with id {nobody}" in r.stderr
    assert "intact" not in r.stderr
    out = tmp_path / "out.jsonl"
    r = CliRunner().invoke(main, ["export", "--run", nobody, "-o", str(out), "--db", store_url])
    assert r.exit_code == 2
    assert f"no run with id {nobody}" in r.stderr
    assert not out.exists()
    r = CliRunner().invoke(main, ["export", "--workflow", "nope", "--db", store_url])
    assert r.exit_code == 2
    assert "no runs of workflow 'nope'" in r.stderr
    for bad in (b'{"bad":1}\n', b'[1, 2]\n', b'{"run_id": "x", "version": 1, "hash": "h"}\n'):
        anchors = tmp_path / "anchors.jsonl"
        good = orjson.dumps({"run_id": str(a), "version": 1, "hash": None}) + b"\n"
        anchors.write_bytes(good + bad)
        r = CliRunner().invoke(main, ["verify", "--anchors", str(anchors), "--db", store_url])
        assert r.exit_code == 2, (bad, r.output)
        assert "entry 2 is not a run's head" in r.stderr, r.stderr
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"\n")
    r = CliRunner().invoke(main, ["verify", "--anchors", str(empty), "--db", store_url])
    assert r.exit_code == 2
    assert "holds no heads" in r.stderr

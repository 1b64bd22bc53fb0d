"""A worker's error branches: no code for a run, a run whose history diverged, a store outage,
and a SIGTERM that arrives while it starts."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from pathlib import Path

import workerwf
from conftest import POSTGRES_URL
from engine import Engine, RunStatus, step, step_context, workflow
from engine.workers.worker import Worker
from netfault import Relay
from support import Ledger, wait_until
from workers.harness import (
    FAST_LEASE,
    WorkerProcess,
    engine_for,
    ledger_url,
    wait_all,
    workers,
)


def test_a_worker_without_the_code_of_a_run_hands_it_back_for_a_while(
    store_url: str, tmp_path: Path
) -> None:
    @workflow("nowhere-to-import")
    def orphan() -> int:
        return 1

    with engine_for(store_url) as engine:
        run_id = engine.start(orphan, {})
        with workers(store_url, tmp_path, 1, *FAST_LEASE) as (w,):
            wait_until(lambda: f"cannot drive run {run_id} here" in w.log(), "the refusal")
            row = engine.leases.row(run_id)
            assert row is not None
            assert (row.state, row.lease_owner) == ("ready", None)
            assert "orphan" in (row.note or "")  # why: the code it could not find
            assert row.available_at > time.time() + 20  # others get the run meanwhile
            assert w.stop() == 0
        assert engine.status(run_id).status is RunStatus.PENDING  # nothing was written
        assert [h.event_type for h in engine.history(run_id)] == ["RunStarted"]


body = {"first": "fetch"}
ran: Counter[str] = Counter()
driving: list[Engine] = []


@step
def fetch() -> str:
    ran["fetch"] += 1
    return "fetched"


@step
def publish() -> str:
    ran["publish"] += 1
    if ran["publish"] == 1:  # the first run is preempted here
        driving[0].preempt("stop in publish")
        step_context().checkpoint(None)
    return "published"


@workflow("diverging")
def diverging() -> list[str]:
    if body["first"] == "fetch":
        return [fetch(), publish()]
    return [publish(), fetch()]


def test_a_worker_parks_a_run_whose_code_no_longer_matches_its_history(
    store_url: str,
) -> None:
    ran.clear()
    body["first"] = "fetch"
    with engine_for(store_url, lease_duration_s=5, heartbeat_interval_s=1,
                    worker_poll_interval_s=0.05) as engine:
        driving[:] = [engine]
        first = engine.run(diverging, {})
        assert first.status is RunStatus.PREEMPTED
        engine.token.clear()
        body["first"] = "publish"  # a deploy changed the order of the steps
        worker = Worker(engine, concurrency=1)
        thread = threading.Thread(target=worker.run)
        thread.start()
        try:
            wait_until(lambda: engine.status(first.run_id).status is RunStatus.PARKED,
                       "the run to be parked")
        finally:
            engine.preempt("test done")
            thread.join(30)
        assert not thread.is_alive()
        assert (worker.stats.parked, worker.stats.completed, worker.stats.errors) == (1, 0, 0)
        assert ran == {"fetch": 1, "publish": 1}  # the diverged body ran no step
        assert "publish" in (engine.status(first.run_id).parked_reason or "")


fixed = {"yet": False}


@step
def unrecordable() -> object:
    ran["unrecordable"] += 1
    return "fine" if fixed["yet"] else object()  # an object() cannot be recorded as JSON


@workflow("unrecordable-output")
def unrecordable_output() -> object:
    return unrecordable()


def test_a_worker_survives_an_engine_error_and_the_run_completes_once_the_code_is_fixed(
    store_url: str,
) -> None:
    ran.clear()
    fixed["yet"] = False
    with engine_for(store_url, worker_poll_interval_s=0.05) as engine:
        run_id = engine.start(unrecordable_output, {})
        worker = Worker(engine, concurrency=1)
        thread = threading.Thread(target=worker.run)
        thread.start()
        try:
            wait_until(lambda: worker.stats.errors >= 1, "the worker to hit the error")
            # Handed back with a delay (1 s, then 2 s...), not claimed again at once: over
            # 2.5 s the broken step ran a few times, not hundreds (it did before the backoff).
            time.sleep(2.5)  # the window measured, not a wait for something
            assert ran["unrecordable"] <= 3, ran
            place = engine.placement(run_id)
            assert place is not None
            assert "cannot be recorded" in (place.note or "")
            # Nothing about the output was written: the step has no completion in the log.
            kinds = [h.event_type for h in engine.history(run_id)]
            assert "StepCompleted" not in kinds
            assert not engine.status(run_id).status.is_terminal
            fixed["yet"] = True  # a deploy fixes the step
            wait_until(lambda: engine.status(run_id).status is RunStatus.COMPLETED,
                       "the run to complete")
        finally:
            engine.preempt("test done")
            thread.join(30)
        assert not thread.is_alive()
        assert engine.result(run_id) == "fine"
        assert worker.stats.completed == 1


def test_a_worker_rides_out_a_store_outage_and_finishes_its_runs(
    pg_schema: str, tmp_path: Path
) -> None:
    port = int(POSTGRES_URL.split("@", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
    db = ledger_url(pg_schema, tmp_path)  # the ledger stays reachable, the store does not
    steps = 30
    with Relay(port) as relay, engine_for(pg_schema) as engine:
        run_id = engine.start(workerwf.chaos_chain, {"db": db, "tag": "out", "steps": steps,
                                                      "pause_ms": 40})
        url = relay.url(pg_schema)
        with workers(url, tmp_path, 1, *FAST_LEASE) as (w,):
            wait_until(lambda: engine.status(run_id).steps_completed >= 5, "five steps")
            relay.cut()
            wait_until(lambda: any(line in w.log() for line in (
                "heartbeat failed", "store unreachable", "stopped on an error")),
                "the worker to see the outage")
            relay.restore()
            wait_all(engine, [run_id], 120)
            assert w.stop() == 0
        assert engine.result(run_id) == workerwf.expected_chain("out", steps)
    led = Ledger(db)
    try:
        rows = led.execute("SELECT operation_id FROM worker_effects WHERE tag = 'out'")
    finally:
        led.close()
    assert len(rows) == steps


def test_a_worker_sent_sigterm_while_it_starts_exits_zero_having_claimed_nothing(
    store_url: str, tmp_path: Path
) -> None:
    with engine_for(store_url) as engine:
        run_id = engine.start(workerwf.chaos_chain, {"db": "x", "tag": "early"})
        w = WorkerProcess(store_url, tmp_path, "early", (*FAST_LEASE, "--import", "slowstart"),
                          {"SLOWSTART_DIR": str(tmp_path)})
        try:
            wait_until(lambda: (tmp_path / "importing").exists() or w.proc.poll() is not None,
                       "the worker to be importing")
            w.signal(signal.SIGTERM)  # before it connected, claimed or logged "started"
            (tmp_path / "go").touch()
            assert w.proc.wait(60) == 0, w.log()
        finally:
            w.kill()
        assert "SIGTERM: draining" in w.log()
        assert engine.status(run_id).status is RunStatus.PENDING
        row = engine.leases.row(run_id)
        assert row is not None
        assert (row.claims, row.lease_owner) == (0, None)

"""Worker processes killed with SIGKILL on both stores: takeover, and the crash-loop boundary.

Every kill is checked to have landed on an open step (the ledger holds an execution by the
killed process, and the log has no end for it), and every re-execution to lie inside the
at-least-once window: the units after the last checkpoint the killed worker saved.
"""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path
from uuid import UUID

import workerwf
from engine import Engine, RunStatus
from support import Ledger, open_step, wait_until
from workers.harness import FAST_LEASE, WorkerProcess, engine_for, ledger_url, wait_all, workers

LOOP_LEASE = ("--lease", "1", "--heartbeat", "0.2", "--poll", "0.1", "--concurrency", "1",
              "--queue", "doom")


def _executions(db: str, like: str) -> list[tuple[str, int]]:
    """(operation id, pid) of every execution recorded in the ledger, in order."""
    led = Ledger(db)
    try:
        rows = led.execute("SELECT operation_id, pid FROM worker_attempts WHERE operation_id "
                           "LIKE ? ORDER BY at", (like,))
    finally:
        led.close()
    return [(str(op), int(pid)) for op, pid in rows]


def _saved_units(engine: Engine, run_id: UUID) -> int:
    """The last checkpoint the log holds for units#0: how many units it says are done."""
    done = 0
    for e in engine.history(run_id):
        if e.event_type == "StepCheckpointed":
            done = int(e.fields["state"]["next"])
    return done


def test_a_worker_killed_mid_step_is_taken_over_and_redoes_only_the_unsaved_units(
    store_url: str, tmp_path: Path
) -> None:
    db = ledger_url(store_url, tmp_path)
    count = 80
    with engine_for(store_url) as engine:
        run_id = engine.start(workerwf.long_units, {"db": db, "tag": "k9", "count": count,
                                                     "unit_ms": 20})
        with workers(store_url, tmp_path, 1, *FAST_LEASE, prefix="victim") as (victim,):
            wait_until(lambda: _saved_units(engine, run_id) >= 10, "ten saved units")
            victim.signal(signal.SIGKILL)
            assert victim.proc.wait(30) == -signal.SIGKILL
        # The kill landed on an open step: started by the victim, with no end in the log.
        assert open_step(engine.history(run_id)) == "units#0"
        saved = _saved_units(engine, run_id)
        assert saved < count
        assert victim.proc.pid in {pid for _, pid in _executions(db, "%@%")}
        with workers(store_url, tmp_path, 1, *FAST_LEASE, prefix="heir") as (heir,):
            wait_all(engine, [run_id], 60)
            assert heir.stop() == 0
        assert engine.result(run_id) == count
        resumed = [(e.worker_id, e.fields) for e in engine.history(run_id)
                   if e.event_type == "RunResumed"]
        assert resumed == [("heir0", {"reason": "lease_expired"})]
    # The heir started at the saved unit; only units after it can have run twice.
    starts = [op.rsplit("@", 1)[1] for op, _ in _executions(db, "%@%")]
    assert starts == ["0", str(saved)]
    runs = Counter(op.rsplit("/unit", 1)[1] for op, _ in _executions(db, "%/unit%")
                   if "@" not in op)
    assert sorted(int(u) for u in runs) == list(range(count))
    twice = sorted(int(u) for u, n in runs.items() if n > 1)
    assert all(saved <= u for u in twice), (saved, twice)
    assert set(runs.values()) <= {1, 2}
    led = Ledger(db)
    try:
        effects = led.scalar("SELECT count(*) FROM worker_effects WHERE tag = 'k9'")
    finally:
        led.close()
    assert effects == count  # each unit's effect once


def test_a_crash_looping_run_is_taken_over_max_takeovers_times_then_parked(
    store_url: str, tmp_path: Path
) -> None:
    """max_takeovers=1: a run whose step kills one worker completes on the takeover; one that
    kills two is parked at the second death, having run exactly twice."""
    db = ledger_url(store_url, tmp_path)
    env = {"STEPSTONE_MAX_TAKEOVERS": "1"}
    with engine_for(store_url) as engine:
        once = engine.start(workerwf.crash_looper, {"db": db, "tag": "once", "kills": 1})
        twice = engine.start(workerwf.crash_looper, {"db": db, "tag": "twice", "kills": 2})
        serial = 0

        def spawn() -> WorkerProcess:
            nonlocal serial
            serial += 1
            return WorkerProcess(store_url, tmp_path, f"loop{serial}", LOOP_LEASE, env)

        def settled() -> bool:
            return (engine.status(once).status.is_terminal
                    and engine.status(twice).status is RunStatus.PARKED)

        dead: list[WorkerProcess] = []
        current = spawn()
        try:
            while True:
                wait_until(lambda w=current: settled() or w.proc.poll() is not None,
                           "the runs to settle or the worker to die", 60)
                if settled():
                    break
                current.kill()
                dead.append(current)
                assert len(dead) <= 4, [w.log() for w in dead]
                current = spawn()
            assert current.stop() == 0
        finally:
            current.kill()
        assert [w.proc.returncode for w in dead] == [-signal.SIGKILL] * 3
        assert engine.status(once).status is RunStatus.COMPLETED
        assert engine.result(once) == 2
        info = engine.status(twice)
        assert "died 2 times in a row" in (info.parked_reason or "")
        row = engine.leases.row(twice)
        assert row is not None
        assert row.state == "parked"
        assert "died 2 times in a row" in (row.note or "")
        assert engine.leases.claim("anyone", None, 5, 30) == []  # parked: nobody claims it
        for run_id in (once, twice):
            reasons = [e.fields["reason"] for e in engine.history(run_id)
                       if e.event_type == "RunResumed"]
            assert reasons == ["lease_expired"]
    ran = Counter(op.split("/")[0] for op, _ in _executions(db, "%doomed%"))
    assert ran == {str(once): 2, str(twice): 2}
    # Each kill landed on an open step: every dead worker recorded an execution.
    pids = {pid for _, pid in _executions(db, "%doomed%")}
    assert {w.proc.pid for w in dead} <= pids

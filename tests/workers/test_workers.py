"""Many workers on one store: claiming, leases, fencing, draining, limits, timers, fan-out.

Real `stepstone worker` processes, signalled and killed for real, on both stores.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from pathlib import Path
from uuid import UUID

import pytest

import workerwf
from engine import Engine, RunStatus
from engine.workers.leases import DEFAULT_QUEUE, LeaseStore
from engine.workers.worker import Worker
from support import Ledger, wait_until
from workers.harness import FAST_LEASE, engine_for, ledger_url, wait_all, workers


def effects(db: str, tag_prefix: str = "") -> list[tuple[str, str, int]]:
    led = Ledger(db)
    try:
        rows = led.execute(
            "SELECT operation_id, tag, idx FROM worker_effects WHERE tag LIKE ?",
            (f"{tag_prefix}%",),
        )
    finally:
        led.close()
    return [(str(a), str(b), int(c)) for a, b, c in rows]


def history_kinds(engine: Engine, run_id: UUID) -> list[tuple[str, str, dict[str, object]]]:
    return [(e.event_type, e.worker_id, e.fields) for e in engine.history(run_id)]


def test_workers_drive_enqueued_runs_and_exit_zero_on_sigterm(
    store_url: str, tmp_path: Path
) -> None:
    db = ledger_url(store_url, tmp_path)
    with engine_for(store_url) as engine:
        ids = [
            engine.start(workerwf.chaos_chain, {"db": db, "tag": f"r{i}", "steps": 5,
                                                 "pause_ms": 4})
            for i in range(12)
        ]
        assert engine.status(ids[0]).status is RunStatus.PENDING  # start only records
        with workers(store_url, tmp_path, 2, *FAST_LEASE) as procs:
            wait_all(engine, ids, 90)
            codes = [p.stop() for p in procs]
        assert codes == [0, 0]
        for i, run_id in enumerate(ids):
            assert engine.result(run_id) == workerwf.expected_chain(f"r{i}", 5)
        drivers = {e.worker_id for r in ids for e in engine.history(r)[1:]}
        assert drivers <= {"w0", "w1"}
        assert engine.leases.counts() == {"done": 12}
    keyed = Counter(op for op, _, _ in effects(db))
    assert len(keyed) == 12 * 5


def test_claims_race_gives_each_run_to_exactly_one_worker(store_url: str) -> None:
    """Eight claimers hammer one index at once: no run is handed out twice."""
    with engine_for(store_url) as engine:
        ids = [engine.start(workerwf.chaos_chain, {"db": "x", "tag": str(i)}) for i in range(60)]
        barrier = threading.Barrier(8)
        got: dict[str, list[UUID]] = {}

        stores: list[LeaseStore] = []

        def claimer(name: str) -> None:
            leases = LeaseStore(engine.location)
            stores.append(leases)
            mine: list[UUID] = []
            barrier.wait()
            for _ in range(20):
                mine += [c.run_id for c in leases.claim(name, None, 3, 30)]
            got[name] = mine

        threads = [threading.Thread(target=claimer, args=(f"c{i}",)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # Closed only now: on PostgreSQL a closed index session gives its leases up at once.
        for leases in stores:
            leases.close()
    claimed = [r for runs in got.values() for r in runs]
    assert sorted(claimed) == sorted(ids)  # every run once, none twice


def test_two_worker_processes_racing_for_one_run_only_one_drives_it(
    store_url: str, tmp_path: Path
) -> None:
    db = ledger_url(store_url, tmp_path)
    with engine_for(store_url) as engine:
        run_id = engine.start(workerwf.chaos_chain, {"db": db, "tag": "solo", "steps": 8,
                                                       "pause_ms": 20})
        with workers(store_url, tmp_path, 2, *FAST_LEASE) as procs:
            wait_all(engine, [run_id], 60)
            assert [p.stop() for p in procs] == [0, 0]
        writers = {w for kind, w, _ in history_kinds(engine, run_id)[1:]}
        assert len(writers) == 1
        assert not [k for k, _, _ in history_kinds(engine, run_id) if k == "RunResumed"]
    assert len(effects(db, "solo")) == 8


def _running_at_once(engine: Engine, run_ids: list[UUID]) -> int:
    """The most steps running at the same moment, from the log's start/completion times."""
    points: list[tuple[float, int]] = []
    for run_id in run_ids:
        opened: dict[str, float] = {}
        for e in engine.history(run_id):
            key = str(e.fields.get("step_key"))
            if e.event_type == "StepStarted":
                opened[key] = e.timestamp.timestamp()
            elif e.event_type in ("StepCompleted", "StepFailed", "StepPreempted"):
                points += [(opened.pop(key), 1), (e.timestamp.timestamp(), -1)]
    level = peak = 0
    for _, delta in sorted(points, key=lambda p: (p[0], p[1])):
        level += delta
        peak = max(peak, level)
    return peak


def test_queue_and_workflow_limits_hold_across_workers(store_url: str, tmp_path: Path) -> None:
    """A queue limit of 3 and a workflow limit of 2, with 3 workers of 4 slots each."""
    db = ledger_url(store_url, tmp_path)
    with engine_for(store_url) as engine:
        limited = [engine.start(workerwf.limited_chain, {"db": db, "tag": f"l{i}"})
                   for i in range(12)]
        capped = [engine.start(workerwf.capped_chain, {"db": db, "tag": f"c{i}"})
                  for i in range(8)]
        with workers(store_url, tmp_path, 3, *FAST_LEASE, "--concurrency", "4",
                     "--queue-limit", "limited=3") as procs:
            wait_all(engine, limited + capped, 120)
            assert [p.stop() for p in procs] == [0, 0, 0]
        assert _running_at_once(engine, limited) == 3  # reached, never passed
        assert _running_at_once(engine, capped) == 2
        assert engine.leases.limits() == {"queue:limited": 3, "workflow:capped_chain": 2}


def test_sigterm_drains_and_another_worker_resumes_from_the_checkpoint(
    store_url: str, tmp_path: Path
) -> None:
    db = ledger_url(store_url, tmp_path)
    with engine_for(store_url) as engine:
        run_id = engine.start(workerwf.long_units, {"db": db, "tag": "drain", "count": 150,
                                                     "unit_ms": 20})
        with workers(store_url, tmp_path, 1, *FAST_LEASE, prefix="first") as (first,):
            wait_until(lambda: _checkpoints(engine, run_id) >= 20, "twenty saved units", 60)
            t0 = time.monotonic()
            assert first.stop(timeout=30) == 0
            drain_s = time.monotonic() - t0
        assert engine.status(run_id).status is RunStatus.PREEMPTED
        at = _checkpoints(engine, run_id)
        with workers(store_url, tmp_path, 1, *FAST_LEASE, prefix="second") as (second,):
            wait_all(engine, [run_id], 60)
            assert second.stop() == 0
        kinds = history_kinds(engine, run_id)
        resumed = [(w, f) for k, w, f in kinds if k == "RunResumed"]
        assert resumed == [("second0", {"reason": "after_preemption"})]
        assert "draining" in first.log()
        assert "drained in" in first.log()
        assert drain_s < 10
    # The second worker started at the saved unit, not at zero; every unit applied once.
    led = Ledger(db)
    starts = [r[0] for r in led.execute(
        "SELECT operation_id FROM worker_attempts WHERE tag = ? AND operation_id LIKE ? "
        "ORDER BY at", ("drain", "%@%"))]
    led.close()
    assert starts[-1].endswith(f"@{at}")
    units = effects(db, "drain")
    assert sorted(i for _, _, i in units) == list(range(150))


def test_zombie_worker_is_fenced_after_its_lease_is_taken_over(
    pg_schema: str, tmp_path: Path
) -> None:
    """SIGSTOP a worker past its lease; another takes the run; SIGCONT: the first writes nothing.

    PostgreSQL only: on SQLite a process paused inside a write transaction keeps the file's
    write lock, so no other process can write until it resumes (docs/workers.md, "SQLite").
    """
    store_url = pg_schema
    db = ledger_url(store_url, tmp_path)
    with engine_for(store_url) as engine:
        run_id = engine.start(workerwf.long_units, {"db": db, "tag": "zombie", "count": 120,
                                                     "unit_ms": 25})
        with workers(store_url, tmp_path, 1, *FAST_LEASE, prefix="zombie") as (zombie,):
            wait_until(lambda: _checkpoints(engine, run_id) >= 10, "ten saved units", 60)
            zombie.signal(signal.SIGSTOP)
            stopped_at = engine.status(run_id).version
            with workers(store_url, tmp_path, 1, *FAST_LEASE, prefix="heir") as (heir,):
                wait_until(lambda: engine.status(run_id).version > stopped_at + 5,
                           "the heir to write", 30)
                zombie.signal(signal.SIGCONT)
                wait_all(engine, [run_id], 60)
                assert heir.stop() == 0
            assert zombie.stop() == 0
        kinds = history_kinds(engine, run_id)
        takeover = next(i for i, (k, w, f) in enumerate(kinds)
                        if k == "RunResumed" and w == "heir0")
        assert kinds[takeover][2] == {"reason": "lease_expired"}
        assert all(w == "heir0" for _, w, _ in kinds[takeover:])  # nothing of the zombie after
        log = zombie.log()
        assert "abandoned run" in log
        assert "no longer holds the run's lease" in log
    units = effects(db, "zombie")
    assert sorted(i for _, _, i in units) == list(range(120))  # each effect exactly once
    # Every execution counted: the heir started at the zombie's last saved unit, and only the
    # unit the zombie was inside when it froze (and finished after waking) ran twice.
    led = Ledger(db)
    try:
        rows = led.execute("SELECT operation_id, pid FROM worker_attempts WHERE tag = 'zombie' "
                           "ORDER BY at")
    finally:
        led.close()
    starts = [(int(op.rsplit("@", 1)[1]), pid) for op, pid in rows if "@" in op]
    assert [pid for _, pid in starts] == [zombie.proc.pid, heir.proc.pid]
    resumed_at = starts[1][0]
    runs = Counter(int(op.rsplit("/unit", 1)[1]) for op, _ in rows if "@" not in op)
    assert sorted(runs) == list(range(120))
    twice = sorted(u for u, n in runs.items() if n > 1)
    assert set(runs.values()) <= {1, 2}
    assert twice in ([], [resumed_at]), (resumed_at, twice)


def test_durable_sleep_and_retry_backoff_do_not_hold_a_worker(
    store_url: str, tmp_path: Path
) -> None:
    """One worker with one slot: while a run sleeps and another waits to retry, others run."""
    db = ledger_url(store_url, tmp_path)
    with engine_for(store_url) as engine:
        sleeper = engine.start(workerwf.sleeper, {"db": db, "tag": "zz", "seconds": 3})
        retrier = engine.start(workerwf.retrier, {"db": db, "tag": "rr"})
        with workers(store_url, tmp_path, 1, *FAST_LEASE, "--concurrency", "1") as (w,):
            wait_until(lambda: engine.status(sleeper).status is RunStatus.WAITING,
                       "the sleeper to wait", 30)
            quick = [engine.start(workerwf.chaos_chain, {"db": db, "tag": f"q{i}", "steps": 2,
                                                          "pause_ms": 2}) for i in range(3)]
            wait_all(engine, quick, 30)
            assert not engine.status(sleeper).status.is_terminal  # still asleep meanwhile
            wait_all(engine, [sleeper, retrier], 60)
            assert w.stop() == 0
        assert engine.result(sleeper) == [0, 1]
        assert engine.result(retrier) == "ok"
        kinds = history_kinds(engine, sleeper)
        names = [k for k, _, _ in kinds]
        assert names.count("TimerStarted") == 1
        assert names.count("TimerFired") == 1
        assert ("RunResumed", "w0", {"reason": "timer_due"}) in kinds
        fired = next(e for e in engine.history(sleeper) if e.event_type == "TimerStarted")
        woke = next(e for e in engine.history(sleeper) if e.event_type == "TimerFired")
        assert (woke.timestamp - fired.timestamp).total_seconds() >= 3
        assert "waits until" in w.log()


def test_sweep_restores_a_run_missing_from_the_index(store_url: str) -> None:
    with engine_for(store_url) as engine:
        run_id = engine.start(workerwf.chaos_chain, {"db": "x", "tag": "lost"})
        other = engine.start(workerwf.chaos_chain, {"db": "x", "tag": "kept"})
        _delete_row(engine, run_id)  # as if the process died between the log and the index
        assert engine.leases.row(run_id) is None
        assert Worker(engine).sweep() == 1
        row = engine.leases.row(run_id)
        assert row is not None
        assert row.state == "ready"
        assert row.queue == "chaos"
        assert engine.leases.row(other) is not None
        assert Worker(engine).sweep() == 0


def test_local_resume_refuses_a_run_a_live_worker_holds(store_url: str) -> None:
    from engine import RunLeasedError

    with engine_for(store_url) as engine:
        run_id = engine.start(workerwf.chaos_chain, {"db": "x", "tag": "held"})
        assert engine.leases.claim("elsewhere:1", [DEFAULT_QUEUE, "chaos"], 1, 30)
        with pytest.raises(RunLeasedError, match="elsewhere:1"):
            engine.resume(run_id)


def _delete_row(engine: Engine, run_id: UUID) -> None:
    engine.leases._call(lambda cur: cur.execute(
        engine.leases._sql("DELETE FROM {queue} WHERE run_id = %(id)s"), {"id": str(run_id)}))


def _checkpoints(engine: Engine, run_id: UUID) -> int:
    state = engine.store.load(run_id).state
    step = state.steps.get("units#0")
    return step.checkpoint_sequence if step else 0


def test_the_compose_commands_run_the_demo_through_workers(pg_schema: str,
                                                           tmp_path: Path) -> None:
    """compose.yaml's enqueue and worker commands, run here as processes against PostgreSQL."""
    import json
    import os
    import subprocess
    import sys

    import yaml

    from workers.harness import TESTS_DIR

    services = yaml.safe_load((TESTS_DIR.parent / "compose.yaml").read_text())["services"]
    enqueue = list(services["enqueue-demo"]["command"])
    worker_cmd = list(services["worker"]["command"])
    at = enqueue.index("--input") + 1
    demo_input = {**json.loads(enqueue[at]), "workdir": str(tmp_path / "demo"), "records": 3000,
                  "chunk": 500}
    enqueue[at] = json.dumps(demo_input)
    env = dict(os.environ, STEPSTONE_DATABASE_URL=pg_schema, STEPSTONE_LEASE_DURATION_S="2",
               STEPSTONE_HEARTBEAT_INTERVAL_S="0.5", STEPSTONE_WORKER_POLL_INTERVAL_S="0.1")
    out = subprocess.run([sys.executable, "-m", *enqueue], env=env, capture_output=True,
                         text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    run_id = UUID(out.stdout.strip())
    again = subprocess.run([sys.executable, "-m", *enqueue], env=env, capture_output=True,
                           text=True, timeout=60, cwd=tmp_path)
    assert UUID(again.stdout.strip()) == run_id  # the key makes enqueueing idempotent
    log = (tmp_path / "worker.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", *worker_cmd], env=env, cwd=tmp_path,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        with engine_for(pg_schema) as engine:
            info = engine.wait(run_id, timeout_s=90)
            assert info.status is RunStatus.COMPLETED
            assert engine.result(run_id)["processed"] == 3000
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        log.close()


def test_workers_starting_together_on_an_empty_store_all_come_up(
    store_url: str, tmp_path: Path
) -> None:
    """Table and function creation is serialized: no 'tuple concurrently updated' at start."""
    with workers(store_url, tmp_path, 4, *FAST_LEASE) as procs:  # each one logged "started"
        assert all("Traceback" not in p.log() for p in procs)
        assert [p.stop() for p in procs] == [0, 0, 0, 0]

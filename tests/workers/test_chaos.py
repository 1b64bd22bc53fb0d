"""Soak tests for many workers: kill -9 chaos, and a database restart under load (slow).

The ledger records every execution of every step (`worker_attempts`, with the pid that ran it)
as well as its keyed effect, so repeated executions are counted, not swallowed: a step may run again
only when the process that ran it before was killed (the at-least-once window).
"""

from __future__ import annotations

import random
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pytest

import workerwf
from conftest import scratch_schema
from engine import RunStatus
from pgcluster import PrivateCluster, private_cluster
from support import Ledger, wait_until
from workers.harness import FAST_LEASE, WorkerProcess, engine_for, ledger_url, wait_all

pytestmark = pytest.mark.slow


def _executions(db: str) -> tuple[Counter[str], dict[str, list[int]]]:
    """Each effect's count, and the pids of every execution of each step, in order."""
    led = Ledger(db)
    try:
        effects = Counter(r[0] for r in led.execute("SELECT operation_id FROM worker_effects"))
        runs: dict[str, list[int]] = defaultdict(list)
        for op, pid in led.execute("SELECT operation_id, pid FROM worker_attempts ORDER BY at"):
            runs[op].append(int(pid))
    finally:
        led.close()
    return effects, runs


def _check_window(runs: dict[str, list[int]], killed: set[int]) -> int:
    """Every execution but a step's last one was cut short by a kill; returns the reruns."""
    for op, pids in runs.items():
        assert all(pid in killed for pid in pids[:-1]), (op, pids)
    return sum(len(p) - 1 for p in runs.values())


def _held(store_url: str, name: str) -> set[UUID]:
    """The runs `name` holds a live lease on, read from the runnable index."""
    led = Ledger(store_url)
    try:
        rows = led.execute("SELECT run_id FROM stepstone_queue WHERE lease_owner = ? "
                           "AND lease_expires_at > ?", (name, time.time()))
    finally:
        led.close()
    return {UUID(str(r[0])) for r in rows}


def test_chaos_kill9_workers_every_run_completes_and_each_effect_applies_once(
    pg_schema: str, tmp_path: Path
) -> None:
    """4 workers, 200 runs of 20 steps; 30 times a random worker driving runs is SIGKILLed."""
    store_url, db = pg_schema, ledger_url(pg_schema, tmp_path)
    runs, steps = 200, 20
    rng = random.Random(20261127)
    killed: set[int] = set()
    victims_held: dict[str, set[UUID]] = {}
    with engine_for(store_url) as engine:
        ids = [engine.start(workerwf.chaos_chain, {"db": db, "tag": f"c{i}", "steps": steps,
                                                    "pause_ms": 120}, key=f"chaos-{i}")
               for i in range(runs)]
        serial = 0

        def spawn() -> WorkerProcess:
            nonlocal serial
            serial += 1
            # The kills are the test's, not a step's: a run killed under five workers in a row
            # must not be parked as a crash loop.
            return WorkerProcess(store_url, tmp_path, f"k{serial}", FAST_LEASE,
                                 {"STEPSTONE_MAX_TAKEOVERS": "1000"})

        pool = [spawn() for _ in range(4)]
        try:
            while len(killed) < 30:
                # Kill only a worker that drives runs: each kill lands on open steps.
                wait_until(lambda: any(_held(store_url, p.name) for p in pool),
                           "a worker holding runs")
                victim = rng.choice([p for p in pool if _held(store_url, p.name)])
                time.sleep(rng.uniform(0.05, 0.3))  # a random point inside its steps
                held = _held(store_url, victim.name)
                if not held:
                    continue  # its runs ended meanwhile: not a kill that counts
                victims_held[victim.name] = held
                victim.kill()
                assert victim.proc.returncode == -9
                killed.add(victim.proc.pid)
                pool.remove(victim)
                pool.append(spawn())
            wait_all(engine, ids, 600)
            for p in pool:
                assert p.stop() == 0
        finally:
            for p in pool:
                p.kill()
        takeovers = 0
        for i, run_id in enumerate(ids):
            info = engine.status(run_id)
            assert info.status is RunStatus.COMPLETED, info
            # The same output as an uninterrupted run of the same input.
            assert engine.result(run_id) == workerwf.expected_chain(f"c{i}", steps)
            takeovers += sum(1 for e in engine.history(run_id)
                             if e.event_type == "RunResumed"
                             and e.fields["reason"] == "lease_expired")
        # Every run a victim held when it died was taken over by another worker.
        for name, held in victims_held.items():
            assert held, name
            for run_id in held:
                resumed = [e for e in engine.history(run_id) if e.event_type == "RunResumed"
                           and e.fields["reason"] == "lease_expired"]
                assert resumed, (name, run_id)
        assert takeovers > 0
    effects, executions = _executions(db)
    assert len(effects) == runs * steps
    assert set(effects.values()) == {1}  # every effect exactly once
    reruns = _check_window(executions, killed)
    assert reruns > 0  # the kills did cut steps short
    print(f"\n{len(killed)} kills, {takeovers} takeovers, {reruns} step re-executions "
          "(all inside the at-least-once window), every effect exactly once")


@pytest.fixture(name="private_cluster")
def private_cluster_fixture() -> Iterator[PrivateCluster]:
    with private_cluster() as cluster:
        yield cluster


def test_database_restart_while_workers_run_loses_and_duplicates_nothing(
    private_cluster: PrivateCluster, tmp_path: Path
) -> None:
    with scratch_schema(private_cluster.url) as store_url:
        db = ledger_url(store_url, tmp_path)
        runs, steps = 40, 30
        with engine_for(store_url) as engine:
            ids = [engine.start(workerwf.chaos_chain, {"db": db, "tag": f"d{i}",
                                                        "steps": steps, "pause_ms": 40})
                   for i in range(runs)]
            procs = [WorkerProcess(store_url, tmp_path, f"r{i}",
                                   ("--lease", "5", "--heartbeat", "1", "--poll", "0.2"))
                     for i in range(3)]
            try:
                wait_until(lambda: sum(engine.status(r).status.is_terminal for r in ids) >= 4,
                           "four finished runs")
                assert not all(engine.status(r).status.is_terminal for r in ids)
                private_cluster.restart()
                wait_all(engine, ids, 300)
                for p in procs:
                    assert p.stop() == 0
            finally:
                for p in procs:
                    p.kill()
            for i, run_id in enumerate(ids):
                assert engine.result(run_id) == workerwf.expected_chain(f"d{i}", steps)
            logs = "".join(p.log() for p in procs)
            # The workers did see the outage: a heartbeat or a claim that failed, an index
            # connection replaced, or a save that failed and was retried from the log.
            signs = ("heartbeat failed", "connection was lost", "store unreachable",
                     "a save failed or may have failed")
            assert any(sign in logs for sign in signs), logs[-3000:]
        effects, executions = _executions(db)
    assert len(effects) == runs * steps
    assert set(effects.values()) == {1}
    # Nobody was killed: a step runs twice only if the restart cut its first run short, and
    # then at most twice.
    assert all(len(pids) <= 2 for pids in executions.values())

"""Soak tests for many workers: kill -9 chaos, and a database restart under load (slow)."""

from __future__ import annotations

import random
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

import workerwf
from engine import RunStatus
from support import Ledger
from workers.harness import FAST_LEASE, WorkerProcess, engine_for, ledger_url, wait_all

pytestmark = pytest.mark.slow


def _effect_counts(db: str) -> tuple[Counter[str], Counter[str]]:
    led = Ledger(db)
    try:
        effects = Counter(r[0] for r in led.execute("SELECT operation_id FROM worker_effects"))
        attempts = Counter(r[0] for r in led.execute("SELECT operation_id FROM worker_attempts"))
    finally:
        led.close()
    return effects, attempts


def test_chaos_kill9_workers_every_run_completes_and_each_effect_applies_once(
    pg_schema: str, tmp_path: Path
) -> None:
    """4 workers, 200 runs of 20 steps; a random worker is SIGKILLed every few hundred ms."""
    store_url, db = pg_schema, ledger_url(pg_schema, tmp_path)
    runs, steps = 200, 20
    rng = random.Random(20261127)
    with engine_for(store_url) as engine:
        ids = [engine.start(workerwf.chaos_chain, {"db": db, "tag": f"c{i}", "steps": steps,
                                                    "pause_ms": 6}, key=f"chaos-{i}")
               for i in range(runs)]
        serial = 0

        def spawn() -> WorkerProcess:
            nonlocal serial
            serial += 1
            return WorkerProcess(store_url, tmp_path, f"k{serial}", FAST_LEASE)

        pool = [spawn() for _ in range(4)]
        kills = 0
        try:
            deadline = time.monotonic() + 600
            while kills < 30 or not all(engine.status(r).status.is_terminal for r in ids[-20:]):
                time.sleep(rng.uniform(0.2, 0.5))
                victim = pool.pop(rng.randrange(len(pool)))
                victim.kill()
                kills += 1
                pool.append(spawn())
                if kills >= 30:
                    break
                assert time.monotonic() < deadline
            wait_all(engine, ids, 600)
            for p in pool:
                assert p.stop() == 0
        finally:
            for p in pool:
                p.kill()
        assert kills >= 30
        takeovers = 0
        for i, run_id in enumerate(ids):
            info = engine.status(run_id)
            assert info.status is RunStatus.COMPLETED, info
            # The same output as an uninterrupted run of the same input.
            assert engine.result(run_id) == workerwf.expected_chain(f"c{i}", steps)
            takeovers += sum(1 for e in engine.history(run_id)
                             if e.event_type == "RunResumed"
                             and e.fields["reason"] == "lease_expired")
        assert takeovers > 0
    effects, attempts = _effect_counts(db)
    assert len(effects) == runs * steps
    assert set(effects.values()) == {1}  # every effect exactly once
    reruns = sum(n - 1 for n in attempts.values())
    print(f"\n{kills} kills, {takeovers} takeovers, {reruns} step re-executions "
          "(the at-least-once window), every effect exactly once")


def _pg_cluster() -> tuple[str, str] | None:
    if shutil.which("pg_lsclusters") is None:
        return None
    out = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        version, cluster, port, *_ = line.split()
        if port == "5432":
            return version, cluster
    return None


def test_database_restart_while_workers_run_loses_and_duplicates_nothing(
    pg_schema: str, tmp_path: Path
) -> None:
    cluster = _pg_cluster()
    if cluster is None:
        pytest.skip("no pg_ctlcluster-managed PostgreSQL on port 5432 to restart")
    store_url, db = pg_schema, ledger_url(pg_schema, tmp_path)
    runs, steps = 40, 30
    with engine_for(store_url) as engine:
        ids = [engine.start(workerwf.chaos_chain, {"db": db, "tag": f"d{i}", "steps": steps,
                                                    "pause_ms": 40}) for i in range(runs)]
        procs = [WorkerProcess(store_url, tmp_path, f"r{i}", ("--lease", "5", "--heartbeat",
                                                             "1", "--poll", "0.2"))
                 for i in range(3)]
        try:
            deadline = time.monotonic() + 60
            while sum(engine.status(r).status.is_terminal for r in ids) < 4:
                assert time.monotonic() < deadline, "the workers made no progress"
                time.sleep(0.1)
            assert not all(engine.status(r).status.is_terminal for r in ids)
            subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", *cluster, "restart"],
                           check=True, timeout=120)
            wait_all(engine, ids, 300)
            for p in procs:
                assert p.stop() == 0
        finally:
            for p in procs:
                p.kill()
        for i, run_id in enumerate(ids):
            assert engine.result(run_id) == workerwf.expected_chain(f"d{i}", steps)
        logs = "".join(p.log() for p in procs)
        assert "heartbeat failed" in logs  # the workers did see the outage
    effects, _ = _effect_counts(db)
    assert len(effects) == runs * steps
    assert set(effects.values()) == {1}

"""A parent with three children on PostgreSQL workers, real processes: the workers holding a
child mid-step are killed with SIGKILL (twice); every run still completes once and the parent's
output is the uninterrupted one. Then a parent waiting on a child a worker drives is cancelled,
and so is the child."""

from __future__ import annotations

import sys
from typing import Any
from uuid import UUID

import childwf
from engine import Engine, RunStatus, Settings
from engine.events import ChildFinished, ChildStarted, RunCompleted
from support import wait_until


def worker(procs: Any, url: str, name: str) -> Any:
    return procs.spawn(["env", f"STEPSTONE_WORKER_ID={name}", sys.executable, "-m",
                        "stepstone", "worker", "--db", url, "--import", "childwf",
                        "--lease", "2", "--heartbeat", "0.5", "--poll", "0.1"])


def holder(engine: Engine, run_id: UUID) -> str | None:
    place = engine.placement(run_id)
    return None if place is None else place.held_by


def count(engine: Engine, run_id: UUID, kind: type[Any]) -> int:
    return sum(1 for e in engine.history(run_id) if e.kind is kind)


def test_kill_9_the_workers_of_children_mid_way(pg_schema: str, procs: Any) -> None:
    workers = {name: worker(procs, pg_schema, name) for name in ("w1", "w2")}
    with Engine(Settings(database_url=pg_schema, worker_id="child-test")) as engine:
        parent = engine.start(childwf.parent, {"ns": [1, 2, 3], "pause_s": 1.0})
        for i in range(2):  # kill the holder of child #0, then of child #1, mid-step
            wait_until(lambda i=i: len(engine.status(parent).children) > i,
                       f"child {i} to start")
            kid = engine.status(parent).children[i]
            wait_until(lambda kid=kid: holder(engine, kid) is not None
                       and engine.status(kid).steps_recorded > 0, f"a worker on child {i}")
            name = holder(engine, kid)
            assert name in workers
            assert procs.sigkill(workers[name])
            workers[name] = worker(procs, pg_schema, name + "'")  # a replacement
            workers[name + "'"] = workers.pop(name)
        info = engine.wait(parent, timeout_s=120)
        assert info.status is RunStatus.COMPLETED
        assert engine.result(parent) == childwf.expected([1, 2, 3])
        assert count(engine, parent, ChildStarted) == 3
        assert count(engine, parent, ChildFinished) == 3
        assert count(engine, parent, RunCompleted) == 1
        for kid in engine.status(parent).children:
            assert count(engine, kid, RunCompleted) == 1
            assert engine.status(kid).parent_run_id == parent

        # Cancel a parent whose child a worker is driving: both end cancelled.
        other = engine.start(childwf.parent, {"ns": [4], "pause_s": 1.0})
        wait_until(lambda: len(engine.status(other).children) == 1, "its child to start")
        kid = engine.status(other).children[0]
        wait_until(lambda: holder(engine, kid) is not None, "a worker on the child")
        engine.cancel(other, reason="stop it all", wait_s=10)
        assert engine.status(other).status is RunStatus.CANCELLED
        wait_until(lambda: engine.status(kid).status is RunStatus.CANCELLED,
                   "the child's holder to stop it")
    for proc in workers.values():
        proc.terminate()
        assert procs.finish(proc, timeout=60) == 0

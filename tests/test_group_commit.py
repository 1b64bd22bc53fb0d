"""Group commit: runs driven at once by one process share transactions, and stay separate."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from engine import Engine, RunConflictError, RunStatus, step, workflow
from engine.events import ResumeReason


@step
def tick(i: int) -> int:
    return i + 1


@workflow("gc_ticks")
def ticks(n: int) -> int:
    total = 0
    for i in range(n):
        total += tick(i)
    return total


def test_concurrent_runs_share_commits_and_each_gets_its_own_result(engine: Engine) -> None:
    ids = [engine.start(ticks, {"n": 40}) for _ in range(8)]
    group = engine.group_commit
    saves_before, commits_before = group.saves, group.commits
    barrier = threading.Barrier(len(ids))
    results = {}

    def drive(run_id: object) -> None:
        barrier.wait()
        results[run_id] = engine.resume(run_id)  # type: ignore[arg-type]

    threads = [threading.Thread(target=drive, args=(r,)) for r in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[r].status is RunStatus.COMPLETED for r in ids)
    assert all(results[r].output == sum(range(1, 41)) for r in ids)
    saves, commits = group.saves - saves_before, group.commits - commits_before
    assert saves == 8 * 41  # 40 steps + the end, one save each
    assert commits < saves  # some of them went together
    for run_id in ids:  # and each run's log is its own, complete and in order
        kinds = [e.event_type for e in engine.history(run_id)]
        assert kinds.count("StepCompleted") == 40
        assert kinds[-1] == "RunCompleted"


def test_a_conflict_in_a_shared_commit_fails_only_the_run_that_lost(engine: Engine) -> None:
    a = engine.store.load(engine.start(ticks, {"n": 1}))
    b = engine.store.load(engine.start(ticks, {"n": 1}))
    stale = engine.store.load(a.id)
    now = datetime.now(UTC)
    for run in (a, b, stale):
        run.resume(ResumeReason.CRASH_RECOVERY, at=now, worker="t")
    engine.group_commit.save_run(a)  # `stale` was decided on the version `a` just took
    events_b = b.collect_events()
    events_stale = stale.collect_events()
    group = engine.group_commit
    from engine.group_commit import _Save

    batch = [_Save(b, events_b), _Save(stale, events_stale)]
    group._commit(batch)
    assert batch[0].error is None  # b's events went in
    assert isinstance(batch[1].error, RunConflictError)
    assert engine.status(b.id).version == 2
    assert engine.status(a.id).version == 2

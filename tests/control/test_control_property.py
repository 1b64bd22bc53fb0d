"""Property: any interleaving of steps, checkpoints, preemptions, cancels and (forced) resumes,
driven through the real engine, leaves a log in which nothing follows a run's end but a forced
resume; the engine's replay agrees with the log; and the views, maintained incrementally
between the drives, equal a rebuild."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any
from uuid import UUID

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import TERMINAL, Engine, RunStatus, Settings, step, step_context, workflow
from engine.events import ResumeReason
from engine.status import STATUS_AFTER
from projections import Projector

# What happens at a checkpoint: (step index, checkpoint index) -> action.
ACTIONS: dict[tuple[int, int], str] = {}
ENGINE: list[Engine] = []
RUN: list[UUID] = []


@step
def work(index: int, checkpoints: int) -> int:
    ctx = step_context()
    done = ctx.last_checkpoint or 0
    while done < checkpoints:
        done += 1
        action = ACTIONS.pop((index, done), None)
        if action == "preempt":
            ENGINE[0].preempt("the property preempts")
        elif action == "cancel":
            ENGINE[0].cancel(RUN[0], reason="the property cancels")
        ctx.checkpoint(done)
    return index


@workflow("property")
def plan(steps: int, checkpoints: int) -> int:
    return sum(work(i, checkpoints) for i in range(steps))


_ENDS = {cls for cls, status in STATUS_AFTER.items() if status in TERMINAL}


def _check_log(history: list[Any]) -> None:
    ended = False
    for e in history:
        if ended:
            assert e.event_type == "RunResumed", f"{e.event_type} follows the run's end"
            assert e.fields["reason"] == ResumeReason.FORCED
            ended = False
        if e.event_type in {cls.__name__ for cls in _ENDS}:
            ended = True


def _rows(projector: Projector) -> dict[str, list[tuple[Any, ...]]]:
    out: dict[str, list[tuple[Any, ...]]] = {}
    with projector.db.transaction() as tx:
        for view in projector.views:
            for bound in view.bound:
                names = ", ".join(bound.spec.column_names)
                out[bound.spec.name] = sorted(tuple(r) for r in
                                              tx.fetch(f"SELECT {names} FROM {bound.qname}"))
    return out


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.integers(1, 4),
    checkpoints=st.integers(1, 3),
    actions=st.dictionaries(st.tuples(st.integers(0, 3), st.integers(1, 3)),
                            st.sampled_from(["preempt", "cancel"]), max_size=4),
    force=st.lists(st.booleans(), min_size=4, max_size=4),
)
def test_nothing_follows_the_end_whatever_the_interleaving(
    steps: int, checkpoints: int, actions: dict[tuple[int, int], str], force: list[bool]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'p.db'}"
        ACTIONS.clear()
        ACTIONS.update(actions)
        with Engine(Settings(database_url=url, worker_id="prop")) as engine:
            ENGINE[:] = [engine]
            projector = Projector(engine.store, batch_size=3)
            run_id = engine.start(plan, {"steps": steps, "checkpoints": checkpoints})
            RUN[:] = [run_id]
            reopen = iter(force)
            for _ in range(20):
                engine.token.clear()
                status = engine.resume(run_id).status
                projector.catch_up()
                if status is RunStatus.COMPLETED:
                    break
                if status is RunStatus.CANCELLED and not next(reopen, False):
                    break
                if status is RunStatus.CANCELLED:
                    engine.resume(run_id, force=True)  # reopened, and driven on
                    projector.catch_up()
            history = engine.history(run_id)
            _check_log(history)
            info = engine.status(run_id)
            assert info.status in (RunStatus.COMPLETED, RunStatus.CANCELLED)
            assert info.version == len(history)
            if info.status is RunStatus.COMPLETED:
                assert engine.result(run_id) == sum(range(steps))
            incremental = _rows(projector)
            projector.rebuild()
            assert _rows(projector) == incremental
            projector.close()

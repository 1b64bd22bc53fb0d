"""Fork: fix the code, then re-run a run from one step on, reusing what came before it.

The new run's `RunStarted` names its parent and the step it forks from; each step before
that one is recorded as `StepReused` with the parent's recorded output, so the driver
replays them like any completed step and runs the rest with the current code. The parent
is not touched.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING
from uuid import UUID

from engine.aggregate import WorkflowRun
from engine.driver import utc_now
from engine.errors import EngineError
from engine.status import StepStatus

if TYPE_CHECKING:
    from engine.engine import Engine


class ForkError(EngineError):
    """The run cannot be forked from that step; nothing was written."""


def resolve_step(run: WorkflowRun, step: str) -> str:
    """A step key (`name#ordinal`) as given, or the first step recorded under that name."""
    if step in run.steps:
        return step
    for key, state in run.steps.items():
        if state.name == step:
            return key
    recorded = ", ".join(run.steps) or "none"
    raise ForkError(
        f"run {run.id} recorded no step {step!r}; give one of its steps "
        f"(a name or a key): {recorded}"
    )


def fork_run(engine: Engine, parent_id: UUID, from_step: str) -> UUID:
    """Record a new run that reuses `parent_id`'s outputs before `from_step`; returns its id.

    Nothing executes here: drive the new run with `engine.resume(new_id)`. The workflow is
    the one the engine has registered under the parent's name (else its recorded
    entrypoint), that is, the code now on disk.
    """
    store = engine.store
    parent = store.load(parent_id)
    key = resolve_step(parent, from_step)
    keys = list(parent.steps)
    before = keys[: keys.index(key)]
    unfinished = [k for k in before if parent.steps[k].status is not StepStatus.COMPLETED]
    if unfinished:
        raise ForkError(
            f"step {unfinished[0]} of run {parent_id}, before {key}, did not complete, so it "
            f"has no output to reuse; fork from {unfinished[0]} instead"
        )
    definition = engine._definition_for(parent)  # the engine's own lookup of current code
    now, worker = utc_now(), engine.settings.worker_id
    s = parent.state
    run = WorkflowRun.start(
        uuid.uuid4(),
        at=now,
        worker=worker,
        workflow=definition.name,
        workflow_version=definition.version,
        entrypoint=definition.entrypoint,
        code_fingerprint=definition.fingerprint,
        input=s.input,
        input_digest=s.input_digest,
        idempotency_key=None,
        parent_run_id=parent.id,
        forked_from_step=key,
    )
    # The parent's markers: the reused part replays the path the parent took. Markers it
    # recorded later say "new path", which a new run takes anyway.
    for change_id in s.patches:
        run.mark_patch(change_id, at=now, worker=worker)
    for k in before:
        step = parent.steps[k]
        run.reuse_step(k, step.name, step.output, parent.id, at=now, worker=worker)
    store.save_run(run)
    return run.id

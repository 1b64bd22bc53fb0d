"""Recording new runs: a run's first event and its row in the runnable index, one or many.

A start writes the run's `RunStarted` in the log and its row in the index in one transaction
(the index lives beside the log, in the same database): one commit. `start_many` does it for
many runs at once, one commit per chunk.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

from engine.aggregate import WorkflowRun
from engine.definitions import Workflow
from engine.driver import utc_now
from engine.errors import RunConflictError
from engine.identity import input_digest, run_id_for_key
from engine.workers.leases import Enqueue, workflow_scope

if TYPE_CHECKING:
    from engine.engine import Engine

CHUNK = 500
"""Runs per transaction in `start_many`: enough to amortize a commit, few enough that one
transaction never holds the log's lock for long."""


def new_run(
    workflow: Workflow[..., Any], input: Mapping[str, Any] | None, key: str | None, worker: str,
    *, deadline: datetime | timedelta | None = None,
) -> tuple[WorkflowRun, str]:
    """A run with its `RunStarted` pending, and the digest of its recorded input."""
    recorded_input = workflow.normalize_input(input)
    digest = input_digest(recorded_input)
    run_id = run_id_for_key(workflow.name, key) if key is not None else uuid.uuid4()
    now = utc_now()
    run = WorkflowRun.start(
        run_id,
        at=now,
        worker=worker,
        workflow=workflow.name,
        workflow_version=workflow.version,
        entrypoint=workflow.entrypoint,
        code_fingerprint=workflow.fingerprint,
        input=recorded_input,
        input_digest=digest,
        idempotency_key=key,
        queue=workflow.queue,
        deadline=deadline_of(deadline, workflow.timeout_s, now),
    )
    return run, digest


def deadline_of(deadline: datetime | timedelta | None, timeout_s: float | None,
                now: datetime) -> datetime | None:
    """A run's deadline: the one given (an instant, or a duration from now), else its
    workflow's timeout from now, else none (docs/controlling-runs.md)."""
    if isinstance(deadline, timedelta):
        if deadline.total_seconds() <= 0:
            raise ValueError(f"a run's timeout must be positive, not {deadline}")
        return now + deadline
    if deadline is not None:
        if deadline.tzinfo is None:
            raise ValueError("a run's deadline must carry a time zone (datetime.now(UTC)...)")
        return deadline
    return now + timedelta(seconds=timeout_s) if timeout_s is not None else None


def index_row(
    workflow: Workflow[..., Any], run_id: UUID, owner: str | None, lease_s: float
) -> Enqueue:
    """The run's row in the runnable index, with its workflow's concurrency limit."""
    limits = (
        ((workflow_scope(workflow.name), workflow.concurrency),) if workflow.concurrency else ()
    )
    return Enqueue(run_id, workflow.name, workflow.queue, owner, lease_s, limits)


def start_many(
    engine: Engine,
    workflow: Workflow[..., Any],
    inputs: Iterable[Mapping[str, Any] | None],
    keys: Sequence[str | None] | None,
) -> list[UUID]:
    """`Engine.start_many`: the runs' first events and index rows, one commit per chunk."""
    all_inputs = list(inputs)
    if keys is not None and len(keys) != len(all_inputs):
        raise ValueError(
            f"{len(keys)} keys for {len(all_inputs)} inputs: give one key (or None) per input"
        )
    engine.register(workflow)
    settings = engine.settings
    ids: list[UUID] = []
    for lo in range(0, len(all_inputs), CHUNK):
        chunk = all_inputs[lo:lo + CHUNK]
        chunk_keys = list(keys[lo:lo + CHUNK]) if keys is not None else [None] * len(chunk)
        pairs = list(zip(chunk, chunk_keys, strict=True))
        runs = [new_run(workflow, i, k, settings.worker_id)[0] for i, k in pairs]
        batch = [(run, list(run.collect_events())) for run in runs]
        rows = [index_row(workflow, run.id, None, settings.lease_duration_s) for run in runs]
        try:
            engine.store.save_events(batch, engine.leases.enqueue_statements(rows))
        except RunConflictError:
            # A key was used before: nothing of this chunk was written (one transaction);
            # start it run by run, which returns the existing runs or names the conflict.
            ids += [engine.start(workflow, i, key=k) for i, k in pairs]
            continue
        for run, events in batch:
            for observer in engine.observers:
                observer(run, events)
        ids += [run.id for run in runs]
    return ids

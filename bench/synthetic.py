"""Long runs written straight through the aggregate: a million events in a minute, not an hour.

A run of one step with N checkpoints, built with the aggregate's own commands (so every event
is valid, hash-chained and decodes like a real one) and saved in batches with
`RunStore.save_run`. The history, export and prune benches and the memory test use it; a real
drive would spend a commit per checkpoint and an hour per million events.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

from engine.aggregate import WorkflowRun
from engine.store import RunStore

WORKER = "synthetic"


def build_long_run(store: RunStore, events: int, *, run_id: UUID | None = None,
                   at: datetime | None = None, workflow: str = "synthetic",
                   finish: bool = True, batch: int = 5000) -> UUID:
    """A run of `events` events (>= 4 when finished): started, one step checkpointed over and
    over, completed, and the run completed unless `finish` is false. Returns its id."""
    rid = run_id or uuid4()
    t = at or datetime(2026, 1, 1, tzinfo=UTC)
    tick = timedelta(milliseconds=1)
    run = WorkflowRun.start(
        rid, at=t, worker=WORKER, workflow=workflow, workflow_version=1,
        entrypoint="synthetic:long", code_fingerprint="0" * 16, input={"n": events},
        input_digest="0" * 64, idempotency_key=None,
    )
    run.start_step("work#0", "work", 1, at=t, worker=WORKER)
    checkpoints = max(0, events - (4 if finish else 2))
    for i in range(checkpoints):
        t += tick
        run.checkpoint_step("work#0", 1, i + 1, {"offset": i}, i, checkpoints, at=t,
                            worker=WORKER)
        if (i + 1) % batch == 0:
            store.save_run(run)
    if finish:
        run.complete_step("work#0", 1, {"rows": checkpoints}, 1.0, at=t + tick, worker=WORKER)
        run.complete({"rows": checkpoints}, at=t + 2 * tick, worker=WORKER)
    store.save_run(run)
    return rid

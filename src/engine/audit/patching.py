"""Patch markers: change a workflow body without breaking the runs already in flight.

    if patched("charge-before-ship"):
        charge(order); ship(order)
    else:
        ship(order); charge(order)

Like Temporal's `workflow.patched` and DBOS's `DBOS.patch`: a run that reaches this point with
no history left records a `PatchMarked` event and takes the new path, and so does every replay
of it. A run whose history goes on past this point without the marker was written by the old
code, so it replays the old path. Once no run without the marker is left (`stepstone replay
--check` tells), the old branch can be deleted and the call kept or removed.
"""

from __future__ import annotations

from engine.context import current_runner


def patched(change_id: str) -> bool:
    """Whether the run takes the new path guarded by `change_id`.

    Call it from the workflow body (not from a step), at the point where the code changed.
    Outside a durable run, the workflow function runs as plain code: the new path.
    """
    if not change_id:
        raise ValueError("patched() needs a non-empty change id, e.g. patched('retry-v2')")
    runner = current_runner.get()
    if runner is None:
        return True
    return runner.patched(change_id)

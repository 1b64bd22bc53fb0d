"""Cancel requests: kept beside the log until the run's holder records `RunCancelled`.

Why not write `RunCancelled` straight into the run's log from the cancelling process? Because
a live holder is writing to that log: the cancel would race its next checkpoint (one of the two
writes loses on the version check) and the holder would learn of it only by failing a write.
Instead the request is a row here, durable at once; the holder's lease keeper polls for its
runs' rows every second or so, and the holder records the cancel itself at its next checkpoint
or step boundary, after saving its progress: the log keeps a single writer. A run nobody holds
(pending, waiting, interrupted) is cancelled by the requester directly, under a lease it takes
for that instant. A request whose holder died before honouring it is honoured by the next
process that takes the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from uuid import UUID

from engine.stopping import CancelRequest
from engine.storage.index_db import Cursor
from engine.workers.leases import LeaseStore


def request_cancel(leases: LeaseStore, run_id: UUID, request: CancelRequest) -> CancelRequest:
    """Record a request (the first one stands: asking again returns it unchanged)."""

    def do(cur: Cursor) -> CancelRequest:
        cur.execute(
            leases.sql(
                "INSERT INTO {cancels} (run_id, requested_by, reason, requested_at) VALUES "
                "(%(id)s, %(by)s, %(reason)s, %(at)s) ON CONFLICT (run_id) DO NOTHING"
            ),
            {"id": str(run_id), "by": request.by, "reason": request.reason,
             "at": request.requested_at.timestamp()},
        )
        return _read(leases, cur, [run_id])[run_id]

    return leases.call(do)


def cancel_requests(leases: LeaseStore, run_ids: Sequence[UUID]) -> dict[UUID, CancelRequest]:
    """The pending requests among `run_ids` (one query, whatever their number)."""
    if not run_ids:
        return {}
    return leases.call(lambda cur: _read(leases, cur, run_ids))


def cancel_request(leases: LeaseStore, run_id: UUID) -> CancelRequest | None:
    return cancel_requests(leases, [run_id]).get(run_id)


def clear_cancel(leases: LeaseStore, run_id: UUID) -> None:
    """Forget a request once the run has ended (cancelled, or finished first)."""
    leases.call(lambda cur: cur.execute(
        leases.sql("DELETE FROM {cancels} WHERE run_id = %(id)s"), {"id": str(run_id)}
    ))


def _read(leases: LeaseStore, cur: Cursor, run_ids: Sequence[UUID]) -> dict[UUID, CancelRequest]:
    marks = ", ".join(f"%(r{i})s" for i in range(len(run_ids)))
    cur.execute(
        leases.sql(
            "SELECT run_id, requested_by, reason, requested_at FROM {cancels} "
            f"WHERE run_id IN ({marks})"
        ),
        {f"r{i}": str(r) for i, r in enumerate(run_ids)},
    )
    found: dict[UUID, CancelRequest] = {}
    for row in cur.fetchall():
        run_id, by, reason, at = tuple(row.values()) if isinstance(row, dict) else tuple(row)
        found[UUID(str(run_id))] = CancelRequest(
            str(by), str(reason), datetime.fromtimestamp(float(at), UTC)
        )
    return found

"""Whether a run the log calls `running` really is: its holder's lease, judged at read time.

The log can only say what was last recorded; a process killed mid-step leaves its run
`running` there for good. The runnable index knows better: a run is running only while a
live process holds its lease (renewed by heartbeats), and a lease held by a process of this
machine that no longer exists is dead at once, whatever its expiry says; so is, on
PostgreSQL, one whose holder's database session has ended. Readers (the CLI,
the API, the dashboard) combine the two here and show `interrupted` otherwise, with the time
the run was last seen alive. Nothing is written: the next resume or takeover records the run
running again.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import UTC, datetime

from engine.status import LEASED, RunStatus

THIS_HOST = socket.gethostname()


@dataclass(frozen=True)
class Lease:
    """The lease columns of a run's row in the runnable index (absent: no row)."""

    owner: str | None
    expires_at: float | None
    host: str | None
    pid: int | None
    heartbeat_at: float | None
    gone: bool = False
    """PostgreSQL: the holder's database session has ended (its process died), whatever the
    lease's expiry says (`engine.storage.index_db.PG_HOLDER_GONE`)."""


@dataclass(frozen=True)
class Liveness:
    """What to show for a run: its status at this moment, who holds it, when last seen."""

    status: RunStatus
    held_by: str | None
    last_seen: datetime | None
    """For an interrupted run: the later of its last event and its holder's last heartbeat."""


def holder_alive(lease: Lease | None, now: float) -> bool:
    """Whether a live process holds this lease now (on the store's wall clock)."""
    if lease is None or lease.owner is None or lease.expires_at is None:
        return False
    if lease.expires_at <= now or lease.gone:
        return False
    if lease.host == THIS_HOST and lease.pid is not None:
        from engine.workers.index_rows import process_alive

        return process_alive(int(lease.pid))
    return True


def observe(status: RunStatus, last_event_at: datetime, lease: Lease | None,
            now: float) -> Liveness:
    """The status to show for a run whose log says `status` and whose lease is `lease`."""
    alive = holder_alive(lease, now)
    held_by = lease.owner if alive and lease is not None else None
    if status not in LEASED or alive:
        return Liveness(status, held_by, None)
    seen = last_event_at
    if lease is not None and lease.heartbeat_at is not None:
        seen = max(seen, datetime.fromtimestamp(lease.heartbeat_at, UTC))
    return Liveness(RunStatus.INTERRUPTED, None, seen)

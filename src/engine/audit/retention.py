"""Retention: remove whole finished runs from the store, in bounded transactions.

A run is removed whole or not at all: its events, snapshots and runnable-index row go in one
transaction (with whatever the caller adds to it through `forget`: the read side's rows of the
run), so a pruner killed at any point leaves each run whole or gone, and running it again
finishes the job. Only runs whose status is terminal (nothing may follow their end) and
whose last event is older than the cutoff are touched; each is checked again inside its
transaction, against the version it had when it was chosen (and archived).

Transactions are bounded: a batch holds at most `max_runs` runs and about `max_events`
events (a run larger than that goes alone: a run is never split). On PostgreSQL a delete
waits for, and then briefly holds up, the writers' table lock; small batches keep that short.

Positions are never reused. PostgreSQL's come from a sequence; SQLite's are rowids, which an
insert takes as the largest rowid plus one, so removing the newest event of the log would let
the next event take its position again and a reader that had passed it would skip the new
one. A run holding the log's newest event is therefore kept until something newer is written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, cast
from uuid import UUID

from eventsourcing.persistence import StoredEvent

from engine.errors import DamagedLogError, UnknownEventError
from engine.events import RunEvent
from engine.logcontext import get_logger
from engine.status import TERMINAL, RunStatus, status_after
from engine.store import RunStore

log = get_logger("stepstone.retention")

INDEX_TABLES = ("stepstone_queue", "stepstone_cancel_requests", "stepstone_messages")
"""The tables beside the log keyed by run id (`engine.workers.index_rows`: the runnable index
and its leases, the cancel requests, the messages sent to runs), whose rows of a run go with
it."""


class Executor(Protocol):
    """One open transaction: SQL with `?` placeholders (a view transaction fits)."""

    def execute(self, sql: str, params: Sequence[Any] = ...) -> None: ...

    def fetch(self, sql: str, params: Sequence[Any] = ...) -> list[Any]: ...


Transaction = Callable[[], AbstractContextManager[Executor]]
Forget = Callable[[Executor, list[UUID]], None]


@dataclass(frozen=True)
class Policy:
    """Which runs to remove: finished before `finished_before`, of `workflow` if given, in one
    of `statuses` (terminal ones only)."""

    finished_before: datetime
    workflow: str | None = None
    statuses: frozenset[RunStatus] = frozenset(TERMINAL)

    def __post_init__(self) -> None:
        unfinished = sorted(s.value for s in self.statuses - TERMINAL)
        if unfinished:
            raise ValueError(f"only finished runs can be pruned, not {', '.join(unfinished)} "
                             f"ones (finished: {', '.join(sorted(s.value for s in TERMINAL))})")


@dataclass(frozen=True)
class Candidate:
    """A run chosen for removal, as it stood when chosen."""

    run_id: UUID
    workflow: str
    status: RunStatus
    finished_at: datetime
    version: int
    last_position: int


def candidates(store: RunStore, policy: Policy) -> Iterator[Candidate]:
    """The runs the policy removes, oldest first.

    A finished run's last event is the one that finished it (nothing may follow a terminal
    event), so each run costs one indexed read of its last event, whatever its size: its
    class gives the status, its timestamp the time the run finished.
    """
    for started in store.started():
        if started.timestamp >= policy.finished_before:
            continue
        if policy.workflow is not None and started.workflow != policy.workflow:
            continue
        last = store.reader.last_event(started.originator_id)
        if last is None:
            continue
        try:
            event = cast(RunEvent, store.mapper.to_domain_event(StoredEvent(
                originator_id=last.run_id, originator_version=last.version, topic=last.topic,
                state=last.state)))
        except (DamagedLogError, UnknownEventError) as e:
            log.warning("keeping run %s: its last event does not read (%s)", last.run_id, e)
            continue
        status = status_after(type(event))
        if status is None or status not in policy.statuses:
            continue
        if event.timestamp >= policy.finished_before:
            continue
        yield Candidate(last.run_id, started.workflow, status, event.timestamp, last.version,
                        last.position)


def batches(chosen: Iterable[Candidate], *, max_runs: int = 100,
            max_events: int = 20_000) -> Iterator[list[Candidate]]:
    """Candidates in groups of at most `max_runs` runs and about `max_events` events."""
    batch: list[Candidate] = []
    events = 0
    for c in chosen:
        if batch and (len(batch) >= max_runs or events + c.version > max_events):
            yield batch
            batch, events = [], 0
        batch.append(c)
        events += c.version
    if batch:
        yield batch


def remove(store: RunStore, tx: Executor, batch: Sequence[Candidate], *,
           forget: Forget | None = None, queue: bool = True) -> list[Candidate]:
    """Delete the batch's runs inside `tx` (with their rows beside the log unless `queue` is
    false: tables a store without workers may lack); returns those deleted. A run whose last version
    is not the one it was chosen (and archived) at is kept, and so is the run holding the
    newest event of a SQLite log (see the module's note)."""
    d = store.dialect
    keep: list[Candidate] = []
    newest = None
    if d.is_sqlite:
        rows = tx.fetch(f"SELECT max(rowid) FROM {d.events_table}", ())
        newest = rows[0][0] if rows else None
    for c in batch:
        rows = tx.fetch(f"SELECT max(originator_version) FROM {d.events_table} "
                        f"WHERE originator_id = {d.run_id_param()}", (d.run_id_value(c.run_id),))
        if not rows or rows[0][0] != c.version:
            log.warning("keeping run %s: it changed since it was chosen", c.run_id)
            continue
        if newest is not None and c.last_position == newest:
            log.info("keeping run %s for now: it holds the log's newest position", c.run_id)
            continue
        keep.append(c)
    if not keep:
        return keep
    if forget is not None:
        forget(tx, [c.run_id for c in keep])
    for c in keep:
        key = (d.run_id_value(c.run_id),)
        tx.execute(f"DELETE FROM {d.events_table} WHERE originator_id = {d.run_id_param()}",
                   key)
        if store.snapshots is not None:
            tx.execute(f"DELETE FROM {d.snapshots_table} "
                       f"WHERE originator_id = {d.run_id_param()}", key)
        if queue:
            for table in INDEX_TABLES:
                tx.execute(f"DELETE FROM {d.qualify(table)} WHERE run_id = ?",
                           (str(c.run_id),))
    return keep

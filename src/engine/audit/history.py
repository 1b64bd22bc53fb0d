"""A run's history as a stream: pages of the log decoded one event at a time.

`Engine.history` builds a list, which for a run of a million events costs gigabytes before
the first line; `iter_history` reads the run a page at a time (`LogReader.run_events`), so its
memory is one page whatever the run's size and its first entry comes after one query. The
filters run in the database where they can: `types` as a topic list, `after` as the version
of the first event past that position, `tail` from the run's last version (versions have no
holes, so the last N start at last - N + 1).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator
from uuid import UUID

from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import get_topic

from engine.errors import DamagedLogError, RunNotFoundError
from engine.events import EVENT_TYPES, RunEvent
from engine.results import HistoryEntry
from engine.status import TERMINAL, status_after
from engine.storage import PAGE, StoredRow
from engine.store import RunStore

EVENTS_BY_NAME: dict[str, type[RunEvent]] = {c.__name__: c for c in EVENT_TYPES}
"""The event classes by their class name, for users who type them (`history --type`)."""


def event_classes(names: Collection[str]) -> tuple[type[RunEvent], ...]:
    """The event classes named; `ValueError` naming the unknown ones and the known ones."""
    unknown = [n for n in names if n not in EVENTS_BY_NAME]
    if unknown:
        raise ValueError(f"unknown event type {', '.join(unknown)}; known types: "
                         f"{', '.join(EVENTS_BY_NAME)}")
    return tuple(EVENTS_BY_NAME[n] for n in names)


def iter_history(
    store: RunStore,
    run_id: UUID,
    *,
    after: int | None = None,
    limit: int | None = None,
    tail: int | None = None,
    types: Collection[type[RunEvent]] = (),
    follow: bool = False,
    poll_s: float = 0.5,
    stop: Callable[[], bool] = lambda: False,
    summarize: bool = True,
) -> Iterator[HistoryEntry]:
    """The run's events in version order, in constant memory.

    `after`: only events past this global log position. `tail`: only the last N (of those of
    `types`, when given, counted from the run's end). `limit`: at most N entries. `follow`:
    once the stored events are read, wait for new ones (polling every `poll_s`) until the run
    ends or `stop()` says so. `RunNotFoundError` if the run has no events.
    """
    reader = store.reader
    last = reader.last_event(run_id)
    if last is None:
        raise RunNotFoundError(run_id)
    topics = [get_topic(c) for c in types]
    version = 0
    if after is not None:
        first = reader.version_after(run_id, after)
        version = last.version if first is None else first - 1
    if tail is not None:
        version = max(version, _tail_start(store, run_id, last.version, tail, topics))
    left = limit
    ended = False
    while left is None or left > 0:
        page = reader.run_events(run_id, after_version=version,
                                 limit=PAGE if left is None else min(PAGE, left), topics=topics)
        for row in page:
            yield HistoryEntry.of(row.position, decode(store, row), summarize=summarize)
        if page:
            version = page[-1].version
            if left is not None:
                left -= len(page)
            del page, row  # not held while the next page is read: one page in memory
            continue
        if not follow or ended or stop():
            return
        ended = _ended(store, run_id)  # if so, one more read gets what came before the end
        if not ended:
            time.sleep(poll_s)


def _tail_start(store: RunStore, run_id: UUID, last: int, n: int, topics: list[str]) -> int:
    """The version after which the last `n` events (of `topics`) begin."""
    if not topics:
        return max(0, last - n)
    # Walk back a page of versions at a time, counting the matching events in each.
    seen, upper = 0, last
    while upper > 0:
        lower = max(0, upper - PAGE * 10)
        rows = store.reader.run_events(run_id, after_version=lower, limit=PAGE * 10,
                                       topics=topics)
        rows = [r for r in rows if r.version <= upper]
        if seen + len(rows) >= n:
            return rows[len(rows) - (n - seen)].version - 1
        seen += len(rows)
        upper = lower
    return 0


def _ended(store: RunStore, run_id: UUID) -> bool:
    """Whether the run's last event ends it (a terminal status: nothing may follow it)."""
    last = store.reader.last_event(run_id)
    if last is None:
        return True  # the run was pruned while followed: nothing more will come
    status = status_after(type(decode(store, last)))
    return status is not None and status in TERMINAL


def decode(store: RunStore, row: StoredRow) -> RunEvent:
    """One stored row as its event; a row that does not decode names its position."""
    stored = StoredEvent(originator_id=row.run_id, originator_version=row.version,
                         topic=row.topic, state=row.state)
    try:
        event = store.mapper.to_domain_event(stored)
    except DamagedLogError as e:
        raise DamagedLogError(row.run_id, row.version, row.position, e.what) from e
    assert isinstance(event, RunEvent)
    return event

"""Listing runs newest first, filtered by workflow, start time and status.

The `RunStarted` events are read backwards from the head of the log a page at a time, so the
newest runs come first and a listing stops as soon as it has `limit` runs (or reaches runs
started before `since`), whatever the log's size. Workflow and start time come from the
`RunStarted` event itself; the status needs the run (its latest snapshot and the events after
it), so it is read only for runs the other filters kept. The answer is exact: the log, not a
view.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from datetime import datetime
from typing import cast

from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import get_topic

from engine.aggregate import WorkflowRun
from engine.errors import DamagedLogError, UnknownEventError
from engine.events import RunStarted
from engine.logcontext import get_logger
from engine.results import RunInfo
from engine.status import RunStatus
from engine.store import RunStore

log = get_logger("stepstone.engine")


def started_newest_first(store: RunStore) -> Iterator[tuple[int, RunStarted]]:
    """Every run's `RunStarted` with its position, newest first, read a page at a time."""
    topic = get_topic(RunStarted)
    before: int | None = None
    while True:
        page = store.reader.newest_of(topic, before=before)
        for row in page:
            stored = StoredEvent(originator_id=row.run_id, originator_version=row.version,
                                 topic=row.topic, state=row.state)
            yield row.position, cast(RunStarted, store.mapper.to_domain_event(stored))
        if not page:
            return
        before = page[-1].position


def find_runs(
    store: RunStore,
    *,
    limit: int | None = None,
    statuses: Collection[RunStatus] = (),
    workflow: str | None = None,
    since: datetime | None = None,
    info: Callable[[WorkflowRun], RunInfo] = RunInfo.of,
) -> Iterator[RunInfo]:
    """Runs newest first: of `workflow`, started at or after `since`, in one of `statuses`
    (any when empty); at most `limit`. `info` makes each run's `RunInfo` (the engine's
    judges its liveness too). A run whose log is damaged is skipped with a warning, so one
    bad run does not hide the others."""
    if limit is not None and limit <= 0:
        return
    found = 0
    for _, started in started_newest_first(store):
        if since is not None and started.timestamp < since:
            return  # runs are in start order: every older one started earlier still
        if workflow is not None and started.workflow != workflow:
            continue
        try:
            run = store.load(started.originator_id)
        except (DamagedLogError, UnknownEventError) as e:
            log.warning("skipping run %s: %s", started.originator_id, e)
            continue
        found_info = info(run)
        if statuses and found_info.status not in statuses:
            continue
        yield found_info
        found += 1
        if limit is not None and found >= limit:
            return

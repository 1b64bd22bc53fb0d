"""The projector: brings views up to date from the run log, in batches, exactly once.

Exactly once: a batch's view rows and its tracking record commit in one transaction, under the
view's write lock, and the batch starts from the position read under that lock. A crash before
the commit leaves neither; a crash after leaves both. The next batch starts where the last
commit says, so no event is applied twice or skipped.

Views can be at different positions (one was just rebuilt, another projector ran): a batch is
read from the lowest position among them, and each view applies only the facts after its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from eventsourcing.persistence import Notification

from engine.storage import parse_store_url
from engine.store import RunStore
from projections.catalog import VIEW_CLASSES
from projections.errors import EventNotProjectableError, UnknownViewError
from projections.facts import Fact, decode
from projections.follow import follow
from projections.pages import pages
from projections.rebuild import ensure_tables, rebuild
from projections.sql import Tx, ViewDB
from projections.view import View

DEFAULT_PREFIX = "stepstone_view"
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ViewStatus:
    """Where a view stands: its tracking position, the log's head, and the lag between."""

    view: str
    table: str
    position: int
    head: int

    @property
    def lag(self) -> int:
        return max(0, self.head - self.position)


class Projector:
    """Keeps the views of one run log up to date; see `catch_up`, `run` and `rebuild`.

    Give it a `RunStore` (it is not closed here) or a store URL (opened and closed here).
    `batch_size` is the number of events per transaction when following the log;
    `rebuild_batch_size` when rebuilding (by default 10,000 on PostgreSQL, where a batch costs
    a few round trips whatever its size, and 2,000 on SQLite, where bigger batches measured no
    faster and would hold the file's one write lock longer against the engine's commits).
    """

    def __init__(
        self,
        store: RunStore | str,
        views: Iterable[str] | None = None,
        *,
        batch_size: int = 500,
        rebuild_batch_size: int | None = None,
        prefix: str = DEFAULT_PREFIX,
    ) -> None:
        if min(batch_size, rebuild_batch_size or 1) < 1:
            raise ValueError("batch sizes must be at least 1")
        names = list(views) if views is not None else list(VIEW_CLASSES)
        for name in names:
            if name not in VIEW_CLASSES:
                raise UnknownViewError(name, VIEW_CLASSES)
        self._owns_store = isinstance(store, str)
        self.store = RunStore(parse_store_url(store)) if isinstance(store, str) else store
        self.batch_size = batch_size
        self.db = ViewDB(self.store)
        self.rebuild_batch_size = rebuild_batch_size or (2000 if self.db.is_sqlite else 10_000)
        self.views: list[View] = [
            VIEW_CLASSES[n](self.db, log=self.store.name, prefix=prefix) for n in names
        ]
        self._ready = False

    def __enter__(self) -> Projector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()
        if self._owns_store:
            self.store.close()

    # -- reading where things stand ----------------------------------------------------------
    def head(self) -> int:
        with self.db.translated():
            return self.store.head()

    def positions(self, views: Sequence[View] | None = None) -> dict[str, int]:
        views = self.views if views is None else views
        keys = self.db.positions([v.tracking_key for v in views])
        return {v.name: keys[v.tracking_key] for v in views}

    def status(self) -> list[ViewStatus]:
        head = self.head()
        positions = self.positions()
        return [ViewStatus(v.name, v.table, positions[v.name], head) for v in self.views]

    # -- keeping up --------------------------------------------------------------------------
    def catch_up(self, *, progress: Progress | None = None) -> int:
        """Apply every event up to the log's head (as of the call); returns the lowest position."""
        self.ensure_tables()
        return self.catch_up_views(self.views, progress=progress)

    def catch_up_views(
        self,
        views: Sequence[View],
        *,
        progress: Progress | None = None,
        stop: threading.Event | None = None,
        until: int | None = None,
        batch_size: int | None = None,
        finish: bool = True,
    ) -> int:
        """Bring `views` up to `until` (the head, by default) in batches; see `pages`.

        `finish=False` leaves the views' deferred work to a later call (a rebuild builds its
        indexes first)."""
        head = self.head() if until is None else until
        positions = self.positions(views)
        while (start := min(positions.values())) < head:
            with pages(self, start, head, batch_size or self.batch_size) as batches:
                for first, last, facts, error in batches:
                    if stop is not None and stop.is_set():
                        return min(positions.values())
                    positions = self._commit(views, first, facts, error,
                                             finish=finish and last >= head)
                    if progress is not None:
                        progress(min(positions.values()), head)
                    if min(positions.values()) < last:
                        break  # a view was found behind the batch: read again from it
                else:
                    break  # the log has nothing more up to `head` (its last ids rolled back)
        if finish:
            self.finish(views)
        return min(positions.values())

    def apply(
        self, views: Sequence[View], notes: Sequence[Notification], start: int, *, finish: bool
    ) -> dict[str, int]:
        """Apply `notes` (all the events after `start`, in order) to each view, in one commit.

        Returns each view's position after the commit. An event that cannot be projected
        stops the batch there: the events before it are committed, then its error is raised.
        """
        facts, error = decode(notes, self.store.mapper)
        return self._commit(views, start, facts, error, finish=finish)

    def _commit(
        self,
        views: Sequence[View],
        start: int,
        facts: Sequence[Fact],
        error: EventNotProjectableError | None,
        *,
        finish: bool,
    ) -> dict[str, int]:
        if not facts:
            if error is not None:
                raise error
            return self.positions(views)
        with self.db.transaction([v.lock_name for v in views]) as tx:
            positions = self.apply_in(tx, views, facts, start)
            if finish or error is not None:
                self.finish_in(tx, views)
        if error is not None:
            raise error
        return positions

    def apply_in(
        self, tx: Tx, views: Sequence[View], facts: Sequence[Fact], start: int
    ) -> dict[str, int]:
        """`apply` inside the caller's transaction, which holds the views' locks.

        A view found behind `start` under the lock (a rebuild swapped it in at a lower
        position) is left alone; its position is returned and the next read starts there.
        """
        positions = tx.positions([v.tracking_key for v in views])
        work = []
        for view in views:
            position = positions.pop(view.tracking_key)
            positions[view.name] = position
            if position < start:
                continue
            todo = facts if position == start else [f for f in facts if f.position > position]
            if todo:
                work.append((view, todo, view.load(tx, todo)))
        for view, todo, rows in work:
            view.apply(tx, todo, rows())
            tx.track(view.view, view.tracking_key, todo[-1].position)
            positions[view.name] = todo[-1].position
            view.unfinished = view.defers_work
        return positions

    def finish(self, views: Sequence[View]) -> None:
        """Deferred work of each view (percentiles), once the batches have reached the head."""
        if any(v.unfinished for v in views):
            with self.db.transaction([v.lock_name for v in views]) as tx:
                self.finish_in(tx, views)

    @staticmethod
    def finish_in(tx: Tx, views: Sequence[View]) -> None:
        for view in views:
            if view.unfinished:
                view.finish(tx)
                view.unfinished = False

    def ensure_tables(self) -> None:
        """Create the views' tables if missing; refuse tables written by another release."""
        if not self._ready:
            ensure_tables(self, self.views)
            self._ready = True

    # -- the long-running loop ---------------------------------------------------------------
    def run(
        self,
        stop: threading.Event,
        *,
        poll_interval_s: float = 0.5,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        """Keep every view up to date until `stop` is set.

        On PostgreSQL new events arrive through the library's LISTEN/NOTIFY subscription; on
        SQLite, which has none in `eventsourcing` 9.5, the log is polled every
        `poll_interval_s`.
        """
        self.ensure_tables()
        follow(self, stop, poll_interval_s=poll_interval_s, on_batch=on_batch)

    def rebuild(self, view: str | None = None, *, progress: Progress | None = None) -> int:
        """Drop and rebuild one view (or all), swapping it in once caught up; see rebuild.py.

        Returns the position the rebuilt views were swapped in at.
        """
        return rebuild(self, view, progress=progress)


def catch_up(store: RunStore | str, views: Iterable[str] | None = None) -> int:
    """Bring the views of a store (or store URL) up to date in-process; returns the position."""
    with Projector(store, views) as projector:
        return projector.catch_up()

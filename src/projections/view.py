"""What every view is: an `eventsourcing` Projection that applies facts in batches.

A view owns its tables (the public one first, then any private state it needs to stay
self-contained, so it can be dropped and rebuilt alone) and one tracking record, keyed by its
public table name and the upstream log (`stepstone_view_runs/Stepstone`): with shards, one
record per shard log.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from datetime import datetime
from typing import Any, ClassVar

from eventsourcing.persistence import Tracking, TrackingRecorder
from eventsourcing.projection import Projection

from engine.events import RunEvent, RunStarted
from engine.status import STATUS_AFTER, TERMINAL
from projections.facts import Fact, fact_of
from projections.sql import Rows, Table, Tx, ViewDB

SHADOW = "__rebuild"

# The engine's status table (the one the aggregate folds with), as the text the views store.
STATUS_TEXT_AFTER: dict[type[RunEvent], str] = {c: s.value for c, s in STATUS_AFTER.items()}
TERMINAL_TEXT = frozenset(s.value for s in TERMINAL)

Events = frozenset[type[RunEvent]]


class View(Projection[TrackingRecorder]):
    """A read model kept up to date from the run log in batches.

    Inside the batch's transaction, `load` asks for the rows the facts will change and `apply`
    gets them and writes the new ones; the caller records the new position in the same
    transaction. (Two steps so that the reads of all views travel together.) `finish` runs at
    the end of a catch-up, when the view has reached the head of the log.
    """

    name: str = "view"
    tables: ClassVar[tuple[Table, ...]] = ()
    defers_work: ClassVar[bool] = False
    """Whether `finish` has work to do; such a view starts out unfinished in each process."""
    handles: ClassVar[Events] = frozenset()
    """The event classes this view reads."""
    ignores: ClassVar[Events] = frozenset()
    """The event classes it passes over on purpose. Every class of `engine.events` is in
    exactly one of the two (tests/test_vocabulary.py), so a new event is a decision per view."""

    def __init__(self, db: ViewDB, *, log: str, prefix: str, shadow: bool = False) -> None:
        super().__init__(view=db.tracking_recorder())
        self.db = db
        self.log = log
        self.prefix = prefix
        self.shadow = shadow
        suffix = SHADOW if shadow else ""
        self.bound = tuple(db.bind(t, f"{prefix}_{t.name}{suffix}") for t in self.tables)
        self.table = self.bound[0].name
        self.tracking_key = f"{self.table}/{log}"
        self.lock_name = self.table
        self.unfinished = self.defers_work

    @abstractmethod
    def load(self, tx: Tx, facts: Sequence[Fact]) -> Rows:
        """Ask, inside `tx`, for the existing rows that `facts` will change."""

    @abstractmethod
    def apply(self, tx: Tx, facts: Sequence[Fact], rows: list[list[Any]]) -> None:
        """Write the rows `facts` make of `rows` (what `load` returned)."""

    def finish(self, tx: Tx) -> None:
        """Work deferred until caught up; nothing by default."""

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        """The library's one-event-per-transaction entry point, for its own runners."""
        if not isinstance(domain_event, RunEvent):
            raise TypeError(f"{type(domain_event).__name__} is not a Stepstone run event")
        fact = fact_of(domain_event, tracking.notification_id)
        key = f"{self.table}/{tracking.application_name}"
        with self.db.transaction([self.lock_name]) as tx:
            if tx.positions([key])[key] >= fact.position:
                return
            self.apply(tx, [fact], self.load(tx, [fact])())
            self.finish(tx)
            tx.track(self.view, key, fact.position)

    def shadow_of(self) -> View:
        """The same view over its rebuild tables."""
        return type(self)(self.db, log=self.log, prefix=self.prefix, shadow=True)


def seconds_between(start: str | None, end: str | None) -> float | None:
    if start is None or end is None:
        return None
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def touched_runs(facts: Sequence[Fact]) -> list[str]:
    """Runs with a fact in `facts` that did not start in this batch: their rows may exist."""
    started = {f.run_id for f in facts if f.kind is RunStarted}
    return list({f.run_id for f in facts} - started)

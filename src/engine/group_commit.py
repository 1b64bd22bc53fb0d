"""Group commit: concurrent saves of different runs share one transaction.

A worker drives several runs at once, and each step of each run is one commit. Commits are the
cost (DESIGN section 7): on PostgreSQL the log's table lock serializes them, on SQLite the file
lock does. Saves that arrive while a commit is in flight wait for it and then go together in
the next one, so N busy runs cost about one commit per round instead of N. A lone save goes
straight through: it only takes an uncontended lock.

Leader/follower: the first saver commits everything pending, including what arrived before it
got there; the others wait for their outcome. If the shared transaction fails on a conflict,
each save of the batch is retried alone so only the run that lost the race sees
`RunConflictError`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from uuid import UUID

from eventsourcing.domain import CanMutateAggregate

from engine.aggregate import WorkflowRun
from engine.errors import RunConflictError
from engine.storage import Statement
from engine.store import RunStore


@dataclass
class _Save:
    run: WorkflowRun
    events: Sequence[CanMutateAggregate[UUID]]
    also: Sequence[Statement] = ()
    done: bool = False
    error: BaseException | None = None
    batch_size: int = field(default=0)


class GroupCommit:
    def __init__(self, store: RunStore) -> None:
        self.store = store
        self._cond = threading.Condition()
        self._pending: list[_Save] = []
        self._leading = False
        self.commits = 0
        self.saves = 0

    def save_run(self, run: WorkflowRun, also: Sequence[Statement] = ()) -> None:
        """Commit `run`'s pending events, possibly together with other runs' saves (and the
        statements `also` with them: see `RunStore.save_events`)."""
        events = run.collect_events()
        if not events:
            return
        mine = _Save(run, events, also)
        with self._cond:
            self._pending.append(mine)
            while self._leading and not mine.done:
                self._cond.wait()
            if not mine.done:
                self._leading = True
                batch, self._pending = self._pending, []
        if not mine.done:
            try:
                self._commit(batch)
            finally:
                with self._cond:
                    self._leading = False
                    self._cond.notify_all()
        if mine.error is not None:
            raise mine.error

    def _commit(self, batch: list[_Save]) -> None:
        """Commit `batch`, giving every save of it an outcome; never raises.

        Whatever fails, each save ends `done` with its own error or none, so no saver returns
        as if its events were written when they were not (its run would then write the next
        version over a hole).
        """
        self.commits += 1
        self.saves += len(batch)
        try:
            self.store.save_events([(s.run, s.events) for s in batch],
                                   [statement for s in batch for statement in s.also])
        except RunConflictError:
            if len(batch) == 1:
                batch[0].error = RunConflictError(batch[0].run.id)
            else:  # find who lost the race; everyone else's events still go in
                for s in batch:
                    try:
                        self.store.save_events([(s.run, s.events)], s.also)
                    except BaseException as e:
                        s.error = e
        except BaseException as e:  # the store failed: every save of the batch failed with it
            for s in batch:
                s.error = e
        finally:
            for s in batch:
                s.done = True

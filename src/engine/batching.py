"""Concurrent callers' small writes, flushed together in one transaction.

The same leader/follower shape as `engine.group_commit`, for writes that cannot conflict (rows
added to the runnable index with `ON CONFLICT DO NOTHING`): the first caller writes everything
pending, including what arrived while it waited for the lock; the others wait for that
outcome. A lone caller goes straight through, so nobody waits for company.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

_T = TypeVar("_T")


@dataclass
class _Item(Generic[_T]):
    value: _T
    done: bool = False
    error: BaseException | None = None


class Batcher(Generic[_T]):
    """Hands concurrent `submit`s to `flush` in batches; each caller sees its batch's error."""

    def __init__(self, flush: Callable[[Sequence[_T]], None]) -> None:
        self._flush = flush
        self._cond = threading.Condition()
        self._pending: list[_Item[_T]] = []
        self._leading = False
        self.flushes = 0

    def submit(self, value: _T) -> None:
        """Write `value`, maybe with others' values; returns once it is committed."""
        mine = _Item(value)
        batch: list[_Item[_T]] = []
        with self._cond:
            self._pending.append(mine)
            while self._leading and not mine.done:
                self._cond.wait()
            if not mine.done:
                self._leading = True
                batch, self._pending = self._pending, []
        if batch:
            try:
                self.flushes += 1
                self._flush([item.value for item in batch])
            except BaseException as e:  # the one transaction failed: so did every write in it
                for item in batch:
                    item.error = e
            finally:
                with self._cond:
                    for item in batch:
                        item.done = True
                    self._leading = False
                    self._cond.notify_all()
        if mine.error is not None:
            raise mine.error

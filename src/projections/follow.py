"""Following the log after catch-up: LISTEN/NOTIFY on PostgreSQL, polling on SQLite.

On PostgreSQL the library's subscription (`recorder.subscribe`, which LISTENs on the events
table's channel and pulls pages of notifications) feeds a relay thread; the projector takes
from it whatever has arrived, up to a batch, so a burst of events still commits in batches.
The subscription only ever moves forward from where it started, so when a view is found
behind it (a rebuild swapped it in at a lower position) the loop catches up again by reading
the log and subscribes anew from there.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from eventsourcing.persistence import Notification

if TYPE_CHECKING:
    from projections.projector import Projector

OnBatch = Callable[[int], None]


def follow(
    projector: Projector,
    stop: threading.Event,
    *,
    poll_interval_s: float,
    on_batch: OnBatch | None,
) -> None:
    last = -1
    while not stop.is_set():
        position = projector.catch_up_views(projector.views, stop=stop)
        if on_batch is not None and position != last:
            on_batch(position)
        last = position
        if stop.is_set():
            return
        if projector.db.is_sqlite:
            stop.wait(poll_interval_s)
        else:
            last = _tail(projector, stop, position, on_batch)


def _tail(projector: Projector, stop: threading.Event, start: int, on_batch: OnBatch | None) -> int:
    """Apply what the subscription delivers until stopped, or until a view falls behind it."""
    with projector.db.translated():
        subscription = projector.store.recorder.subscribe(gt=start)
    relay = _Relay(subscription, maxsize=4 * projector.batch_size)
    with projector.db.translated(), subscription, relay.running():
        while not stop.is_set():
            batch = relay.take(projector.batch_size, timeout_s=0.2)
            if not batch:
                continue
            positions = projector.apply(
                projector.views, batch, start, finish=relay.queue.empty()
            )
            start = batch[-1].id
            if on_batch is not None:
                on_batch(min(positions.values()))
            if min(positions.values()) < start:
                break
    return start


class _Relay:
    """Moves notifications from the subscription's iterator to a bounded queue."""

    def __init__(self, subscription: Iterator[Notification], maxsize: int) -> None:
        self.subscription = subscription
        self.queue: queue.Queue[Notification] = queue.Queue(maxsize)
        self.error: BaseException | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stepstone-relay", daemon=True)

    @contextmanager
    def running(self) -> Iterator[_Relay]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stopped.set()
            stop = getattr(self.subscription, "stop", None)
            if stop is not None:
                stop()
            self._thread.join()

    def _run(self) -> None:
        try:
            for note in self.subscription:
                while not self._stopped.is_set():
                    try:
                        self.queue.put(note, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if self._stopped.is_set():
                    return
        except BaseException as e:  # handed to the projector's thread, which raises it
            self.error = e

    def take(self, limit: int, *, timeout_s: float) -> list[Notification]:
        """What has arrived, up to `limit`, waiting up to `timeout_s` for the first one."""
        try:
            batch = [self.queue.get(timeout=timeout_s)]
        except queue.Empty:
            if self.error is not None:
                raise self.error from None
            if not self._thread.is_alive():
                raise RuntimeError("the log subscription ended unexpectedly") from None
            return []
        while len(batch) < limit:
            try:
                batch.append(self.queue.get_nowait())
            except queue.Empty:
                break
        return batch

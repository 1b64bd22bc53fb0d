"""`stepstone projections`: keep the progress views up to date, inspect them, rebuild them."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

import click
from tqdm import tqdm

from engine import Settings
from projections import VIEWS, ProjectionsError, Projector
from stepstone import output
from stepstone.common import F, fail, log_format_option, open_engine, setup_logging, store_options
from stepstone.retention_loop import retention


def _batch(default: int | None, shown: str | None = None) -> Callable[[F], F]:
    return click.option("--batch-size", default=default, show_default=shown or True,
                        type=click.IntRange(1), help="Events per transaction.")


@click.group("projections")
def projections() -> None:
    """Keep the progress views (tables stepstone_view_*) up to date from the run log."""


@contextmanager
def open_projector(
    database_url: str | None,
    *,
    create: bool = False,
    batch_size: int = 500,
    rebuild_batch_size: int | None = None,
) -> Iterator[Projector]:
    with open_engine(database_url, create=create) as engine:
        try:
            with Projector(engine.store, batch_size=batch_size,
                           rebuild_batch_size=rebuild_batch_size) as projector:
                yield projector
        except ProjectionsError as e:
            fail(str(e))


@projections.command("run")
@_batch(500)
@click.option("--poll-interval", default=0.5, show_default=True, type=click.FloatRange(0.01),
              help="Seconds between polls of the log (SQLite; PostgreSQL is notified).")
@store_options
@log_format_option
def run_cmd(batch_size: int, poll_interval: float, database_url: str | None,
            as_json: bool, log_format: str) -> None:
    """Follow the log and keep every view up to date until SIGTERM or Ctrl-C."""
    setup_logging(log_format)
    stop = threading.Event()
    with open_projector(database_url, batch_size=batch_size, create=True) as projector:
        how = "polling" if projector.db.is_sqlite else "LISTEN/NOTIFY"
        click.echo(f"following {projector.store.location.display} ({how}); "
                   f"views: {', '.join(VIEWS)}. Ctrl-C to stop.", err=True)
        settings = Settings(database_url=database_url) if database_url else Settings()
        with _stop_on_signals(stop), retention(settings, stop):  # the settings' policy, if any
            projector.run(stop, poll_interval_s=poll_interval)
        position = min(projector.positions().values())
    if as_json:
        output.emit_json({"stopped_at": position})
    else:
        click.echo(f"stopped; every view is at position {position} or later", err=True)


@projections.command()
@store_options
def status(database_url: str | None, as_json: bool) -> None:
    """Per view: its position in the log, the log's head, and the lag between them."""
    with open_projector(database_url) as projector:
        rows = projector.status()
    if as_json:
        output.emit_json([{"view": s.view, "table": s.table, "position": s.position,
                           "head": s.head, "lag": s.lag} for s in rows])
        return
    click.echo(f"{'VIEW':15} {'TABLE':30} {'POSITION':>10} {'HEAD':>10} {'LAG':>10}")
    for s in rows:
        click.echo(f"{s.view:15} {s.table:30} {s.position:>10} {s.head:>10} {s.lag:>10}")


@projections.command()
@click.argument("view", required=False, metavar="[VIEW]")
@_batch(None, "2000 on SQLite, 10000 on PostgreSQL")
@store_options
def rebuild(
    view: str | None, batch_size: int | None, database_url: str | None, as_json: bool
) -> None:
    """Drop a view (all if none named) and rebuild it from the log, swapping it in at the end.

    Readers keep the old view until the new one has caught up with the log.
    """
    if view is not None and view not in VIEWS:
        fail(f"no view named {view!r}; the views are: {', '.join(VIEWS)}")
    with open_projector(database_url, rebuild_batch_size=batch_size) as projector:
        started = time.perf_counter()
        bar = tqdm(total=projector.head(), unit="ev", unit_scale=True, file=sys.stderr,
                   desc=f"rebuild {view or 'all views'}", mininterval=0.5)

        def progress(position: int, head: int) -> None:
            if head != bar.total:
                bar.total = head
            bar.update(position - bar.n)

        with bar:
            position = projector.rebuild(view, progress=progress)
        seconds = time.perf_counter() - started
    names = [view] if view else list(VIEWS)
    if as_json:
        output.emit_json({"views": names, "position": position, "seconds": round(seconds, 3)})
    else:
        click.echo(f"rebuilt {', '.join(names)} up to position {position} in {seconds:.1f} s")


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM or the first Ctrl-C ends the loop after the batch in flight; a second forces."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        click.echo(f"\n{signal.Signals(signum).name}: stopping after the batch in flight",
                   err=True)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)

"""Rebuild rate of the progress views, next to the rate of merely reading the same log.

Writes a log of `--runs` workflow runs (50,000 runs make about 1,000,000 events: six steps
each, with checkpoints, some failures, retries, crashes and preemptions), then, alternating K
times on the same store, times:

- read: `recorder.select_notifications` in pages of the batch size, nothing else (the
  library's notification read: the ceiling the aim is stated against);
- rows: the same events as plain rows (`LogReader.rows_after`, what the projector reads),
  nothing decoded: the physical limit;
- rebuild: `Projector.rebuild()` of all four views (shadow tables, swapped in at the end), in
  transactions of `--batch-size` events, its resident memory sampled every 20 ms.

It prints the best rate of each, the rebuild's share of the read rate, the peak resident
memory during the rebuild, and the resident memory at 25/50/75/100 % of it: flat figures mean
memory does not grow with the log. SQLite in a temp dir; PostgreSQL in a scratch schema,
dropped at the end (unless `--keep`, which prints where the log stays for another run).

    python bench/projection_rebuild.py [--runs N] [--batch-size B] [--repeat K]
        [--postgres-url URL] [--skip-postgres] [--skip-sqlite] [--each-view]
        [--sqlite-file PATH] [--postgres-schema NAME] [--keep] [--view VIEW]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from engine import events as ev
from engine.aggregate import WorkflowRun
from engine.storage import parse_store_url
from engine.store import RunStore
from projections import VIEWS, Projector

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
_PAGE = os.sysconf("SC_PAGE_SIZE")


# -- the log ----------------------------------------------------------------------------------
def _run(rng: random.Random, n: int) -> WorkflowRun:
    """One run of about twenty events, shaped like the engine's driver records them."""
    t = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=n)
    worker = f"host-{n % 8}:{1000 + n % 97}"

    def at() -> datetime:
        nonlocal t
        t += timedelta(milliseconds=rng.randint(5, 900))
        return t

    run = WorkflowRun.start(
        uuid.UUID(int=rng.getrandbits(128), version=4), at=at(), worker=worker,
        workflow=f"pipeline-{n % 5}", workflow_version=1, entrypoint="jobs:pipeline",
        code_fingerprint="f" * 16, input={"day": n % 365}, input_digest="d" * 64,
        idempotency_key=None,
    )
    # The typed commands, in the order the old `record` calls drew from `rng`: the same seed
    # still writes the same log.
    for s, name in enumerate(("extract", "clean", "enrich", "join", "load", "report")):
        key, attempt = f"{name}#{s}", 1
        run.start_step(key, name, attempt, at=at(), worker=worker)
        roll = rng.random()
        if roll < 0.05:  # a retryable failure, then a retry
            run.fail_step(key, attempt, "TimeoutError", "upstream timed out", retryable=True,
                          next_attempt_at=t, duration_s=0.5, at=at(), worker=worker)
            attempt += 1
            run.start_step(key, name, attempt, at=at(), worker=worker)
        elif roll < 0.07:  # a crash: the next attempt starts over an unfinished one
            run.resume(ev.ResumeReason.CRASH_RECOVERY, at=at(), worker=worker)
            attempt += 1
            run.start_step(key, name, attempt, at=at(), worker=worker)
        elif roll < 0.09:  # a preemption and a resume
            run.preempt_step(key, attempt, 0, "SIGTERM", at=at(), worker=worker)
            run.preempt("SIGTERM", at=at(), worker=worker)
            run.resume(ev.ResumeReason.AFTER_PREEMPTION, at=at(), worker=worker)
            attempt += 1
            run.start_step(key, name, attempt, at=at(), worker=worker)
        for c in (1, 2):
            run.checkpoint_step(key, attempt, c, {"offset": c * 1000}, c * 1000, 2000,
                                at=at(), worker=worker)
        run.complete_step(key, attempt, {"rows": 2000}, rng.uniform(0.1, 3.0), at=at(),
                          worker=worker)
    run.complete({"ok": True}, at=at(), worker=worker)
    return run


def write_log(store: RunStore, runs: int, seed: int = 1) -> float:
    rng = random.Random(seed)
    started = time.perf_counter()
    group = 100  # runs per save: the engine's group commit
    for first in range(0, runs, group):
        store.save(*(_run(rng, n) for n in range(first, min(first + group, runs))))
    return time.perf_counter() - started


# -- measuring --------------------------------------------------------------------------------
def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE / 2**20


@dataclass
class Sampler:
    """Samples resident memory in a thread; records it at each quarter of the progress."""

    peak: float = 0.0
    quarters: dict[int, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mib())

    def progress(self, position: int, head: int) -> None:
        for q in (25, 50, 75, 100):
            if q not in self.quarters and position * 100 >= head * q:
                self.quarters[q] = rss_mib()

    @contextmanager
    def sampling(self) -> Iterator[None]:
        thread = threading.Thread(target=self.run, daemon=True)
        self.peak = rss_mib()
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join()


def time_rows(store: RunStore, batch: int) -> tuple[int, float]:
    started, start, n, head = time.perf_counter(), 0, 0, store.head()
    while rows := store.reader.rows_after(start, head, limit=batch):
        n += len(rows)
        start = rows[-1][0]
    return n, time.perf_counter() - started


def time_read(store: RunStore, batch: int) -> tuple[int, float]:
    started, start, n = time.perf_counter(), 0, 0
    while notes := store.recorder.select_notifications(start, batch, inclusive_of_start=False):
        n += len(notes)
        start = notes[-1].id
    return n, time.perf_counter() - started


def time_rebuild(store: RunStore, batch: int, view: str | None) -> tuple[int, float, Sampler]:
    sampler = Sampler()
    with Projector(store, rebuild_batch_size=batch) as projector, sampler.sampling():
        started = time.perf_counter()
        position = projector.rebuild(view, progress=sampler.progress)
        seconds = time.perf_counter() - started
    return position, seconds, sampler


def bench(name: str, url: str, args: argparse.Namespace) -> None:
    store = RunStore(parse_store_url(url), snapshot_interval=0)
    if store.head() == 0:
        seconds = write_log(store, args.runs)
        print(f"{name}: wrote {store.head():,} events ({args.runs:,} runs) in {seconds:.0f} s")
    else:
        print(f"{name}: reusing a log of {store.head():,} events")
    with Projector(store) as projector:
        batch = args.batch_size or projector.rebuild_batch_size  # the store's default
    reads: list[float] = []
    raw: list[float] = []
    rebuilds: list[float] = []
    samplers: list[Sampler] = []
    for _ in range(args.repeat):
        n, seconds = time_read(store, batch)
        reads.append(n / seconds)
        n, seconds = time_rows(store, batch)
        raw.append(n / seconds)
        n, seconds, sampler = time_rebuild(store, batch, args.view)
        rebuilds.append(n / seconds)
        samplers.append(sampler)
    best = max(range(args.repeat), key=lambda i: rebuilds[i])
    s = samplers[best]
    quarters = " / ".join(f"{s.quarters.get(q, float('nan')):.0f}" for q in (25, 50, 75, 100))
    print(
        f"{name}: {n:,} events, batch {batch}, {args.view or 'all views'}\n"
        f"  read     {max(reads):>10,.0f} events/s   (runs: {_list(reads)})\n"
        f"  rows     {max(raw):>10,.0f} events/s   (runs: {_list(raw)})\n"
        f"  rebuild  {max(rebuilds):>10,.0f} events/s   (runs: {_list(rebuilds)})   "
        f"= {max(rebuilds) / max(reads):.2f} of the read rate, "
        f"{max(rebuilds) / max(raw):.2f} of the rows rate\n"
        f"  memory   peak {s.peak:.0f} MiB resident during the rebuild; at 25/50/75/100 %: "
        f"{quarters} MiB; max RSS of the process {_maxrss():.0f} MiB"
    )
    if args.each_view:
        for view in VIEWS:
            n, seconds, _ = time_rebuild(store, batch, view)
            print(f"  rebuild {view:<15} {n / seconds:>10,.0f} events/s "
                  f"= {n / seconds / max(reads):.2f} of the read rate")
    store.close()


def _list(rates: list[float]) -> str:
    return ", ".join(f"{r / 1000:.0f}k" for r in rates)


def _maxrss() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- stores -----------------------------------------------------------------------------------
@contextmanager
def sqlite_store(args: argparse.Namespace) -> Iterator[str]:
    if args.sqlite_file:
        yield f"sqlite:///{Path(args.sqlite_file).resolve()}"
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.db"
        yield f"sqlite:///{path}"
        if args.keep:
            kept = Path(tempfile.gettempdir()) / f"projection-bench-{os.getpid()}.db"
            path.rename(kept)
            print(f"kept the log: --sqlite-file {kept}")


@contextmanager
def postgres_store(args: argparse.Namespace) -> Iterator[str]:
    schema = args.postgres_schema or f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(args.postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    try:
        yield f"{args.postgres_url}?schema={schema}"
    finally:
        if args.keep or args.postgres_schema:
            print(f"kept the log: --postgres-schema {schema}")
        else:
            with psycopg.connect(args.postgres_url, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="events per transaction (default: the rebuild's, per store)")
    parser.add_argument("--each-view", action="store_true",
                        help="also rebuild each view alone, once, and print its rate")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--view", default=None, help="rebuild one view instead of all")
    parser.add_argument("--postgres-url", default=DEFAULT_PG_URL)
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument("--sqlite-file", help="use (or fill) this SQLite file and keep it")
    parser.add_argument("--postgres-schema", help="use (or fill) this schema and keep it")
    parser.add_argument("--keep", action="store_true", help="keep the generated logs")
    args = parser.parse_args()
    stores: list[tuple[str, Callable[[argparse.Namespace], Any]]] = []
    if not args.skip_sqlite:
        stores.append(("SQLite", sqlite_store))
    if not args.skip_postgres:
        stores.append(("PostgreSQL", postgres_store))
    print(f"{os.cpu_count()} CPUs; {args.repeat} alternating read/rebuild passes per store")
    for name, opener in stores:
        with opener(args) as url:
            bench(name, url, args)


if __name__ == "__main__":
    main()

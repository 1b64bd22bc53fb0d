"""Loading one very long run for resume, time travel into it, and verifying its hash chain.

Writes one run of `--events` events (100,000 by default: StepStarted/StepCompleted pairs with
a checkpoint every tenth step, hash-chained and snapshotted as the engine writes them), then
times, best of `--repeat`, on the same store:

- raw read: the run's rows selected, nothing decoded (the physical limit);
- raw read + JSON: the same rows with every payload parsed by orjson;
- load last: `RunStore.load(run)` (what a resume does), with snapshots and without;
- load middle: `RunStore.load(run, version=N/2)` (time travel), with snapshots and without;
- load worst: the version just before a snapshot, after the widest gap between two (the latest
  such gap: the most events a resume can have to replay, after the largest snapshot);
- verify: `engine.audit.verify.verify(store, run)`: reading the rows and re-hashing every event
  (`snapshots="none"`), then the same with the run's latest snapshot checked against a fold of
  its events (the default of `stepstone verify`).

SQLite in a temp dir; PostgreSQL in a scratch schema, dropped at the end.

    python bench/replay_load.py [--events N] [--repeat K] [--postgres-url URL]
        [--skip-postgres] [--skip-sqlite]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import orjson
import psycopg

from engine.aggregate import WorkflowRun
from engine.audit.export import rows
from engine.audit.verify import verify
from engine.storage import parse_store_url
from engine.store import RunStore

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def write_run(store: RunStore, events: int, batch: int = 2000) -> tuple[uuid.UUID, float]:
    """One run of about `events` events, saved `batch` at a time; returns its id and seconds."""
    t0 = time.perf_counter()
    clock = datetime(2026, 1, 1, tzinfo=UTC)
    run_id = uuid.uuid4()
    run = WorkflowRun.start(
        run_id, at=clock, worker="bench", workflow="bench-long", workflow_version=1,
        entrypoint="bench:long", code_fingerprint="f", input={"n": events}, input_digest="d",
        idempotency_key=None,
    )
    i = 0
    while run.version < events - 2:
        clock += timedelta(milliseconds=3)
        key = f"item#{i}"
        run.start_step(key, "item", 1, at=clock, worker="bench")
        if i % 10 == 0:
            run.checkpoint_step(key, 1, 1, {"offset": i}, 1, 2, at=clock, worker="bench")
        run.complete_step(key, 1, {"i": i, "ok": True}, 0.001, at=clock, worker="bench")
        i += 1
        if len(run.pending_events) >= batch:
            store.save_run(run)
    store.save_run(run)
    return run_id, time.perf_counter() - t0


def best(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, value = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return min(times), value


def bench(name: str, url: str, args: argparse.Namespace) -> None:
    location = parse_store_url(url)
    with RunStore(location) as store:  # snapshots on, as the engine writes
        run_id, wrote = write_run(store, args.events)
        last = store.load(run_id).version
        snaps = list(store.snapshots.get(run_id)) if store.snapshots else []
        print(f"\n{name}: wrote one run of {last:,} events in {wrote:.1f} s "
              f"({len(snaps)} snapshots, the last at version "
              f"{snaps[-1].originator_version if snaps else 0:,})")
        middle = last // 2
        # Worst case for a resume: the version just before a snapshot, after the widest gap
        # between snapshots (the store spaces them by a quarter of the run's steps).
        versions = [0, *(s.originator_version for s in snaps)]
        # The widest gap, the latest of equals: its snapshot holds the most steps to decode.
        gap_end = max(pairwise(versions), key=lambda p: (p[1] - p[0], p[1]))[1]
        worst = gap_end - 1

        def raw() -> int:
            return sum(1 for _ in rows(store, run_id=run_id))

        def raw_json() -> int:
            return sum(len(orjson.loads(r.state)) for r in rows(store, run_id=run_id))

        results = [
            ("raw read (rows only)", *best(raw, args.repeat)),
            ("raw read + orjson", *best(raw_json, args.repeat)),
            ("load last, snapshots", *best(lambda: store.load(run_id), args.repeat)),
            ("load middle, snapshots",
             *best(lambda: store.load(run_id, version=middle), args.repeat)),
            ("load worst, snapshots",
             *best(lambda: store.load(run_id, version=worst), args.repeat)),
        ]
        with RunStore(location, snapshot_interval=0) as plain:
            results += [
                ("load last, no snapshots", *best(lambda: plain.load(run_id), args.repeat)),
                ("load middle, no snapshots",
                 *best(lambda: plain.load(run_id, version=middle), args.repeat)),
            ]
        seconds, report = best(lambda: verify(store, run_id, snapshots="none"), args.repeat)
        assert report.ok, report.first
        results.append(("verify (read + re-hash)", seconds, report))
        seconds, report = best(lambda: verify(store, run_id), args.repeat)
        assert report.ok, report.first
        results.append(("verify + latest snapshot", seconds, report))
    print(f"{'what':28} {'seconds':>9} {'events/s':>12}  note")
    for what, seconds, value in results:
        note = ""
        if what.startswith("load"):
            note = f"version {value.version:,}"
            if "last" in what or "worst" in what:
                note += "" if "no snapshots" in what else "  (aim: < 2 s with snapshots)"
        if "worst" in what:
            note += f"  ({worst - max(v for v in versions if v < worst):,} events after "\
                    "its snapshot)"
        n = middle if "middle" in what else worst if "worst" in what else last
        print(f"{what:28} {seconds:9.3f} {n / seconds:12,.0f}  {note}")


@contextmanager
def sqlite_store() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as tmp:
        yield f"sqlite:///{Path(tmp) / 'replay.db'}"


@contextmanager
def postgres_store(url: str) -> Iterator[str]:
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{url}?schema={schema}"
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--postgres-url", default=DEFAULT_PG_URL)
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--skip-sqlite", action="store_true")
    args = parser.parse_args()
    if not args.skip_sqlite:
        with sqlite_store() as url:
            bench("SQLite", url, args)
    if not args.skip_postgres:
        with postgres_store(args.postgres_url) as url:
            bench("PostgreSQL", url, args)


if __name__ == "__main__":
    main()

"""Big runs and old runs: history and export of a very long run, and pruning with an archive.

Writes one run of `--events` events (1,000,000 by default; `bench/synthetic.py`: valid,
hash-chained events written through the aggregate), then runs the real commands as child
processes and measures, for each, the time to its first line of output, its total time and
its peak RSS (the child's own `ru_maxrss`, from `wait4`):

- `stepstone history RUN --json`, and `stepstone history RUN` (the readable timeline);
- `stepstone export --run RUN`;
- in-process, the time to `iter_history`'s first entry (without Python's start-up), and
  `stepstone --version`: the CLI's start-up alone, the floor of every first line;
- beside them, the peer: the list-building `Engine.history(run)` (what `history` did before
  it streamed; skip it with `--skip-peer`, it needs a few GB at a million events), and the
  physical limit: the run's raw rows read a page at a time, nothing decoded.

Then retention: `--runs` finished runs (of `--run-events` events each) in a second store,
pruned with `stepstone prune --finished-before ... --archive`; it prints events pruned per
second next to the rate of writing the same archive alone (`stepstone export` of those runs
to a gzip file: the floor of an archiving prune), and the archive's bytes per event.

SQLite in a temp dir; PostgreSQL in a scratch schema, dropped at the end.

    python bench/big_runs.py [--events N] [--runs N] [--run-events N] [--skip-peer]
        [--skip-history] [--postgres-url URL] [--skip-postgres] [--skip-sqlite]
"""

from __future__ import annotations

import argparse
import gzip
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

from engine.audit.history import iter_history
from engine.storage import parse_store_url
from engine.store import RunStore
from projections import catch_up

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import build_long_run

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
PEER = """
import sys, time
from uuid import UUID
from engine import Engine, Settings
with Engine(Settings(database_url=sys.argv[1])) as engine:
    entries = engine.history(UUID(sys.argv[2]))
    sys.stdout.write(f"{entries[0].position} {entries[0].event_type}\\n")
    sys.stdout.flush()
    print(len(entries))
"""
RAW = """
import sys
from uuid import UUID
from engine.audit.history import iter_history
from engine.storage import parse_store_url
from engine.store import RunStore
from projections import catch_up
store = RunStore(parse_store_url(sys.argv[1]))
n = 0
for row in store.reader.iter_run(UUID(sys.argv[2])):
    if n == 0:
        sys.stdout.write(f"{row.position}\\n")
        sys.stdout.flush()
    n += 1
print(n)
"""


def measure(args: list[str], out_path: Path | None = None) -> tuple[float, float, float]:
    """Run a child; seconds to its first line of output, total seconds, peak RSS in MB."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    t_first = time.perf_counter() - t0
    sink = open(out_path, "wb") if out_path else None  # noqa: SIM115
    if sink:
        sink.write(first)
    while chunk := proc.stdout.read(1 << 20):
        if sink:
            sink.write(chunk)
    if sink:
        sink.close()
    _, status, usage = os.wait4(proc.pid, 0)
    total = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or not first:
        raise SystemExit(f"{args} failed with exit {proc.returncode}")
    return t_first, total, usage.ru_maxrss / 1024  # Linux: kilobytes


def stepstone(*args: str) -> list[str]:
    return [sys.executable, "-m", "stepstone", *args]


def show(label: str, figures: tuple[float, float, float], events: int) -> None:
    first, total, rss = figures
    print(f"  {label:38} first line {first:7.3f} s   total {total:7.1f} s "
          f"({events / total:>9,.0f} ev/s)   peak RSS {rss:7.0f} MB", flush=True)


def bench_history(name: str, url: str, args: argparse.Namespace) -> None:
    store = RunStore(parse_store_url(url))
    t0 = time.perf_counter()
    run_id = build_long_run(store, args.events)
    store.close()
    print(f"{name}: one run of {args.events:,} events written in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    rid = str(run_id)
    store = RunStore(parse_store_url(url))
    t0 = time.perf_counter()
    entries = iter_history(store, run_id)
    next(entries)
    first = time.perf_counter() - t0
    store.close()
    print(f"  in-process: iter_history's first entry after {first * 1000:.1f} ms (the CLI's "
          "figures below include starting Python and importing Stepstone)", flush=True)
    show("startup floor: stepstone --version", measure(stepstone("--version")), args.events)
    show("history --json", measure(stepstone("history", rid, "--json", "--db", url)),
         args.events)
    show("history (timeline)", measure(stepstone("history", rid, "--db", url)), args.events)
    show("export --run", measure(stepstone("export", "--run", rid, "--db", url)), args.events)
    show("limit: raw rows, paged, no decoding",
         measure([sys.executable, "-c", RAW, url, rid]), args.events)
    if not args.skip_peer:
        show("peer: Engine.history (a list)", measure([sys.executable, "-c", PEER, url, rid]),
             args.events)


def bench_prune(name: str, url: str, args: argparse.Namespace, tmp: Path) -> None:
    store = RunStore(parse_store_url(url))
    old = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(args.runs):
        build_long_run(store, args.run_events, at=old + timedelta(seconds=i))
    build_long_run(store, 4, finish=False)  # newest, unfinished: every old run is prunable
    store.close()
    t0 = time.perf_counter()
    catch_up(url)  # as a following projector would have: the prune's own catch-up is a no-op
    print(f"{name}: views caught up with {args.runs * args.run_events:,} events in "
          f"{time.perf_counter() - t0:.1f} s (not counted below)", flush=True)
    events = args.runs * args.run_events
    export_path = tmp / f"{name}-export.jsonl.gz"
    t0 = time.perf_counter()
    with gzip.open(export_path, "wb", compresslevel=6) as out:
        subprocess.run(stepstone("export", "--db", url), stdout=out, check=True,
                       stderr=subprocess.DEVNULL)
    export_s = time.perf_counter() - t0
    archive = tmp / f"{name}-archive.jsonl.gz"
    t0 = time.perf_counter()
    subprocess.run(stepstone("prune", "--finished-before", "2026-06-01", "--archive",
                             str(archive), "--db", url), check=True, stderr=subprocess.DEVNULL)
    prune_s = time.perf_counter() - t0
    size = archive.stat().st_size
    print(f"{name}: prune of {args.runs:,} finished runs ({events:,} events) with --archive: "
          f"{prune_s:.1f} s, {events / prune_s:,.0f} events/s pruned", flush=True)
    print(f"  peer: export of the same log to gzip alone: {export_s:.1f} s, "
          f"{events / export_s:,.0f} events/s", flush=True)
    print(f"  archive: {size / 2**20:.1f} MB, {size / events:.0f} bytes per event "
          f"(the log held them in {args.run_events}-event runs of checkpoints)", flush=True)


@contextmanager
def sqlite_store(tmp: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp / f'{uuid.uuid4().hex}.db'}"


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
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=2_000)
    parser.add_argument("--run-events", type=int, default=100)
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--skip-history", action="store_true", help="only the prune part")
    parser.add_argument("--postgres-url", default=DEFAULT_PG_URL)
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--skip-sqlite", action="store_true")
    args = parser.parse_args()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        stores = []
        if not args.skip_sqlite:
            stores.append(("sqlite", lambda: sqlite_store(tmp)))
        if not args.skip_postgres:
            stores.append(("postgres", lambda: postgres_store(args.postgres_url)))
        for name, make in stores:
            if not args.skip_history:
                with make() as url:
                    bench_history(name, url, args)
            with make() as url:
                bench_prune(name, url, args, tmp)


if __name__ == "__main__":
    main()

"""Enqueue rate on PostgreSQL: runs recorded per second, Stepstone beside DBOS, no workers.

One client process records `--runs` runs of the bench's no-op chain into an empty scratch
schema, `--repeat` times, each in a fresh schema:

- Stepstone `engine.start` from 8 threads (concurrent starts share log and index commits);
- Stepstone `engine.start_many` in batches of `--batch` runs, from one thread;
- DBOS `DBOSClient.enqueue` from 8 threads (its schema made by one DBOS launch first), when
  `dbos` is installed.

Every figure is best / median runs/s. Nothing drives the runs: this is the cost of recording
them, the part `workers_throughput.py`'s enqueue column measures while workers compete.

    python bench/enqueue_rate.py [--runs 1000] [--repeat 3] [--batch 100] [--postgres-url URL]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from workers_throughput import (
    CLIENT_THREADS,
    DEFAULT_PG_URL,
    dbos_version,
    scratch_schema,
    spawn,
    stop_all,
    wait_for_line,
)


def stepstone_rate(url: str, runs: int, batch: int | None) -> float:
    from bench_workflows import noop_chain
    from engine import Engine, Settings

    with scratch_schema(url) as schema, Engine(
        Settings(database_url=f"{url}?schema={schema}", worker_id="bench")
    ) as eng:
        eng.start(noop_chain, {"n": 10})  # tables and connections, untimed
        t0 = time.perf_counter()
        if batch is None:
            with ThreadPoolExecutor(CLIENT_THREADS) as pool:
                list(pool.map(lambda _: eng.start(noop_chain, {"n": 10}), range(runs)))
        else:
            for lo in range(0, runs, batch):
                eng.start_many(noop_chain, [{"n": 10}] * min(batch, runs - lo))
        seconds = time.perf_counter() - t0
        assert eng.leases.counts().get("ready", 0) == runs + 1
    return runs / seconds


def dbos_rate(url: str, runs: int, tmp: Path) -> float:
    from dbos import DBOSClient, EnqueueOptions

    with scratch_schema(url) as schema:
        log = tmp / "dbos.log"
        # One DBOS launch makes its schema; it is stopped before the timed enqueues.
        proc = spawn([sys.executable, str(Path(__file__).with_name("workers_throughput.py")),
                      "--dbos-worker", url, schema, "1", "0.1"], log,
                     {"DBOS__VMID": "bench-setup", "DBOS__APPVERSION": "bench"})
        try:
            wait_for_line(log, "started")
        finally:
            stop_all([proc])
        client = DBOSClient(system_database_url=url, dbos_system_schema=schema)
        try:
            options: EnqueueOptions = {"queue_name": "bench", "workflow_name": "dbos_noop_chain",
                                       "app_version": "bench"}
            client.enqueue(options, 10)  # connections, untimed
            t0 = time.perf_counter()
            with ThreadPoolExecutor(CLIENT_THREADS) as pool:
                list(pool.map(lambda _: client.enqueue(options, 10), range(runs)))
            seconds = time.perf_counter() - t0
        finally:
            client.destroy()
    return runs / seconds


def repeated(repeat: int, measure: Callable[[], float]) -> tuple[float, float]:
    rates = [measure() for _ in range(repeat)]
    return max(rates), statistics.median(rates)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--postgres-url", default=DEFAULT_PG_URL)
    parser.add_argument("--no-dbos", action="store_true")
    args = parser.parse_args(argv)
    version = None if args.no_dbos else dbos_version()
    url = args.postgres_url
    print(f"{args.runs} runs per trial on PostgreSQL, best / median of {args.repeat}; "
          f"DBOS: {version or 'not installed'}")
    from engine import Engine

    rows = [(f"stepstone start, {CLIENT_THREADS} threads",
             repeated(args.repeat, lambda: stepstone_rate(url, args.runs, None)))]
    if hasattr(Engine, "start_many"):  # absent before it was added (for before/after runs)
        rows.append((f"stepstone start_many, batches of {args.batch}",
                     repeated(args.repeat, lambda: stepstone_rate(url, args.runs, args.batch))))
    if version:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append((f"dbos client.enqueue, {CLIENT_THREADS} threads",
                         repeated(args.repeat, lambda: dbos_rate(url, args.runs, Path(tmp)))))
    dbos = rows[-1][1][0] if version else None
    for label, (best, median) in rows:
        ratio = f"{best / dbos:5.2f}x dbos" if dbos else ""
        print(f"{label:<40} {best:>8,.0f} / {median:>8,.0f} runs/s  {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

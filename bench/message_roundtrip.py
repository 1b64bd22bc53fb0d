"""Message round trip: from `send` to the waiting run's next step, on SQLite and PostgreSQL.

A run waits in `receive("ping")` after a worker handed it back (no thread held); the client
sends it a message and the clock stops when the step after the receive starts running. p50
and p99 over `--trials` sequential round trips, a worker (in this process, on an engine of
its own) polling every `--poll` seconds; on PostgreSQL an idle worker is woken by NOTIFY.

Beside it, in the same run and on the same database, DBOS `send`/`recv` with the same shape
(a workflow blocked in `recv`, then a step), its notification poll set to the same `--poll`,
when `dbos` is installed. DBOS's `recv` keeps the workflow's thread waiting; ours hands the run
back, so the round trip includes a claim, a load of the run and the replay of its body.

    python bench/message_roundtrip.py [--trials 200] [--poll 0.05] [--postgres-url URL]
        [--skip-postgres] [--no-dbos]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from engine import Engine, RunStatus, Settings, receive, step, workflow
from engine.workers.worker import Worker

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
PONG: dict[str, float] = {}


@step
def pong(tag: str) -> str:
    PONG[tag] = time.perf_counter()
    return tag


@workflow("bench-ping")
def ping(tag: str) -> str:
    return pong(receive("ping"))


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def wait_for(condition: Callable[[], object], what: str, timeout_s: float = 30.0) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.001)


def stepstone_trips(url: str, trials: int, poll: float) -> list[float]:
    settings = Settings(database_url=url, worker_id="bench-worker", worker_poll_interval_s=poll)
    trips: list[float] = []
    with Engine(settings, workflows=[ping]) as served, \
            Engine(Settings(database_url=url, worker_id="bench-client"),
                   workflows=[ping]) as client:
        worker = Worker(served, concurrency=2)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            for i in range(trials + 5):  # the first five warm up
                tag = f"s{i}-{uuid.uuid4().hex[:8]}"
                run_id = client.start(ping, {"tag": tag})
                wait_for(lambda rid=run_id: client.status(rid).status is RunStatus.WAITING
                         and (p := client.placement(rid)) is not None and p.held_by is None,
                         "the run to wait")
                t0 = time.perf_counter()
                client.send(run_id, "ping", tag)
                wait_for(lambda tag=tag: tag in PONG, "the step after the receive")
                if i >= 5:
                    trips.append(PONG[tag] - t0)
        finally:
            served.preempt("benchmark done")
            thread.join(30)
    return trips


def dbos_version() -> str | None:
    try:
        return importlib.metadata.version("dbos")
    except importlib.metadata.PackageNotFoundError:
        return None


_dbos_ping: Any = None
DBOS_PONG: dict[str, float] = {}


def dbos_trips(system_database_url: str, schema: str | None, trials: int,
               poll: float) -> list[float]:
    from dbos import DBOS

    global _dbos_ping
    if _dbos_ping is None:

        @DBOS.step()
        def dbos_pong(tag: str) -> str:
            DBOS_PONG[tag] = time.perf_counter()
            return tag

        @DBOS.workflow()
        def dbos_ping_wf(tag: str) -> str:
            got = DBOS.recv("ping", timeout_seconds=60)
            return dbos_pong(str(got))

        _dbos_ping = dbos_ping_wf

    config: Any = {"name": "stepstone-bench", "system_database_url": system_database_url,
                   "log_level": "WARNING", "notification_listener_polling_interval_sec": poll}
    if schema is not None:
        config["dbos_system_schema"] = schema
    DBOS(config=config)
    trips: list[float] = []
    try:
        DBOS.launch()
        for i in range(trials + 5):
            tag = f"d{i}-{uuid.uuid4().hex[:8]}"
            handle = DBOS.start_workflow(_dbos_ping, tag)
            # Wait until its recv is waiting: DBOS records the wait's timeout as a sleep-like
            # operation; a short pause is what its own tests use.
            time.sleep(0.05)
            t0 = time.perf_counter()
            DBOS.send(handle.workflow_id, tag, topic="ping")
            wait_for(lambda tag=tag: tag in DBOS_PONG, "DBOS's step after recv")
            if i >= 5:
                trips.append(DBOS_PONG[tag] - t0)
            handle.get_result()
    finally:
        DBOS.destroy()
    return trips


@contextmanager
def pg_schema(url: str) -> Iterator[tuple[str, str]]:
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{url}?schema={schema}", schema
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def show(label: str, trips: list[float]) -> None:
    ms = [t * 1000 for t in trips]
    print(f"  {label:34} p50 {percentile(ms, 0.5):7.1f} ms   p99 {percentile(ms, 0.99):7.1f} ms"
          f"   ({len(ms)} round trips)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--poll", type=float, default=0.05)
    parser.add_argument("--postgres-url", default=DEFAULT_PG_URL)
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--no-dbos", action="store_true")
    args = parser.parse_args()
    with_dbos = not args.no_dbos and dbos_version() is not None
    print(f"message round trip, send -> next step; worker poll {args.poll}s; "
          f"dbos {dbos_version() or 'not installed'}")
    with tempfile.TemporaryDirectory() as tmp:
        print("SQLite")
        show("stepstone (run handed back)",
             stepstone_trips(f"sqlite:///{Path(tmp) / 'store.db'}", args.trials, args.poll))
        if with_dbos:
            show("DBOS send/recv (thread held)",
                 dbos_trips(f"sqlite:///{Path(tmp) / 'dbos.sqlite'}", None, args.trials,
                            args.poll))
    if args.skip_postgres:
        return
    print("PostgreSQL")
    with pg_schema(args.postgres_url) as (url, _):
        show("stepstone (run handed back)", stepstone_trips(url, args.trials, args.poll))
    if with_dbos:
        with pg_schema(args.postgres_url) as (_, schema):
            show("DBOS send/recv (thread held)",
                 dbos_trips(args.postgres_url, schema, args.trials, args.poll))


if __name__ == "__main__":
    main()

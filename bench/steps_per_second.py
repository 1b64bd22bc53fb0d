"""Steps per second of a 1,000-no-op-step workflow, next to what the database can commit.

For SQLite (WAL, synchronous=FULL, a file in a temp dir) and PostgreSQL (synchronous_commit=on,
scratch schemas dropped at the end) it prints side by side:

- the raw commit rate: one single-row INSERT committed per transaction;
- the stock `eventsourcing` save rate (a trivial aggregate, a plain Application);
- Stepstone's steps/s, as a share of the raw commit rate, with events and commits per step
  (commits counted by wrapping the recorders' insert_events here, not in src);
- DBOS's steps/s for the same workflow, when `dbos` is installed.

    python bench/steps_per_second.py [--steps N] [--repeat K] [--postgres-url URL]
                                     [--skip-postgres]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import logging
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from psycopg import sql

from engine import Engine, Settings, step, workflow
from engine.storage import parse_store_url

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
SYNCHRONOUS = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}


# -- the workload -----------------------------------------------------------------------------
@step
def noop() -> None:
    return None


@workflow("bench_noop_steps")
def noop_steps(n: int) -> int:
    for _ in range(n):
        noop()
    return n


class Counter(Aggregate):
    """The trivial aggregate of the stock-library reference."""

    @event("Incremented")
    def increment(self) -> None:
        pass


# -- results ----------------------------------------------------------------------------------
@dataclass
class Rate:
    """Rates of K timed repetitions (per second)."""

    samples: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        return max(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def cell(self) -> str:
        return f"{self.best:,.0f} / {self.median:,.0f}"


def timed(repeat: int, count: int, body: Callable[[], None]) -> Rate:
    rate = Rate()
    for _ in range(repeat):
        start = time.perf_counter()
        body()
        rate.samples.append(count / (time.perf_counter() - start))
    return rate


def share(ours: Rate, raw: Rate) -> str:
    return f"{100 * ours.best / raw.best:.0f}% / {100 * ours.median / raw.median:.0f}%"


# -- raw commits --------------------------------------------------------------------------------
def raw_sqlite(path: Path, n: int, repeat: int, explicit: bool) -> Rate:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        sync = conn.execute("PRAGMA synchronous").fetchone()[0]
        if (mode, sync) != ("wal", 2):
            raise RuntimeError(f"raw SQLite runs with journal_mode={mode} synchronous={sync}")
        conn.execute("CREATE TABLE IF NOT EXISTS raw_commits (id INTEGER PRIMARY KEY, v INTEGER)")

        def body() -> None:
            for i in range(n):
                if explicit:
                    conn.execute("BEGIN")
                conn.execute("INSERT INTO raw_commits (v) VALUES (?)", (i,))
                if explicit:
                    conn.execute("COMMIT")

        body()  # warm-up
        return timed(repeat, n, body)
    finally:
        conn.close()


_STATE = b"x" * 300  # about the size of an encoded StepStarted/StepCompleted


def raw_sqlite_log_shape(path: Path, n: int, repeat: int) -> Rate:
    """Two ~300 B rows per commit into a table shaped like the event log (two B-trees)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(
            "CREATE TABLE raw_log (originator_id TEXT, originator_version INTEGER, topic TEXT, "
            "state BLOB, PRIMARY KEY (originator_id, originator_version))"
        )
        run_id = uuid.uuid4().hex
        version = iter(range(1, 10**9))

        def body() -> None:
            for _ in range(n):
                conn.execute("BEGIN")
                for _ in range(2):
                    conn.execute(
                        "INSERT INTO raw_log VALUES (?, ?, 't', ?)", (run_id, next(version), _STATE)
                    )
                conn.execute("COMMIT")

        body()  # warm-up
        return timed(repeat, n, body)
    finally:
        conn.close()


def raw_postgres_log_shape(url: str, schema: str, n: int, repeat: int) -> Rate:
    """Two ~300 B rows per commit into a table shaped like the event log (PK + global id)."""
    table = sql.Identifier(schema, "raw_log")
    insert = sql.SQL(
        "INSERT INTO {} (originator_id, originator_version, state) "
        "VALUES (%s, %s, %s), (%s, %s, %s)"
    ).format(table)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = on")
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (originator_id uuid, originator_version bigint, state bytea, "
                "notification_id bigserial UNIQUE, PRIMARY KEY (originator_id, originator_version))"
            ).format(table)
        )
        run_id = uuid.uuid4()
        version = iter(range(1, 10**9, 2))

        def body() -> None:
            for _ in range(n):
                v = next(version)
                conn.execute(insert, (run_id, v, _STATE, run_id, v + 1, _STATE), prepare=True)

        body()  # warm-up
        return timed(repeat, n, body)


def raw_postgres(url: str, schema: str, n: int, repeat: int, explicit: bool) -> Rate:
    table = sql.Identifier(schema, "raw_commits")
    insert = sql.SQL("INSERT INTO {} (v) VALUES (%s)").format(table)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = on")
        conn.execute(
            sql.SQL("CREATE TABLE IF NOT EXISTS {} (id bigserial PRIMARY KEY, v int)").format(table)
        )

        def body() -> None:
            for i in range(n):
                if explicit:
                    with conn.transaction():
                        conn.execute(insert, (i,), prepare=True)
                else:
                    conn.execute(insert, (i,), prepare=True)

        body()  # warm-up
        return timed(repeat, n, body)


# -- the stock eventsourcing library ------------------------------------------------------------
def eventsourcing_saves(env: dict[str, str], n: int, repeat: int) -> Rate:
    app: Application[uuid.UUID] = Application(env=env)
    try:
        counter = Counter()
        app.save(counter)

        def body() -> None:
            for _ in range(n):
                counter.increment()
                app.save(counter)

        body()  # warm-up
        return timed(repeat, n, body)
    finally:
        app.close()


def stock_sqlite_env(path: Path) -> dict[str, str]:
    return {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(path)}


def stock_postgres_env(url: str, schema: str, **extra: str) -> dict[str, str]:
    parts = urlsplit(url)
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": parts.path.lstrip("/"),
        "POSTGRES_HOST": parts.hostname or "127.0.0.1",
        "POSTGRES_PORT": str(parts.port or 5432),
        "POSTGRES_USER": unquote(parts.username or "postgres"),
        "POSTGRES_PASSWORD": unquote(parts.password or ""),
        "POSTGRES_SCHEMA": schema,
    }
    env.update(extra)
    return env


# -- Stepstone ---------------------------------------------------------------------------------
@dataclass
class EngineFigures:
    rate: Rate
    events_per_step: float
    event_commits_per_step: float
    snapshot_commits_per_step: float
    durability: str


def count_calls(obj: Any, counter: list[int]) -> None:
    """Count the non-empty insert_events calls of one recorder (each is one commit)."""
    inner = obj.insert_events

    def insert_events(stored_events: Any, **kwargs: Any) -> Any:
        if len(stored_events):
            counter[0] += 1
        return inner(stored_events, **kwargs)

    obj.insert_events = insert_events


def engine_durability(engine: Engine) -> str:
    recorder: Any = engine.store.recorder
    if engine.store.location.kind == "sqlite":
        with recorder.datastore.transaction(commit=False) as c:
            c.execute("PRAGMA journal_mode")
            mode = c.fetchone()[0]
            c.execute("PRAGMA synchronous")
            sync = c.fetchone()[0]
        return f"journal_mode={mode}, synchronous={SYNCHRONOUS.get(sync, sync)}"
    with recorder.datastore.get_connection() as conn:
        row = conn.execute("SHOW synchronous_commit").fetchone()
    return f"synchronous_commit={row['synchronous_commit']}, recorder {type(recorder).__name__}"


def engine_steps(url: str, n: int, repeat: int, *, snapshots: bool = True) -> EngineFigures:
    settings = Settings(database_url=url, worker_id="bench")
    if not snapshots:
        settings = Settings(database_url=url, worker_id="bench", snapshot_interval=0)
    with Engine(settings, workflows=[noop_steps]) as engine:
        noop_steps_run(engine, min(n, 10))  # warm-up: adapters, prepared statements
        event_commits, snapshot_commits = [0], [0]
        count_calls(engine.store.recorder, event_commits)
        if engine.store.snapshots is not None:
            count_calls(engine.store.snapshots.recorder, snapshot_commits)
        head = engine.store.head()
        rate = timed(repeat, n, lambda: noop_steps_run(engine, n))
        steps = n * repeat
        return EngineFigures(
            rate=rate,
            events_per_step=(engine.store.head() - head) / steps,
            event_commits_per_step=event_commits[0] / steps,
            snapshot_commits_per_step=snapshot_commits[0] / steps,
            durability=engine_durability(engine),
        )


def noop_steps_run(engine: Engine, n: int) -> None:
    result = engine.run(noop_steps, {"n": n})
    if result.status.value != "completed":
        raise RuntimeError(f"benchmark run ended {result.status.value}")


# -- DBOS ----------------------------------------------------------------------------------------
def dbos_version() -> str | None:
    try:
        return importlib.metadata.version("dbos")
    except importlib.metadata.PackageNotFoundError:
        return None


_dbos_workflow: Any = None


def dbos_steps(system_database_url: str, schema: str | None, n: int, repeat: int) -> Rate:
    from dbos import DBOS

    global _dbos_workflow
    if _dbos_workflow is None:

        @DBOS.step()
        def dbos_noop() -> None:
            return None

        @DBOS.workflow()
        def dbos_noop_steps(count: int) -> int:
            for _ in range(count):
                dbos_noop()
            return count

        _dbos_workflow = dbos_noop_steps

    config: Any = {
        "name": "stepstone-bench",
        "system_database_url": system_database_url,
        "log_level": "WARNING",
    }
    if schema is not None:
        config["dbos_system_schema"] = schema
    DBOS(config=config)
    try:
        DBOS.launch()
        _dbos_workflow(min(n, 10))  # warm-up
        return timed(repeat, n, lambda: _dbos_workflow(n))
    finally:
        DBOS.destroy()


def sqlite_file_durability(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        sync = conn.execute("PRAGMA synchronous").fetchone()[0]
    finally:
        conn.close()
    return (
        f"journal_mode={mode}, synchronous={SYNCHRONOUS.get(sync, sync)} "
        "(the build's default: DBOS sets no synchronous pragma)"
    )


# -- scratch PostgreSQL schemas ------------------------------------------------------------------
class Scratch:
    """Scratch schemas in the PostgreSQL database, all dropped by `drop_all`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.prefix = f"bench_{uuid.uuid4().hex[:8]}"
        self.schemas: list[str] = []

    def schema(self, label: str) -> str:
        name = f"{self.prefix}_{label}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        self.schemas.append(name)
        return name

    def store_url(self, label: str) -> str:
        sep = "&" if urlsplit(self.url).query else "?"
        return f"{self.url}{sep}schema={self.schema(label)}"

    def drop_all(self) -> None:
        if not self.schemas:
            return
        with psycopg.connect(self.url, autocommit=True) as conn:
            for name in self.schemas:
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name))
                )
        self.schemas.clear()


# -- the report ---------------------------------------------------------------------------------
@dataclass
class Column:
    name: str
    cells: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    log_shape: Rate | None = None


ROWS = [
    ("raw", "raw commits/s: 1-row INSERT, autocommit"),
    ("raw_explicit", "raw commits/s: BEGIN; INSERT; COMMIT"),
    ("raw_log", "raw commits/s: 2 x 300 B rows, the log's two indexes"),
    ("es_stock", "eventsourcing saves/s, stock recorder"),
    ("es_fn", "eventsourcing saves/s, stock db function (unordered!)"),
    ("es_ours", "eventsourcing saves/s, Stepstone recorder"),
    ("engine", "Stepstone steps/s"),
    ("engine_share", "  as % of raw autocommit row (aim >= 60%)"),
    ("events", "  events per step"),
    ("commits", "  commits per step (events + snapshots)"),
    ("engine_log_share", "  as % of raw log-shaped commits"),
    ("engine_nosnap", "Stepstone steps/s, snapshot_interval=0"),
    ("engine_nosnap_share", "  as % of raw autocommit row"),
    ("dbos", "DBOS steps/s"),
    ("dbos_share", "  as % of raw autocommit row"),
]


def measure_sqlite(args: argparse.Namespace, tmp: Path, col: Column) -> None:
    n, k = args.steps, args.repeat
    raw = raw_sqlite(tmp / "raw.db", n, k, explicit=False)
    col.cells["raw"] = raw.cell()
    col.cells["raw_explicit"] = raw_sqlite(tmp / "raw2.db", n, k, explicit=True).cell()
    col.log_shape = raw_sqlite_log_shape(tmp / "raw3.db", n, k)
    col.cells["es_stock"] = eventsourcing_saves(stock_sqlite_env(tmp / "es.db"), n, k).cell()
    col.cells["es_fn"] = col.cells["es_ours"] = "n/a"
    fill_engine(col, raw, engine_steps(f"sqlite:///{tmp / 'engine.db'}", n, k))
    nosnap = engine_steps(f"sqlite:///{tmp / 'engine0.db'}", n, k, snapshots=False)
    col.cells["engine_nosnap"] = nosnap.rate.cell()
    col.cells["engine_nosnap_share"] = share(nosnap.rate, raw)
    if dbos_version():
        # DBOS leaves SQLite in its default rollback journal; WAL is a property of the file,
        # so setting it here puts DBOS on the same durability setting as the rows above.
        path = tmp / "dbos.sqlite"
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
        fill_dbos(col, raw, lambda: dbos_steps(f"sqlite:///{path}", None, n, k))
        col.notes.append(f"DBOS store: {sqlite_file_durability(path)}")


def measure_postgres(args: argparse.Namespace, scratch: Scratch, col: Column) -> None:
    n, k, url = args.steps, args.repeat, args.postgres_url
    raw = raw_postgres(url, scratch.schema("raw"), n, k, explicit=False)
    col.cells["raw"] = raw.cell()
    col.cells["raw_explicit"] = raw_postgres(url, scratch.schema("raw2"), n, k, True).cell()
    col.log_shape = raw_postgres_log_shape(url, scratch.schema("raw3"), n, k)
    col.cells["es_stock"] = eventsourcing_saves(
        stock_postgres_env(url, scratch.schema("es")), n, k
    ).cell()
    col.cells["es_fn"] = eventsourcing_saves(
        stock_postgres_env(url, scratch.schema("esfn"), POSTGRES_ENABLE_DB_FUNCTIONS="y"), n, k
    ).cell()
    ours = dict(parse_store_url(scratch.store_url("esours")).env)
    col.cells["es_ours"] = eventsourcing_saves(ours, n, k).cell()
    fill_engine(col, raw, engine_steps(scratch.store_url("engine"), n, k))
    nosnap = engine_steps(scratch.store_url("engine0"), n, k, snapshots=False)
    col.cells["engine_nosnap"] = nosnap.rate.cell()
    col.cells["engine_nosnap_share"] = share(nosnap.rate, raw)
    if dbos_version():
        fill_dbos(col, raw, lambda: dbos_steps(url, scratch.schema("dbos"), n, k))
        col.notes.append("DBOS store: the same database, synchronous_commit as above")


def fill_dbos(col: Column, raw: Rate, measure: Callable[[], Rate]) -> None:
    try:
        rate = measure()
    except Exception as e:  # optional comparison: report it, keep the rest of the table
        col.cells["dbos"] = f"failed: {type(e).__name__}"
        col.notes.append(f"DBOS failed: {e}")
        return
    col.cells["dbos"] = rate.cell()
    col.cells["dbos_share"] = share(rate, raw)


def fill_engine(col: Column, raw: Rate, figures: EngineFigures) -> None:
    col.cells["engine"] = figures.rate.cell()
    col.cells["engine_share"] = share(figures.rate, raw)
    if col.log_shape is not None:
        col.cells["raw_log"] = col.log_shape.cell()
        col.cells["engine_log_share"] = share(figures.rate, col.log_shape)
    col.cells["events"] = f"{figures.events_per_step:.3f}"
    col.cells["commits"] = (
        f"{figures.event_commits_per_step + figures.snapshot_commits_per_step:.3f} "
        f"({figures.event_commits_per_step:.3f} + {figures.snapshot_commits_per_step:.3f})"
    )
    col.notes.append(f"Stepstone store: {figures.durability}")


def postgres_facts(url: str) -> tuple[str, str]:
    with psycopg.connect(url, connect_timeout=5) as conn:
        values = {
            name: conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
            for name in ("server_version", "synchronous_commit", "fsync", "wal_sync_method")
        }
    version = str((values.pop("server_version") or ("?",))[0])
    settings = " ".join(f"{k}={(v or ('?',))[0]}" for k, v in values.items())
    return version, settings


def print_report(args: argparse.Namespace, columns: list[Column], header: list[str]) -> None:
    for line in header:
        print(line)
    print(
        f"workload: a @workflow calling a no-op @step {args.steps:,} times; each figure is "
        f"best / median of {args.repeat} timed runs after one untimed warm-up"
    )
    width = max(len(label) for _, label in ROWS) + 2
    cols = [max(24, *(len(c) for c in col.cells.values())) + 2 for col in columns]
    print()
    print("".ljust(width) + "".join(c.name.ljust(w) for c, w in zip(columns, cols, strict=True)))
    for key, label in ROWS:
        cells = [col.cells.get(key, "-") for col in columns]
        print(label.ljust(width) + "".join(c.ljust(w) for c, w in zip(cells, cols, strict=True)))
    print()
    for col in columns:
        for note in col.notes:
            print(f"{col.name}: {note}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="steps per workflow run")
    parser.add_argument("--repeat", type=int, default=5, help="timed repetitions per figure")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("STEPSTONE_BENCH_POSTGRES_URL", DEFAULT_PG_URL),
        help="PostgreSQL database to make scratch schemas in (env STEPSTONE_BENCH_POSTGRES_URL)",
    )
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.repeat < 1:
        parser.error("--steps and --repeat must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("stepstone").setLevel(logging.WARNING)
    header = [
        f"machine: {os.cpu_count()} cores, {platform.system()} {platform.machine()}",
        f"python {platform.python_version()}, sqlite {sqlite3.sqlite_version}, "
        f"eventsourcing {importlib.metadata.version('eventsourcing')}, "
        f"psycopg {psycopg.__version__}, dbos {dbos_version() or 'not installed'}",
    ]
    if not dbos_version():
        header.append("dbos not installed: DBOS rows skipped (pip install dbos)")
    columns = [Column("SQLite")]
    if not args.skip_postgres:
        version, settings = postgres_facts(args.postgres_url)
        header.append(f"postgres {version}: {settings}")
        columns.append(Column("PostgreSQL"))
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="stepstone-bench-")))
        measure_sqlite(args, tmp, columns[0])
        if not args.skip_postgres:
            scratch = Scratch(args.postgres_url)
            stack.callback(scratch.drop_all)
            measure_postgres(args, scratch, columns[1])
    print_report(args, columns, header)
    return 0


if __name__ == "__main__":
    sys.exit(main())

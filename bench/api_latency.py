"""Latency of the read-only API under 16 concurrent clients, on views holding 100,000 runs.

For SQLite (a file in a temp dir) and PostgreSQL (a scratch schema, dropped at the end):

1. writes `--runs` synthetic runs through the engine's store, in group commits of 200 runs
   (valid events, shaped as the driver records them: most complete, some fail, some are
   preempted, some are still running), then brings the views up to date with a projector;
2. starts `stepstone serve --no-projector` in a subprocess (uvicorn, one process);
3. for each endpoint, `--clients` concurrent clients send requests back to back until
   `--requests` have been answered (or `--seconds` have passed): a bounded, closed loop on
   loopback. It prints p50 / p99 latency and requests per second. `/healthz`, which reads
   nothing, comes first: the floor that uvicorn, FastAPI and the client cost on this machine.

    python bench/api_latency.py [--runs N] [--requests N] [--clients N] [--seconds S]
                                [--postgres-url URL] [--skip-postgres] [--skip-sqlite]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg

from engine.aggregate import WorkflowRun
from engine.storage import parse_store_url
from engine.store import RunStore
from projections import Projector

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
GROUP = 200  # runs per commit


# -- the log ----------------------------------------------------------------------------------
def synthetic_run(rng: random.Random, n: int, start: datetime) -> WorkflowRun:
    """One run of 3-9 events; its fate drawn from `rng` (75 % complete, 10 % fail, ...)."""
    t = start + timedelta(milliseconds=20 * n)
    worker = f"host-{n % 4}:{100 + n % 13}"

    def at() -> datetime:
        nonlocal t
        t += timedelta(milliseconds=rng.randint(1, 400))
        return t

    run = WorkflowRun.start(
        uuid.UUID(int=rng.getrandbits(128), version=4), at=at(), worker=worker,
        workflow=f"etl-{n % 4}", workflow_version=1, entrypoint="jobs:etl",
        code_fingerprint="f" * 16, input={"day": n}, input_digest="d" * 64, idempotency_key=None,
    )
    # The typed commands, in the order the old `record` calls drew from `rng`: the same seed
    # still writes the same log.
    fate = rng.random()
    run.start_step("extract#0", "extract", 1, at=at(), worker=worker)
    run.checkpoint_step("extract#0", 1, 1, {"offset": 500}, 500, 1000, at=at(), worker=worker)
    if fate < 0.05:  # still running
        return run
    if fate < 0.10:  # preempted mid-step
        run.preempt_step("extract#0", 1, 1, "SIGTERM", at=at(), worker=worker)
        run.preempt("SIGTERM", at=at(), worker=worker)
        return run
    run.complete_step("extract#0", 1, {"rows": 1000}, rng.uniform(0.1, 2.0), at=at(),
                      worker=worker)
    run.start_step("load#1", "load", 1, at=at(), worker=worker)
    if fate < 0.20:
        run.fail_step("load#1", 1, "IntegrityError",
                      "duplicate key value violates unique constraint", retryable=False,
                      next_attempt_at=None, duration_s=0.2, at=at(), worker=worker)
        run.fail("IntegrityError", "duplicate key", "load#1", at=at(), worker=worker)
        return run
    run.complete_step("load#1", 1, 1000, rng.uniform(0.1, 2.0), at=at(), worker=worker)
    run.complete({"rows": 1000}, at=at(), worker=worker)
    return run


def fill(url: str, runs: int) -> tuple[list[str], float, float, int]:
    """Write the log and project it; returns run ids, write and projection seconds, events."""
    rng = random.Random(7)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    store = RunStore(parse_store_url(url), snapshot_interval=0)
    ids: list[str] = []
    try:
        began = time.perf_counter()
        for first in range(0, runs, GROUP):
            group = [synthetic_run(rng, n, start) for n in range(first, min(first + GROUP, runs))]
            ids += [str(r.id) for r in group]
            store.save_run(*group)
        wrote = time.perf_counter() - began
        events = store.head()
        began = time.perf_counter()
        with Projector(store, batch_size=2000) as projector:
            projector.catch_up()
        projected = time.perf_counter() - began
    finally:
        store.close()
    return ids, wrote, projected, events


# -- the server and the load ------------------------------------------------------------------
@contextmanager
def server(url: str) -> Iterator[str]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "STEPSTONE_DATABASE_URL": url}
    env.pop("STEPSTONE_API_TOKEN", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "stepstone", "serve", "--no-projector", "--port", str(port),
         "--log-level", "warning"],
        env=env, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("the server did not become ready")
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(30)


class Connection:
    """A bare HTTP/1.1 keep-alive client on asyncio streams.

    httpx spends more CPU per request than the server does; on a 2-core machine shared by the
    client and the server, it would measure itself. This reads exactly what the API sends
    (a status line, headers with Content-Length, a body) and nothing more.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def drive(base: str, paths: Callable[[], str], requests: int, clients: int,
                seconds: float) -> tuple[list[float], float, int]:
    host, _, port = base.removeprefix("http://").partition(":")
    latencies: list[float] = []
    errors = 0
    remaining = requests
    connections = [Connection(host, int(port)) for _ in range(clients)]
    for conn in connections:  # warm up: connections, prepared statements, caches
        await conn.get(paths())
        await conn.get(paths())
    deadline = time.perf_counter() + seconds

    async def worker(conn: Connection) -> None:
        nonlocal remaining, errors
        while remaining > 0 and time.perf_counter() < deadline:
            remaining -= 1
            path = paths()
            began = time.perf_counter()
            status, _ = await conn.get(path)
            latencies.append(time.perf_counter() - began)
            errors += status != 200

    began = time.perf_counter()
    try:
        await asyncio.gather(*(worker(c) for c in connections))
    finally:
        for conn in connections:
            conn.close()
    return latencies, time.perf_counter() - began, errors


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def bench(name: str, url: str, args: argparse.Namespace) -> list[str]:
    ids, wrote, projected, events = fill(url, args.runs)
    print(f"{name}: wrote {args.runs:,} runs ({events:,} events) in {wrote:.1f} s, "
          f"projected in {projected:.1f} s", flush=True)
    rng = random.Random(11)
    lines = []
    with server(url) as base:
        endpoints: list[tuple[str, Callable[[], str]]] = [
            ("GET /healthz (floor: no query)", lambda: "/healthz"),
            ("GET /runs (first page of 50)", lambda: "/runs"),
            ("GET /runs?status=failed", lambda: "/runs?status=failed"),
            ("GET /runs/{id}", lambda: f"/runs/{rng.choice(ids)}"),
            ("GET /runs/{id}/events", lambda: f"/runs/{rng.choice(ids)}/events"),
        ]
        for label, paths in endpoints:
            latencies, elapsed, errors = asyncio.run(
                drive(base, paths, args.requests, args.clients, args.seconds))
            line = (f"{name:10} {label:30} p50 {pct(latencies, 0.5) * 1000:6.2f} ms   "
                    f"p99 {pct(latencies, 0.99) * 1000:6.2f} ms   "
                    f"{len(latencies) / elapsed:7,.0f} req/s   ({len(latencies):,} requests"
                    + (f", {errors} not 200" if errors else "") + ")")
            print(line, flush=True)
            lines.append(line)
    return lines


@contextmanager
def sqlite_store() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as tmp:
        yield f"sqlite:///{Path(tmp) / 'bench.db'}"


@contextmanager
def postgres_store(base_url: str) -> Iterator[str]:
    schema = f"bench_api_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{base_url}?schema={schema}"
    finally:
        with psycopg.connect(base_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=5_000, help="per endpoint")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30.0, help="cap per endpoint")
    parser.add_argument("--postgres-url", default=DEFAULT_PG_URL)
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--skip-sqlite", action="store_true")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, {platform.system()} {platform.machine()}; "
          f"python {platform.python_version()}; {args.clients} clients, "
          f"{args.requests:,} requests per endpoint (cap {args.seconds:g} s), "
          "client and server on this machine", flush=True)
    lines: list[str] = []
    if not args.skip_sqlite:
        with sqlite_store() as url:
            lines += bench("SQLite", url, args)
    if not args.skip_postgres:
        with postgres_store(args.postgres_url) as url:
            lines += bench("PostgreSQL", url, args)
    if any("not 200" in line for line in lines):
        raise SystemExit("some requests were not answered 200: see above")


if __name__ == "__main__":
    main()

"""Many workers on PostgreSQL: throughput, enqueue-to-completion latency, takeover latency.

For 1, 2 and 4 worker processes (each driving `--concurrency` runs at once), 1,000 runs of 10
no-op steps are enqueued from one client into workers that are already waiting; it prints
steps/s (all steps over first enqueue to last completion) and p50/p99 enqueue-to-completion
latency. Beside it, in the same run and on the same database, the same workload through DBOS's
queue with the same worker processes, per-process concurrency and poll interval, when `dbos`
is installed. Runs are enqueued from one client process with 8 threads, for both systems.
Then `--kills` times: the worker holding a long run is killed with SIGKILL and
the time until another worker resumes it (its `RunResumed`) is measured, next to the bound
the settings promise (lease + one poll).

    python bench/workers_throughput.py [--runs 1000] [--steps 10] [--workers 1,2,4]
        [--concurrency 4] [--poll 0.1] [--kills 20] [--postgres-url URL] [--no-dbos]

Each trial uses a scratch schema, dropped at the end.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
CLIENT_THREADS = 8  # the enqueueing client, the same for both systems


@dataclass
class Trial:
    system: str
    workers: int
    steps_per_s: float
    p50_s: float
    p99_s: float
    seconds: float
    enqueues_per_s: float


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * p
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


@contextmanager
def scratch_schema(url: str) -> Iterator[str]:
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield schema
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def wait_for_line(path: Path, text: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{path.name} never logged {text!r}:\n{path.read_text(errors='replace')}")


def spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join([str(BENCH_DIR), full_env.get("PYTHONPATH", "")])
    full_env.update(env or {})
    with open(log, "wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=full_env,
                                cwd=BENCH_DIR)


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()


# -- Stepstone ------------------------------------------------------------------------------
def stepstone_trial(url: str, workers: int, args: argparse.Namespace, tmp: Path) -> Trial:
    from bench_workflows import noop_chain
    from engine import Engine, Settings

    with scratch_schema(url) as schema:
        store_url = f"{url}?schema={schema}"
        engine = Engine(Settings(database_url=store_url, worker_id="bench-client"))
        engine.leases  # noqa: B018 - create the index before the workers race to
        logs = [tmp / f"ss-{workers}-{i}.log" for i in range(workers)]
        procs = [
            spawn([sys.executable, "-m", "stepstone", "worker", "--db", store_url, "--import",
                   "bench_workflows", "--concurrency", str(args.concurrency), "--poll",
                   str(args.poll)], log, {"STEPSTONE_WORKER_ID": f"bench-w{i}"})
            for i, log in enumerate(logs)
        ]
        try:
            for log in logs:
                wait_for_line(log, "started")
            t0 = time.time()
            with ThreadPoolExecutor(CLIENT_THREADS) as pool:
                ids = list(pool.map(lambda _: engine.start(noop_chain, {"n": args.steps}),
                                    range(args.runs)))
            enqueue_s = time.time() - t0
            while engine.leases.counts().get("done", 0) < args.runs:
                time.sleep(0.05)
        finally:
            stop_all(procs)
        latencies, ends = [], []
        for run_id in ids:
            history = engine.history(run_id)
            assert history[-1].event_type == "RunCompleted", history[-1]
            latencies.append((history[-1].timestamp - history[0].timestamp).total_seconds())
            ends.append(history[-1].timestamp.timestamp())
        engine.close()
    seconds = max(ends) - t0
    return Trial("stepstone", workers, args.runs * args.steps / seconds,
                 percentile(latencies, 0.5), percentile(latencies, 0.99), seconds,
                 args.runs / enqueue_s)


# -- DBOS -------------------------------------------------------------------------------------
def dbos_version() -> str | None:
    try:
        return importlib.metadata.version("dbos")
    except importlib.metadata.PackageNotFoundError:
        return None


def dbos_worker(url: str, schema: str, concurrency: int, poll: float) -> None:
    """One DBOS worker process: serves the bench queue until SIGTERM."""
    from dbos import DBOS

    @DBOS.step()
    def dbos_noop() -> None:
        return None

    @DBOS.workflow(name="dbos_noop_chain")
    def dbos_noop_chain(n: int) -> int:
        for _ in range(n):
            dbos_noop()
        return n

    DBOS(config={"name": "stepstone-bench", "system_database_url": url,
                 "dbos_system_schema": schema, "log_level": "WARNING"})
    DBOS.launch()
    DBOS.register_queue("bench", worker_concurrency=concurrency, polling_interval_sec=poll)
    print("started", flush=True)
    stop = False

    def on_term(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    while not stop:
        time.sleep(0.1)
    DBOS.destroy()


def dbos_trial(url: str, workers: int, args: argparse.Namespace, tmp: Path) -> Trial:
    from dbos import DBOSClient, EnqueueOptions

    with scratch_schema(url) as schema:
        logs = [tmp / f"dbos-{workers}-{i}.log" for i in range(workers)]
        procs = [
            spawn([sys.executable, __file__, "--dbos-worker", url, schema,
                   str(args.concurrency), str(args.poll)], log,
                  {"DBOS__VMID": f"bench-w{i}", "DBOS__APPVERSION": "bench"})
            for i, log in enumerate(logs)
        ]
        client = DBOSClient(system_database_url=url, dbos_system_schema=schema)
        try:
            for log in logs:
                wait_for_line(log, "started")
            options: EnqueueOptions = {"queue_name": "bench", "workflow_name": "dbos_noop_chain",
                                       "app_version": "bench"}
            t0 = time.time()
            with ThreadPoolExecutor(CLIENT_THREADS) as pool:
                handles = list(pool.map(lambda _: client.enqueue(options, args.steps),
                                        range(args.runs)))
            enqueue_s = time.time() - t0
            for h in handles:
                h.get_result()
            statuses = client.list_workflows(workflow_ids=[h.workflow_id for h in handles])
        finally:
            stop_all(procs)
            client.destroy()
    assert all(s.status == "SUCCESS" for s in statuses)
    latencies = [(s.updated_at - s.created_at) / 1000 for s in statuses
                 if s.updated_at is not None and s.created_at is not None]
    seconds = max(s.updated_at or 0 for s in statuses) / 1000 - t0
    return Trial("dbos", workers, args.runs * args.steps / seconds,
                 percentile(latencies, 0.5), percentile(latencies, 0.99), seconds,
                 args.runs / enqueue_s)


# -- takeover latency -----------------------------------------------------------------------
def takeover_latency(url: str, args: argparse.Namespace, tmp: Path) -> list[float]:
    from bench_workflows import endless_units
    from engine import Engine, Settings

    lease, heartbeat = args.lease, args.lease / 4
    out: list[float] = []
    with scratch_schema(url) as schema:
        store_url = f"{url}?schema={schema}"
        engine = Engine(Settings(database_url=store_url, worker_id="bench-client"))
        run_id = engine.start(endless_units, {"unit_ms": 20})
        flags = ["--lease", str(lease), "--heartbeat", str(heartbeat), "--poll", str(args.poll),
                 "--concurrency", "1"]
        serial = 0

        def worker() -> tuple[str, subprocess.Popen[bytes]]:
            nonlocal serial
            serial += 1
            name = f"tk{serial}"
            log = tmp / f"{name}.log"
            proc = spawn([sys.executable, "-m", "stepstone", "worker", "--db", store_url,
                          "--import", "bench_workflows", *flags], log,
                         # Killing the same run's worker again and again is the point here:
                         # no crash-loop parking.
                         {"STEPSTONE_WORKER_ID": name, "STEPSTONE_MAX_TAKEOVERS": "1000000"})
            wait_for_line(log, "started")
            return name, proc

        procs = dict([worker(), worker()])
        try:
            for _ in range(args.kills):
                version = engine.status(run_id).version
                while engine.status(run_id).version < version + 3:  # the run is moving
                    time.sleep(0.02)
                row = engine.leases.row(run_id)
                assert row is not None
                assert row.lease_owner in procs, row
                before = len(engine.history(run_id))
                victim = row.lease_owner
                procs[victim].kill()
                killed_at = time.time()
                procs[victim].wait()
                del procs[victim]
                name, proc = worker()
                procs[name] = proc
                while True:
                    resumed = [e for e in engine.history(run_id)[before:]
                               if e.event_type == "RunResumed"]
                    if resumed:
                        out.append(resumed[0].timestamp.timestamp() - killed_at)
                        break
                    time.sleep(0.02)
        finally:
            stop_all(list(procs.values()))
            engine.close()
    return out


# -- report -----------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--workers", default="1,2,4")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--poll", type=float, default=0.1, help="idle poll interval, both systems")
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--lease", type=float, default=2.0, help="lease for the takeover test")
    p.add_argument("--postgres-url", default=os.environ.get("STEPSTONE_TEST_POSTGRES_URL",
                                                             DEFAULT_PG_URL))
    p.add_argument("--no-dbos", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import tempfile

    args = parse_args(argv)
    url = args.postgres_url
    counts = [int(w) for w in args.workers.split(",")]
    version = None if args.no_dbos else dbos_version()
    print(f"{args.runs} runs x {args.steps} no-op steps on PostgreSQL, {args.concurrency} "
          f"runs at once per worker process, idle poll {args.poll}s; DBOS: "
          f"{version or 'not installed'}")
    header = (f"{'workers':>7}  {'system':<10} {'steps/s':>9} {'p50 s':>7} {'p99 s':>7} "
              f"{'wall s':>7} {'enq/s':>7}  {'ratio':>6}")
    print(header)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for n in counts:
            ours = stepstone_trial(url, n, args, tmp)
            rows = [ours]
            if version:
                rows.append(dbos_trial(url, n, args, tmp))
            for t in rows:
                ratio = t.steps_per_s / rows[-1].steps_per_s if len(rows) > 1 else float("nan")
                label = f"{ratio:5.2f}x" if t.system == "stepstone" and len(rows) > 1 else ""
                print(f"{t.workers:>7}  {t.system:<10} {t.steps_per_s:>9,.0f} {t.p50_s:>7.3f} "
                      f"{t.p99_s:>7.3f} {t.seconds:>7.1f} {t.enqueues_per_s:>7,.0f}  {label:>6}",
                      flush=True)
        if args.kills:
            lat = takeover_latency(url, args, tmp)
            bound = args.lease + args.poll
            print(f"takeover after kill -9 ({len(lat)} kills, lease {args.lease}s, heartbeat "
                  f"{args.lease / 4}s, poll {args.poll}s): p50 {percentile(lat, 0.5):.2f}s, "
                  f"p99 {percentile(lat, 0.99):.2f}s, max {max(lat):.2f}s; bound lease + poll "
                  f"= {bound:.2f}s")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--dbos-worker":
        dbos_worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
        sys.exit(0)
    sys.exit(main())

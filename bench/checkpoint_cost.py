"""What a checkpoint costs, plain and with the options a resume validates, next to the raw
commit rate of the same database.

One step checkpoints N times (each one committed: `checkpoint_min_interval_s = 0`) in four
shapes: plain `ctx.checkpoint(state)`; with `source=file_fingerprint(path)` (one `stat`); with
a source and 10 effect keys; and, with `--before-src DIR`, plain under another release's
`src` (say the commit before versioned checkpoints, unpacked with `git archive`), run in a
child process in the same session, alternating with this tree's runs. It prints checkpoints/s
(best / median of `--repeat` runs), each as a share of the database's raw rate (one single-row
INSERT per commit), and the stored bytes per checkpoint event. Last, the resume of a step
whose line holds N checkpoints with effects: how long reading and verifying them takes.

    python bench/checkpoint_cost.py [--checkpoints N] [--repeat K] [--before-src DIR]
                                    [--postgres-url URL] [--skip-postgres]
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, cast

import orjson

from engine import Engine, RunStatus, Settings, step, step_context, workflow
from steps_per_second import DEFAULT_PG_URL, Rate, Scratch, raw_postgres, raw_sqlite, share

MODES = ("plain", "source", "effects")
HOOK: dict[str, Any] = {"engine": None}


@step
def loop(n: int, mode: str, path: str, stop_at: int) -> int:
    ctx = step_context()
    start = ctx.last_checkpoint["offset"] if ctx.last_checkpoint else 0
    for i in range(start, n):
        if i + 1 == stop_at and HOOK["engine"] is not None:
            HOOK["engine"].preempt("bench: stop before the last checkpoint")
        if mode == "plain":
            ctx.checkpoint({"offset": i + 1})
            continue
        from engine import file_fingerprint  # not in releases before versioned checkpoints

        keys = [f"row-{i}-{j}" for j in range(10)] if mode == "effects" else []
        ctx.checkpoint({"offset": i + 1}, source=file_fingerprint(path), effects=keys)
    return n


def all_present(keys: list[str], *args: Any) -> list[str]:
    return []


@workflow("bench_checkpoints")
def checkpoints_wf(n: int, mode: str, path: str, stop_at: int = 0) -> int:
    return loop(n, mode, path, stop_at)


def one_run(url: str, n: int, mode: str, path: str) -> tuple[float, float]:
    """(checkpoints/s, stored bytes per checkpoint event) of one fresh run."""
    with Engine(Settings(database_url=url)) as engine:
        engine.run(checkpoints_wf, {"n": 1, "mode": mode, "path": path})  # warm-up
        start = time.perf_counter()
        run_id = engine.run(checkpoints_wf, {"n": n, "mode": mode, "path": path}).run_id
        rate = n / (time.perf_counter() - start)
        sizes = [len(r.state) for r in engine.store.reader.iter_run(run_id)
                 if r.topic.endswith(":StepCheckpointed")]
    return rate, sum(sizes) / len(sizes)


def resume_check(url: str, n: int, path: str) -> tuple[float, int]:
    """Seconds a resume spends validating a line of `n` checkpoints with 10 keys each."""
    from engine.checkpoints import resume_state  # noqa: F401  (this tree only)

    checked = step(name="loop", verify_effects=all_present)(loop.fn)

    @workflow("bench_checkpoints_verified")
    def verified(n: int, mode: str, path: str, stop_at: int = 0) -> int:
        return checked(n, mode, path, stop_at)

    with Engine(Settings(database_url=url)) as engine:
        HOOK["engine"] = engine
        given = {"n": n, "mode": "effects", "path": path, "stop_at": n}
        first = engine.run(verified, given, key="resume")
        HOOK["engine"] = None
        engine.token.clear()
        assert first.status is RunStatus.PREEMPTED
        start = time.perf_counter()
        done = engine.run(verified, given, key="resume")
        seconds = time.perf_counter() - start
        assert done.status is RunStatus.COMPLETED
        checks = [e for e in engine.history(done.run_id) if e.event_type == "CheckpointValidated"]
    return seconds, len(checks)


def cpu_cost(n: int) -> float:
    """Microseconds of a plain checkpoint in process, without the commit: the driver's
    checkpoint, the aggregate's command and fold, the event's hash and its encoding (a saver
    that encodes the pending events and drops them), best of 5 rounds of `n`."""
    from engine.aggregate import WorkflowRun
    from engine.codec import OrjsonTranscoder, PydanticMapper
    from engine.context import StepContext
    from engine.driver import RunDriver, utc_now
    from engine.preemption import PreemptionToken

    mapper = PydanticMapper(transcoder=OrjsonTranscoder())
    run = WorkflowRun.start(uuid.uuid4(), at=utc_now(), worker="w", workflow="cpu",
                            workflow_version=1, entrypoint="m:f", code_fingerprint="f",
                            input={}, input_digest="d", idempotency_key=None)
    run.start_step("loop#0", "loop", 1, at=utc_now(), worker="w")

    def encode(r: WorkflowRun) -> None:
        for event in r.collect_events():
            mapper.to_stored_event(event)

    driver = RunDriver(cast(Any, None), run, checkpoints_wf, worker_id="w",
                       token=PreemptionToken(), saver=encode, observers=())
    ctx = StepContext(run_id=run.id, step_key="loop#0", attempt=1, last_checkpoint=None,
                      checkpoint_sequence=0, sink=driver)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for i in range(n):
            driver.checkpoint(ctx, {"offset": i + 1}, None, None)
        best = min(best, (time.perf_counter() - start) / n)
    return best * 1e6


def before_run(src: Path, args: list[str]) -> Any:
    """This script under another release's sources, in a child process: its last line."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src / "src"),
                                                        str(Path(__file__).parent)])}
    out = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True,
                         text=True, check=True).stdout
    return orjson.loads(out.strip().splitlines()[-1])


def measure(label: str, urls: Any, raw: Rate, args: argparse.Namespace, path: str) -> None:
    rates = {m: Rate() for m in MODES}
    sizes: dict[str, float] = {}
    before, before_size = Rate(), 0.0
    shapes = ["before", *MODES] if args.before_src else list(MODES)
    for round_ in range(args.repeat):
        # The order turns each round, so no shape always runs first (cold) or last.
        for mode in shapes[round_ % len(shapes):] + shapes[: round_ % len(shapes)]:
            if mode == "before":
                r, before_size = before_run(args.before_src, [
                    "--child", urls(), "--checkpoints", str(args.checkpoints), "--path", path])
                before.samples.append(r)
            else:
                r, sizes[mode] = one_run(urls(), args.checkpoints, mode, path)
                rates[mode].samples.append(r)
    print(f"\n{label}: raw single-row commits/s (best / median) {raw.cell()}")
    print(f"  {'checkpoint':<34} {'per s (best / median)':>22} {'of raw':>11} {'bytes':>6}")
    rows = [("plain, before (" + args.before_src.name + ")", before, before_size)
            ] if args.before_src else []
    rows += [("plain", rates["plain"], sizes["plain"]),
             ("source=file_fingerprint", rates["source"], sizes["source"]),
             ("source + 10 effect keys", rates["effects"], sizes["effects"])]
    for name, rate, size in rows:
        print(f"  {name:<34} {rate.cell():>22} {share(rate, raw):>11} {size:>6.0f}")
    seconds, checks = resume_check(urls(), args.checkpoints, path)
    print(f"  resume validating {args.checkpoints} checkpoints x 10 keys: {seconds * 1000:.0f} ms "
          f"({args.checkpoints / seconds:,.0f} checkpoints read and verified/s; "
          f"{checks} CheckpointValidated)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--checkpoints", type=int, default=2000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--before-src", type=Path, default=None)
    p.add_argument("--postgres-url", default=DEFAULT_PG_URL)
    p.add_argument("--skip-postgres", action="store_true")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--path", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-cpu", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("stepstone").setLevel(logging.WARNING)
    if args.child:  # a plain run for --before-src, under whatever `engine` is importable
        print(orjson.dumps(one_run(args.child, args.checkpoints, "plain", args.path)).decode())
        return 0
    if args.child_cpu:
        print(orjson.dumps(cpu_cost(20_000)).decode())
        return 0
    print("in process, no commit: a plain checkpoint (driver, aggregate, hash, encoding), "
          "best of 5 x 20,000, alternating")
    for _ in range(3):
        if args.before_src:
            before_us = before_run(args.before_src, ["--child-cpu"])
            print(f"  before ({args.before_src.name}) {before_us:.1f} us", end="")
        print(f"  after {cpu_cost(20_000):.1f} us")
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "input.csv")
        Path(path).write_text("id,value\n" * 1000)
        raw = raw_sqlite(Path(tmp) / "raw.db", args.checkpoints, args.repeat, explicit=False)
        measure("SQLite", lambda: f"sqlite:///{Path(tmp) / uuid.uuid4().hex}.db", raw, args,
                path)
        if not args.skip_postgres:
            scratch = Scratch(args.postgres_url)
            try:
                raw = raw_postgres(args.postgres_url, scratch.schema("raw"), args.checkpoints,
                                   args.repeat, explicit=False)
                measure("PostgreSQL", lambda: scratch.store_url(uuid.uuid4().hex[:6]), raw,
                        args, path)
            finally:
                scratch.drop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())

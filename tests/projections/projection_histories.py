"""Run histories built straight through the engine's aggregate, and views read back as rows.

`RunSim` records what the engine's driver would: it only offers the commands valid in the
run's state (a checkpoint needs a step in flight, a crash leaves an attempt without an end
that the next resume starts again, ...), so every history is one the engine could write.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from conftest import scratch_schema
from engine import events as ev
from engine.aggregate import WorkflowRun
from engine.storage import parse_store_url
from engine.store import RunStore
from projections import Projector

T0 = datetime(2026, 1, 1, tzinfo=UTC)
COMMANDS = ("step", "checkpoint", "complete", "fail", "fail_for_good", "crash", "preempt",
            "resume", "finish", "fail_run", "cancel")


class RunSim:
    """One run, driven by explicit commands the way the engine's driver would record them."""

    def __init__(self, run_id: uuid.UUID, workflow: str, clock: datetime) -> None:
        self.clock = clock
        self.worker = "w0"
        self.run = WorkflowRun.start(
            run_id, at=self._tick(1), worker=self.worker, workflow=workflow,
            workflow_version=1, entrypoint="tests:wf", code_fingerprint="f", input={},
            input_digest="d", idempotency_key=None,
        )
        self.steps = 0
        self.open: tuple[str, str, int] | None = None  # step in flight: key, name, attempt
        self.pending: tuple[str, str, int] | None = None  # to start again: crashed, failed...
        self.crashed = False
        self.preempted = False
        self.terminal = False
        self.checkpoints = 0

    def _tick(self, ms: int) -> datetime:
        self.clock += timedelta(milliseconds=ms)
        return self.clock

    def _record(self, command: str, ms: int, *args: Any, **fields: Any) -> None:
        """Call the run's command named `command`, `ms` after the previous event."""
        getattr(self.run, command)(*args, at=self._tick(ms), worker=self.worker, **fields)

    def valid(self) -> list[str]:
        if self.terminal:
            return []
        if self.crashed or self.preempted:
            return ["resume"]
        if self.open is not None:
            return ["checkpoint", "complete", "fail", "fail_for_good", "crash", "preempt"]
        if self.pending is not None:
            return ["resume", "fail_run", "cancel"]
        return ["step", "finish", "fail_run", "cancel", "preempt"]

    def do(self, command: str, rng: random.Random) -> None:
        assert command in self.valid(), (command, self.valid())
        ms = rng.randint(1, 400)
        if command == "step":
            name = rng.choice(["extract", "load", "report"])
            key = f"{name}#{self.steps}"
            self.steps += 1
            self._start(key, name, 1, ms)
        elif command == "checkpoint":
            assert self.open is not None
            key, _, attempt = self.open
            self.checkpoints += 1
            total = rng.choice([None, 10, 100])
            done = None if total is None else rng.randint(0, total)
            self._record("checkpoint_step", ms, key, attempt, self.checkpoints,
                         {"at": self.checkpoints}, done, total)
        elif command == "complete":
            assert self.open is not None
            key, _, attempt = self.open
            self._record("complete_step", ms, key, attempt, attempt, ms / 1000)
            self.open = None
        elif command in ("fail", "fail_for_good"):
            assert self.open is not None
            key, _, attempt = self.open
            retryable = command == "fail"
            self._record("fail_step", ms, key, attempt, "ConnectionError", f"try {attempt}",
                         retryable=retryable,
                         next_attempt_at=self.clock + timedelta(seconds=1) if retryable else None,
                         duration_s=ms / 1000)
            self.pending = self.open if retryable else None
            self.open = None
        elif command == "crash":
            self.pending, self.open, self.crashed = self.open, None, True
            self.worker = f"w{int(self.worker[1:]) + 1}"
        elif command == "preempt":
            if self.open is not None:
                key, _, attempt = self.open
                self._record("preempt_step", ms, key, attempt, self.checkpoints, "SIGTERM")
                self.pending, self.open = self.open, None
            self._record("preempt", 1, "SIGTERM")
            self.preempted = True
        elif command == "resume":
            reason = ("crash_recovery" if self.crashed else
                      "after_preemption" if self.preempted else "retry_due")
            self._record("resume", ms, ev.ResumeReason(reason))
            self.crashed = self.preempted = False
            if self.pending is not None:
                key, name, attempt = self.pending
                self.pending = None
                self._start(key, name, attempt + 1, 1)
        elif command == "finish":
            self._record("complete", ms, {"steps": self.steps})
            self.terminal = True
        elif command == "fail_run":
            self._record("fail", ms, "StepFailedError", "gave up", None)
            self.terminal = True
        elif command == "cancel":
            self._record("cancel", ms, "operator", "not needed")
            self.terminal = True

    def _start(self, key: str, name: str, attempt: int, ms: int) -> None:
        self._record("start_step", ms, key, name, attempt)
        self.open = (key, name, attempt)


def random_runs(store: RunStore, n_runs: int, commands: int, seed: int) -> list[RunSim]:
    """`n_runs` runs of random valid commands, saved together (tests that need bulk logs)."""
    rng = random.Random(seed)
    sims = [RunSim(uuid.UUID(int=rng.getrandbits(128), version=4),
                   rng.choice(["ingest", "report"]), T0) for _ in range(n_runs)]
    ends = {"finish", "fail_run", "cancel"}
    for sim in sims:
        for n in range(commands):
            options = sim.valid()
            if not options:
                break
            # Runs end at their last command, or now and then early.
            going_on = [o for o in options if o not in ends]
            if n < commands - 1 and going_on and rng.random() < 0.97:
                options = going_on
            sim.do(rng.choice(options), rng)
    for i in range(0, len(sims), 50):
        store.save(*(s.run for s in sims[i : i + 50]))
    return sims


def view_rows(projector: Projector) -> dict[str, list[tuple[Any, ...]]]:
    """Every table of every view (private ones too), row for row, in key order."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    with projector.db.transaction() as tx:
        for view in projector.views:
            for table in view.bound:
                order = ", ".join(table.spec.key)
                rows = tx.fetch(f"SELECT * FROM {table.qname} ORDER BY {order}")
                out[table.name] = [tuple(r) for r in rows]
    return out


@contextmanager
def scratch_store(kind: str, tmp: Path, postgres_url: str) -> Iterator[str]:
    """A store URL of its own (a file, or a PostgreSQL schema dropped afterwards)."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp / f'{uuid.uuid4().hex}.db'}"
        return
    with scratch_schema(postgres_url) as url:
        yield url


def open_store(url: str) -> RunStore:
    return RunStore(parse_store_url(url), snapshot_interval=0)


class Writer(threading.Thread):
    """Appends `runs` random runs every 10 ms until stopped, as workers would (the log grows
    while a rebuild or a prune runs)."""

    def __init__(self, url: str, *, runs: int, seed: int) -> None:
        super().__init__(daemon=True)
        self.store = open_store(url)
        self.runs = runs
        self.seed = seed
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.saves = 0

    def run(self) -> None:
        try:
            while not self.stop.wait(0.01):
                random_runs(self.store, self.runs, 12, seed=self.seed + self.saves)
                self.saves += 1
        except BaseException as e:
            self.error = e

    def finish(self) -> None:
        self.stop.set()
        self.join(timeout=30)
        assert self.error is None
        self.store.close()

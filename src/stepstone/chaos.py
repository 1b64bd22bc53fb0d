"""The chaos check: interrupt a workflow run again and again, then compare with a clean run.

1. An uninterrupted run on a fresh SQLite store gives the reference output and its duration D
   (first to last event in its log, so interpreter start-up does not count).
2. The checked run is driven by `stepstone run MODULE:WORKFLOW --key K` child processes, as a
   user would run it. Each child is let run until it has written to the log, then for a
   planned share of D/(kills+1), then is sent SIGKILL or SIGTERM; the next child resumes the
   same run (same key). Because the delays add up to less than D, the kills land inside the
   run instead of after it. A last child drives the run to its end.
3. The log then tells which step each kill landed in, which steps ran more than once, and how
   long after each kill the resumed process wrote its first event.
4. Outputs are compared only where they can be. A step that returns a random value (a
   `uuid4()`, a timestamp) makes two correct runs differ, so when the outputs differ a second
   uninterrupted run is made: if it differs from the first too, the output varies by design
   (or the user said so, `output_varies`), and what is checked instead is that the run's
   output is what its own recorded step outputs give (`replay_history`): no step was
   executed twice with its second result silently mixed in, and the body is deterministic.
   Effects outside the log are for an `IdempotencyLedger` in the workflow's own tests.

The plan (signals, shares of the slice) comes from `random.Random(seed)` only, so a seed
replays the same plan; the absolute delays scale with the measured D.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from engine import Engine, EngineError, HistoryEntry, RunStatus, Settings, run_id_for_key
from engine import events as ev

EXIT_PREEMPTED = 75
SIGNALS = ("SIGKILL", "SIGTERM")


class ChaosError(Exception):
    """The check could not be carried out (as opposed to: it ran and found a difference)."""


@dataclass(frozen=True)
class PlannedKill:
    signal: str
    share: float
    """Of the slice D/(kills+1): how long after the child's first write the signal is sent."""


def kill_plan(seed: int, kills: int) -> list[PlannedKill]:
    """The signals and delays for `kills` interruptions, from the seed alone."""
    rng = random.Random(seed)
    plan = [PlannedKill(rng.choice(SIGNALS), round(rng.uniform(0.3, 1.0), 4))
            for _ in range(kills)]
    if kills >= 2 and len({p.signal for p in plan}) == 1:  # always a mix of both
        i = rng.randrange(kills)
        other = SIGNALS[1 - SIGNALS.index(plan[i].signal)]
        plan[i] = PlannedKill(other, plan[i].share)
    return plan


@dataclass
class Kill:
    number: int
    signal: str
    delay_s: float
    sent_at: datetime | None = None
    landed: bool = False
    exit_code: int | None = None
    step: str | None = None
    """The step in flight (not completed) per the log once the process had exited."""
    resume_s: float | None = None
    """From the signal to the first event the next process wrote (None: none before the
    next kill, or the kill did not land)."""
    note: str = ""
    version: int = 0
    """The run's version once the signalled process had exited."""


@dataclass
class ChaosReport:
    workflow: str
    input: dict[str, Any]
    seed: int
    plan: list[PlannedKill]
    reference_duration_s: float
    run_id: UUID
    store: str
    kills: list[Kill] = field(default_factory=list)
    repeated_steps: dict[str, int] = field(default_factory=dict)
    status: str = ""
    output: Any = None
    reference_output: Any = None
    output_varies: bool = False
    """Two uninterrupted runs give different outputs (or the user declared it): outputs are
    not compared, `replayed` is what counts."""
    replayed: bool | None = None
    """The run's output is what its own recorded step outputs give (None: not checked)."""
    replay_problem: str = ""

    @property
    def matched(self) -> bool:
        if self.status != RunStatus.COMPLETED.value:
            return False
        if self.output_varies:
            return self.replayed is True
        return bool(self.output == self.reference_output)

    @property
    def landed(self) -> int:
        return sum(k.landed for k in self.kills)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["matched"] = self.matched
        data["kills_landed"] = self.landed
        return data


class _Children:
    """Starts `stepstone run` children in a working directory of their own, output to files."""

    def __init__(self, base: Path, reference: str, input_json: str, timeout_s: float) -> None:
        self.base = base
        self.reference = reference
        self.input_json = input_json
        self.timeout_s = timeout_s
        self.count = 0
        self.env = dict(os.environ)
        # The workflow's module is imported from where the user ran the check.
        path = [os.getcwd(), *filter(None, self.env.get("PYTHONPATH", "").split(os.pathsep))]
        self.env["PYTHONPATH"] = os.pathsep.join(path)
        self.env["PYTHONUNBUFFERED"] = "1"

    def spawn(self, store: str, key: str, workdir: Path) -> subprocess.Popen[bytes]:
        workdir.mkdir(parents=True, exist_ok=True)
        self.count += 1
        args = [sys.executable, "-m", "stepstone", "run", self.reference,
                "--input", self.input_json, "--key", key, "--db", store]
        with (self.base / f"child-{self.count}.log").open("wb") as log:
            return subprocess.Popen(args, cwd=workdir, env=self.env, stdout=log,
                                    stderr=subprocess.STDOUT)

    def wait(self, proc: subprocess.Popen[bytes]) -> int:
        try:
            return proc.wait(self.timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise ChaosError(
                f"a run process did not finish in {self.timeout_s:.0f}s ({self.tail()}); "
                "raise --timeout if the workflow is that slow"
            ) from None

    def tail(self) -> str:
        """The end of the latest child's output, for error messages."""
        text = (self.base / f"child-{self.count}.log").read_text(errors="replace").strip()
        return text[-800:] or "no output"


def _version(engine: Engine, run_id: UUID) -> int:
    try:
        return engine.status(run_id).version
    except EngineError:  # not started yet
        return 0


def _clean_run(children: _Children, workflow_name: str, base: Path,
               name: str) -> tuple[Any, float]:
    """An uninterrupted run on a fresh store: its output and its duration."""
    ref_store = f"sqlite:///{base / f'{name}.db'}"
    ref_key = f"chaos-{name}-{uuid.uuid4()}"
    rc = children.wait(children.spawn(ref_store, ref_key, base / f"{name}-work"))
    with Engine(Settings(database_url=ref_store, worker_id="chaos-check")) as ref:
        ref_id = run_id_for_key(workflow_name, ref_key)
        if rc != 0 or ref.status(ref_id).status is not RunStatus.COMPLETED:
            raise ChaosError(f"the uninterrupted run did not complete (exit {rc}): "
                             f"{children.tail()}")
        history = ref.history(ref_id)
        duration = (history[-1].timestamp - history[0].timestamp).total_seconds()
        return ref.result(ref_id), duration


def run_chaos(reference: str, workflow_name: str, data: dict[str, Any], input_json: str, *,
              kills: int, seed: int, base: Path, database_url: str | None,
              timeout_s: float, output_varies: bool = False) -> ChaosReport:
    """Carry out the check in `base` (stores, logs, working directories); see the module doc."""
    children = _Children(base, reference, input_json, timeout_s)
    reference_output, duration = _clean_run(children, workflow_name, base, "reference")

    store = database_url or f"sqlite:///{base / 'chaos.db'}"
    key = f"chaos-{uuid.uuid4()}"
    run_id = run_id_for_key(workflow_name, key)
    plan = kill_plan(seed, kills)
    report = ChaosReport(workflow=reference, input=data, seed=seed, plan=plan,
                         reference_duration_s=duration, run_id=run_id, store=store,
                         reference_output=reference_output)
    slice_s = max(duration, 0.001) / (kills + 1)
    work = base / "chaos-work"
    with Engine(Settings(database_url=store, worker_id="chaos-check")) as engine:
        finished = False
        for number, planned in enumerate(plan, 1):
            kill = Kill(number, planned.signal, round(planned.share * slice_s, 4))
            report.kills.append(kill)
            if finished:
                kill.note = "not sent: the run had already finished"
                continue
            finished = _interrupt(engine, children, store, key, run_id, work, kill)
        if not finished:
            rc = children.wait(children.spawn(store, key, work))
            if rc not in (0, 1):
                raise ChaosError(f"the final resume exited with {rc}: {children.tail()}")
        _read_back(engine.history(run_id), report)
        info = engine.status(run_id)
        report.status, report.output = info.status.value, info.output
        if info.status is RunStatus.COMPLETED and (output_varies or
                                                   report.output != reference_output):
            report.output_varies = output_varies or _clean_run(
                children, workflow_name, base, "reference-again")[0] != reference_output
            if report.output_varies:
                _replay(engine, run_id, reference, report)
    return report


def _replay(engine: Engine, run_id: UUID, reference: str, report: ChaosReport) -> None:
    from engine import load_workflow
    from engine.testing import ReplayMismatchError, replay_history

    try:
        replay_history(engine, run_id, load_workflow(reference))
        report.replayed = True
    except (ReplayMismatchError, EngineError) as e:
        report.replayed = False
        report.replay_problem = str(e)


def _interrupt(engine: Engine, children: _Children, store: str, key: str, run_id: UUID,
               work: Path, kill: Kill) -> bool:
    """Start a child, let it write, wait the kill's delay, signal it; True if the run ended."""
    before = _version(engine, run_id)
    proc = children.spawn(store, key, work)
    deadline = time.monotonic() + children.timeout_s
    while _version(engine, run_id) <= before and proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise ChaosError(f"a run process wrote nothing in {children.timeout_s:.0f}s "
                             f"({children.tail()})")
        time.sleep(0.005)
    time.sleep(kill.delay_s)
    if proc.poll() is None:
        kill.sent_at = datetime.now(UTC)
        proc.send_signal(getattr(signal, kill.signal))
    rc = children.wait(proc)
    kill.exit_code = rc
    expected = -signal.SIGKILL if kill.signal == "SIGKILL" else EXIT_PREEMPTED
    kill.landed = kill.sent_at is not None and rc == expected
    info = engine.status(run_id)
    kill.version = info.version
    kill.step = info.current_step
    if not kill.landed:
        if rc not in (0, 1, expected):
            raise ChaosError(f"a run process exited with {rc}: {children.tail()}")
        kill.note = f"missed: the process exited with {rc} ({info.status.value}) first"
    return info.status.is_terminal


def _read_back(history: list[HistoryEntry], report: ChaosReport) -> None:
    """Steps started more than once, and how long each landed kill took to resume."""
    starts = Counter(e.fields["step_key"] for e in history if e.kind is ev.StepStarted)
    report.repeated_steps = {k: n for k, n in starts.items() if n > 1}
    landed = [k for k in report.kills if k.landed and k.sent_at is not None]
    for i, kill in enumerate(landed):
        assert kill.sent_at is not None
        nxt = landed[i + 1].sent_at if i + 1 < len(landed) else None
        first = next((e for e in history if e.version > kill.version), None)
        if first is not None and (nxt is None or first.timestamp < nxt):
            kill.resume_s = round((first.timestamp - kill.sent_at).total_seconds(), 4)

"""The CLI demo killed with SIGKILL at points inside its steps, and stopped with SIGINT: it
resumes to the digest of a run never interrupted."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from uuid import UUID

import pytest

from crashkit import Procs, check_history
from engine import Engine, HistoryEntry
from engine import events as ev
from support import child_env, open_step, wait_until

DEMO_RECORDS = 200_000
DEMO_STEPS = ["generate_dataset#0", "process_records#0", "summarize#0"]
DEMO_CODE = "from stepstone.cli import main; main()"


def demo_args(workdir: Path, db: str) -> list[str]:
    return [
        sys.executable,
        "-c",
        DEMO_CODE,
        "demo",
        "--records",
        str(DEMO_RECORDS),
        "--workdir",
        str(workdir),
        "--db",
        db,
    ]


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


@pytest.fixture(scope="module")
def demo_digest(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The digest of an uninterrupted demo run, in its own workdir and store."""
    base = tmp_path_factory.mktemp("demo-reference")
    done = subprocess.run(
        demo_args(base / "work", f"sqlite:///{base / 'store.db'}"),
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    line = last_line(done.stdout)
    assert line.startswith("result digest: ")
    return line.removeprefix("result digest: ")


def demo_run(engine: Engine) -> UUID | None:
    runs = engine.runs()
    return runs[0].run_id if runs else None


def demo_checkpoint(engine: Engine) -> int:
    """How many records the demo run has checkpointed so far (0 before it exists)."""
    run_id = demo_run(engine)
    if run_id is None:
        return 0
    done = [
        e.fields["progress_done"]
        for e in engine.history(run_id)
        if e.event_type == "StepCheckpointed"
    ]
    return done[-1] if done else 0


def check_demo_history(engine: Engine) -> list[HistoryEntry]:
    run_id = demo_run(engine)
    assert run_id is not None
    entries = engine.history(run_id)
    check_history(entries, DEMO_STEPS, ["RunCompleted"])
    offsets = [e.fields["state"]["offset"] for e in entries if e.event_type == "StepCheckpointed"]
    assert offsets == sorted(offsets)
    assert offsets[-1] == DEMO_RECORDS
    return entries


def test_demo_survives_sigkill_at_random_points(
    engine: Engine, store_url: str, procs: Procs, tmp_path: Path, demo_digest: str
) -> None:
    rng = random.Random(f"demo-{store_url.split(':')[0]}")
    workdir = tmp_path / "demo"
    landed: list[str] = []
    for n in range(3):
        run_id = demo_run(engine)
        before = engine.status(run_id).version if run_id else 0
        saved = demo_checkpoint(engine)
        proc = procs.spawn(demo_args(workdir, store_url))
        # The first kill lands in the first step; the next ones once the checkpointing step
        # saved more records, so a kill also cuts a step that resumes from a checkpoint.
        aim = None if n == 0 else "process_records#0"

        def working(p: subprocess.Popen[bytes] = proc, v: int = before, c: int = saved,
                    step: str | None = aim) -> bool:
            """The runner wrote something and is inside the aimed step, or it exited."""
            run = demo_run(engine)
            if p.poll() is not None:
                return True
            if run is None or engine.status(run).version <= v:
                return False
            current = open_step(engine.history(run))
            if step is None:
                return current is not None
            return current == step and demo_checkpoint(engine) > c

        wait_until(working, "the demo to work inside a step")
        time.sleep(rng.uniform(0.0, 0.3))  # a random point inside the step
        if proc.poll() is not None:
            assert proc.returncode == 0, "\n".join(procs.output(proc))
            break
        if not procs.sigkill(proc):
            break
        run_id = demo_run(engine)
        assert run_id is not None
        step = open_step(engine.history(run_id))
        assert step is not None, "the kill hit no open step"
        landed.append(step)
    final = procs.spawn(demo_args(workdir, store_url))
    assert procs.finish(final) == 0, "\n".join(procs.output(final))
    out, _ = procs.output(final)
    print(f"demo kills landed in: {landed}")
    assert len(landed) >= 2
    assert last_line(out) == f"result digest: {demo_digest}"
    check_demo_history(engine)


def test_demo_sigint_preempts_with_exit_75_and_resumes(
    engine: Engine, store_url: str, procs: Procs, tmp_path: Path, demo_digest: str
) -> None:
    workdir = tmp_path / "demo"
    proc = procs.spawn(demo_args(workdir, store_url))
    wait_until(
        lambda: demo_checkpoint(engine) >= 20_000 or proc.poll() is not None,
        "the demo to checkpoint 20000 records",
    )
    assert proc.poll() is None, "\n".join(procs.output(proc))
    os.kill(proc.pid, signal.SIGINT)
    assert procs.finish(proc) == 75, "\n".join(procs.output(proc))
    _, err = procs.output(proc)
    assert "Resume with" in err
    cut = demo_checkpoint(engine)
    assert 20_000 <= cut < DEMO_RECORDS

    again = procs.spawn(demo_args(workdir, store_url))
    assert procs.finish(again) == 0, "\n".join(procs.output(again))
    out, err = procs.output(again)
    assert "resuming run" in err
    assert last_line(out) == f"result digest: {demo_digest}"
    entries = check_demo_history(engine)
    resumed = [e for e in entries if e.event_type == "StepStarted" and e.fields["attempt"] == 2]
    assert [e.fields["step_key"] for e in resumed] == ["process_records#0"]


def test_demo_restarts_its_step_when_the_input_file_changed(
    engine: Engine, store_url: str, procs: Procs, tmp_path: Path
) -> None:
    """The demo's checkpoints carry its input file's fingerprint: edited between an interrupt
    and the resume, the file is processed again from the top, and the digest is a clean run's
    over the edited file, not a mix of the two."""
    workdir = tmp_path / "demo"
    proc = procs.spawn(demo_args(workdir, store_url))
    wait_until(lambda: demo_checkpoint(engine) >= 20_000 or proc.poll() is not None,
               "the demo to checkpoint 20000 records")
    assert proc.poll() is None, "\n".join(procs.output(proc))
    os.kill(proc.pid, signal.SIGINT)
    assert procs.finish(proc) == 75, "\n".join(procs.output(proc))
    [dataset] = workdir.glob("input-*.csv")
    lines = dataset.read_text().splitlines(keepends=True)
    rid, account, currency, amount, day = lines[1].split(",")
    lines[1] = ",".join([rid, account, "USD" if currency != "USD" else "EUR", amount, day])
    dataset.write_text("".join(lines))

    again = procs.spawn(demo_args(workdir, store_url))
    assert procs.finish(again) == 0, "\n".join(procs.output(again))

    run_id = demo_run(engine)
    assert run_id is not None
    [check] = [e.fields for e in engine.history(run_id) if e.kind is ev.CheckpointValidated]
    assert check["outcome"] == "restarted"
    assert check["source"]["ref"] == str(dataset.resolve())
    clean = tmp_path / "clean"
    (clean / "demo").mkdir(parents=True)
    (clean / "demo" / dataset.name).write_text("".join(lines))
    reference = procs.spawn(demo_args(clean / "demo", f"sqlite:///{clean / 'store.db'}"))
    assert procs.finish(reference) == 0, "\n".join(procs.output(reference))
    assert last_line(procs.output(again)[0]) == last_line(procs.output(reference)[0])

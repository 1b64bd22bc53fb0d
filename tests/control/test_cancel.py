"""Cancel, from another process, a run driven anywhere: mid-step, between steps, sleeping,
pending, held by a worker, fanned out; and every way of asking wrongly (exit 2, nothing
written). Both stores, real processes."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

from controlkit import (
    check_cancelled,
    checkpoints,
    cli,
    effects,
    engine_for,
    run_args,
    wait_for_run,
)

from engine import RunStatus, run_id_for_key
from engine.workers.leases import DONE
from support import ledger_path, wait_until

EXIT_STOPPED = 4
POLL_S = 1.0  # Settings.cancel_poll_s, the holder's default


def _cancel_a_live_holder(store_url: str, procs: Any, tmp_path: Path, workflow: str,
                          data: dict[str, Any], ready: Any) -> tuple[UUID, list[Any], float]:
    """Start `workflow` in a `stepstone run` process, cancel it once `ready(engine, run_id)`,
    and check the process stops within one checkpoint interval + 2 s."""
    key = f"k-{uuid4()}"
    proc = procs.spawn(run_args(store_url, workflow, data, "--key", key))
    run_id = run_id_for_key(workflow, key)
    with engine_for(store_url) as engine:
        wait_for_run(procs, proc, lambda: ready(engine, run_id), "the run under way")
        outcome = engine.cancel(run_id, reason="not needed any more")
        asked = time.monotonic()
        assert outcome.holder is not None  # a live process holds it: it records the cancel
        assert not outcome.status.is_terminal
        rc = procs.finish(proc, timeout=30)
        stopped_in = time.monotonic() - asked
        out, err = procs.output(proc)
        assert rc == EXIT_STOPPED, (out, err)
        assert "cancelled" in err
        interval = data.get("pause_ms", 0) / 1000
        assert stopped_in < interval + 2.0, f"the holder took {stopped_in:.2f}s to stop"
        history = check_cancelled(engine, run_id, "not needed any more")
        assert engine.placement(run_id).state == DONE  # out of the runnable index
        return run_id, history, history[-1].timestamp.timestamp()


def test_a_run_is_cancelled_mid_step_with_its_progress_saved(
    store_url: str, procs: Any, tmp_path: Path
) -> None:
    db = ledger_path(store_url, tmp_path)
    data = {"db": db, "chunks": 10_000, "pause_ms": 20}
    _, history, cancelled_at = _cancel_a_live_holder(
        store_url, procs, tmp_path, "chunked", data,
        lambda e, rid: checkpoints(e, rid) >= 3,
    )
    assert [e.event_type for e in history[-2:]] == ["StepPreempted", "RunCancelled"]
    saved = max(e.fields["sequence"] for e in history if e.event_type == "StepCheckpointed")
    done = effects(db)
    assert done
    assert max(at for _, _, at in done) <= cancelled_at
    assert len(done) == saved  # every effect is covered by the checkpoint the cancel saved


def test_a_run_is_cancelled_between_steps(store_url: str, procs: Any, tmp_path: Path) -> None:
    db = ledger_path(store_url, tmp_path)
    data = {"db": db, "steps": 10_000, "pause_ms": 20}

    def some_steps_done(engine: Any, run_id: UUID) -> bool:
        try:
            return engine.status(run_id).steps_completed >= 3
        except Exception:
            return False

    _, history, cancelled_at = _cancel_a_live_holder(
        store_url, procs, tmp_path, "many_steps", data, some_steps_done
    )
    assert history[-2].event_type == "StepCompleted"  # stopped at a boundary
    completed = sum(1 for e in history if e.event_type == "StepCompleted")
    done = effects(db)
    assert max(at for _, _, at in done) <= cancelled_at
    assert len(done) == completed


def test_a_fan_out_is_cancelled_in_every_branch(
    store_url: str, procs: Any, tmp_path: Path
) -> None:
    db = ledger_path(store_url, tmp_path)
    data = {"db": db, "branches": 3, "chunks": 10_000, "pause_ms": 20}
    _, history, cancelled_at = _cancel_a_live_holder(
        store_url, procs, tmp_path, "fan_out", data,
        lambda e, rid: checkpoints(e, rid) >= 6,
    )
    preempted = {e.fields["step_key"] for e in history if e.event_type == "StepPreempted"}
    assert preempted == {f"copy_chunks#{i}" for i in range(3)}
    assert max(at for _, _, at in effects(db)) <= cancelled_at


def test_a_sleeping_run_is_cancelled_in_its_holder(
    store_url: str, procs: Any, tmp_path: Path
) -> None:
    def waiting(engine: Any, run_id: UUID) -> bool:
        try:
            return engine.status(run_id).status is RunStatus.WAITING
        except Exception:
            return False

    _, history, _ = _cancel_a_live_holder(
        store_url, procs, tmp_path, "napper", {"seconds": 3600}, waiting
    )
    assert [e.event_type for e in history[-2:]] == ["TimerStarted", "RunCancelled"]


def test_a_pending_run_and_a_suspended_one_are_cancelled_at_once(store_url: str) -> None:
    import controlwf

    with engine_for(store_url) as engine:
        pending = engine.start(controlwf.napper, {"seconds": 3600})
        outcome = engine.cancel(pending, reason="changed my mind")
        assert outcome.status is RunStatus.CANCELLED
        assert outcome.holder is None
        check_cancelled(engine, pending, "changed my mind")
        assert [e.event_type for e in engine.history(pending)] == ["RunStarted", "RunCancelled"]
        assert engine.placement(pending).state == DONE
        # A run a worker handed back while it sleeps: nobody holds it, so cancelled here.
        waiting = engine.start(controlwf.napper, {"seconds": 3600})
        claim = engine.leases.claim_run(waiting, engine.settings.worker_id, 30,
                                        workflow="napper", queue="default")
        assert claim is None
        engine.drive_claimed(waiting, since=time.monotonic(), suspend_after_s=1.0)
        assert engine.status(waiting).status is RunStatus.WAITING
        engine.cancel(waiting, reason="no need to wake")
        history = check_cancelled(engine, waiting, "no need to wake")
        assert history[-2].event_type == "TimerStarted"


def test_a_run_held_by_a_worker_on_postgres_is_cancelled(
    pg_schema: str, procs: Any, tmp_path: Path
) -> None:
    import controlwf

    db = ledger_path(pg_schema, tmp_path)
    worker = procs.spawn([sys.executable, "-m", "stepstone", "worker", "--db", pg_schema,
                          "--import", "controlwf", "--heartbeat", "0.5", "--lease", "5"])
    with engine_for(pg_schema) as engine:
        run_id = engine.start(controlwf.chunked, {"db": db, "chunks": 10_000, "pause_ms": 20})
        wait_until(lambda: checkpoints(engine, run_id) >= 3, "the worker to drive the run")
        outcome = engine.cancel(run_id, reason="stop the batch", wait_s=5.0)
        assert outcome.status is RunStatus.CANCELLED  # the worker recorded it within 5 s
        history = check_cancelled(engine, run_id, "stop the batch")
        assert history[-1].worker_id != "control-test/cancel"  # the worker wrote it
        assert max(at for _, _, at in effects(db)) <= history[-1].timestamp.timestamp()
        # The worker goes on serving other runs.
        other = engine.start(controlwf.chunked, {"db": db, "chunks": 2, "pause_ms": 1})
        assert engine.wait(other, timeout_s=30).status is RunStatus.COMPLETED
    worker.send_signal(signal.SIGTERM)
    assert procs.finish(worker, timeout=60) == 0


def test_a_cancelled_run_resumes_only_by_force(store_url: str, tmp_path: Path) -> None:
    import controlwf

    db = ledger_path(store_url, tmp_path)
    with engine_for(store_url) as engine:
        run_id = engine.start(controlwf.chunked, {"db": db, "chunks": 3, "pause_ms": 1})
        engine.cancel(run_id, reason="too early")
    refused = cli("resume", str(run_id), "--db", store_url)
    assert refused.returncode == 2, refused.stderr
    assert "resume --force" in refused.stderr
    forced = cli("resume", "--force", str(run_id), "--db", store_url)
    assert forced.returncode == 0, forced.stderr
    with engine_for(store_url) as engine:
        assert engine.status(run_id).status is RunStatus.COMPLETED
        kinds = [(e.event_type, e.fields.get("reason")) for e in engine.history(run_id)]
        assert kinds[:3] == [("RunStarted", None), ("RunCancelled", "too early"),
                             ("RunResumed", "forced")]


def _head(store_url: str) -> tuple[int, Any]:
    with engine_for(store_url) as engine:
        rows = engine.store.reader.head()
        return rows, engine.leases.counts()


def test_asking_wrongly_is_one_line_and_exit_2_with_nothing_written(
    store_url: str, procs: Any, tmp_path: Path
) -> None:
    import controlwf

    with engine_for(store_url) as engine:
        done = engine.run(controlwf.napper, {"seconds": 0.01}, key="done").run_id
        engine.start(controlwf.napper, {"seconds": 3600}, key="pending")
    before = _head(store_url)
    cases = [
        ([str(uuid4())], "no run"),
        (["not-a-run-id"], "is not a run id"),
        (["--key", "pending", "--workflow", "chunked"], "no run of workflow 'chunked'"),
        (["--key", "pending"], "name the run"),
        ([str(done), "--key", "x", "--workflow", "napper"], "not both"),
        ([str(done)], "already completed"),
        ([str(done), "--reason", "  "], "--reason must say why"),
    ]
    for args, message in cases:
        r = cli("cancel", *args, "--db", store_url)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1, (args, r.stderr)
        assert message in lines[0], (args, r.stderr)
    assert _head(store_url) == before
    # Twice: the second ask while a live holder has yet to honour the first.
    key = f"k-{uuid4()}"
    proc = procs.spawn(run_args(store_url, "many_steps",
                                {"db": ledger_path(store_url, tmp_path), "steps": 3,
                                 "pause_ms": 8000}, "--key", key))
    run_id = run_id_for_key("many_steps", key)
    with engine_for(store_url) as engine:
        wait_until(lambda: _started_step(engine, run_id), "the first step to start")
        first = cli("cancel", str(run_id), "--wait", "0", "--db", store_url)
        assert first.returncode == 0, first.stderr
        assert "cancel requested" in first.stdout
        version = engine.store.load(run_id).version
        second = cli("cancel", str(run_id), "--db", store_url)
        assert second.returncode == 2, second.stderr
        assert "already requested" in second.stderr
        assert engine.store.load(run_id).version == version
    assert procs.finish(proc, timeout=60) == EXIT_STOPPED


def _started_step(engine: Any, run_id: UUID) -> bool:
    try:
        return bool(engine.store.load(run_id).steps)
    except Exception:
        return False

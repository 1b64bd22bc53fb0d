"""Write the golden logs of this release: `python tests/golden/make_golden.py tests/golden/rN`.

Runs the workflows of `goldenwf` through the engine so the log holds every event type this
release writes, then writes `log.jsonl` (the `stepstone export` format) and `expected.json`
(each run's status, output and state as this release reads them). `test_golden.py` replays
every such directory: a log checked in must replay in every later release, so never
regenerate an existing directory; add a new one for a release that changes events.

The script runs against older releases too (it only uses what exists), which is how the log
of the release before hash chains was made.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).parent))

import goldenwf
from goldenwf import (
    FLAGS,
    basic,
    basic_reordered,
    with_children,
    with_messages,
    with_patch,
    with_sleep,
)

from engine import Engine, Settings
from engine.driver import utc_now


def main(outdir: Path) -> None:
    outdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/golden.db"
        settings = Settings(database_url=url, worker_id="golden-worker", snapshot_interval=0)
        with Engine(settings) as engine:
            runs = make_runs(engine)
            expected = {str(rid): expectation(engine, rid, label) for label, rid in runs}
            lines = export(engine)
    (outdir / "log.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in lines))
    (outdir / "expected.json").write_bytes(
        orjson.dumps(expected, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
    )
    kinds = sorted({r["type"] for r in lines})
    print(f"{len(lines)} events of {len(runs)} runs; event types: {', '.join(kinds)}")


def make_runs(engine: Engine) -> list[tuple[str, Any]]:
    runs: list[tuple[str, Any]] = []
    # Checkpoints, a retried failure, completion.
    FLAGS.update(flaky_failures=1, preempt=False, broken=False)
    runs.append(("completed-with-retry", engine.run(basic, {"n": 3}).run_id))
    # Preempted inside a checkpointed step, then resumed to completion.
    FLAGS.update(preempt=True)
    rid = engine.run(basic, {"n": 4}).run_id
    engine.token.clear()
    engine.resume(rid)
    runs.append(("preempted-then-resumed", rid))
    # A step that fails for good: the run fails.
    FLAGS.update(broken=True)
    failed = engine.run(basic, {"n": 2}).run_id
    FLAGS.update(broken=False)
    runs.append(("failed", failed))
    # Cancelled: by the engine's command where the release has one (r4 on: who, why, when
    # it was asked for), else recorded as the aggregate records events.
    rid = engine.start(basic, {"n": 5})
    if hasattr(engine, "cancel"):
        engine.cancel(rid, reason="cancelled for the golden log", by="golden")
    else:
        run = engine.store.load(rid)
        run.cancel("golden", "cancelled for the golden log", at=utc_now(),
                   worker="golden-worker")
        engine.store.save_run(run)
    runs.append(("cancelled", rid))
    if hasattr(engine, "cancel"):  # deadlines came with cancel (r4): one that passed
        rid = engine.start(basic, {"n": 6}, deadline=timedelta(milliseconds=1))
        time.sleep(0.01)
        engine.resume(rid)
        runs.append(("timed-out", rid))
    if goldenwf.sleep is not None:
        runs.append(("slept", engine.run(with_sleep, {"n": 1}).run_id))
    if goldenwf.patched is not None:
        runs.extend(audit_runs(engine, failed))
    if goldenwf.with_checks is not None:
        runs.extend(checked_runs(engine))
    if goldenwf.receive is not None:
        runs.append(("messages", message_run(engine)))
    if goldenwf.child is not None:
        runs.append(("children", engine.run(with_children, {"n": 2}).run_id))
    return runs


def checked_runs(engine: Engine) -> list[tuple[str, Any]]:
    """Checkpoints with a version, a source and effects; a resume that fell back (an effect
    missing) and one that restarted (the source changed)."""
    out: list[tuple[str, Any]] = []
    for label, change in (("checkpoint-fell-back", {"missing": ["tally-2"]}),
                          ("checkpoint-restarted", {"source": "b"})):
        goldenwf.CHECKS.update(source="a", missing=[])
        FLAGS.update(preempt=True)
        rid = engine.run(goldenwf.with_checks, {"n": 5 if "fell" in label else 6}).run_id
        engine.token.clear()
        goldenwf.CHECKS.update(change)
        engine.resume(rid)
        out.append((label, rid))
    goldenwf.CHECKS.update(source="a", missing=[])
    return out


def message_run(engine: Engine) -> Any:
    """r4: messages and published values (docs/messages.md), the wait as a worker has it."""
    import time

    rid = engine.start(with_messages, {"n": 2})
    engine.send(rid, "ready", {"ok": True}, message_id="ready-1")
    engine.leases.claim_run(rid, engine.settings.worker_id, 30, workflow="golden-messages",
                            queue="default")
    engine.drive_claimed(rid, since=time.monotonic(), suspend_after_s=1.0)  # waits for "go"
    engine.send(rid, "go", "now", message_id="go-1")
    engine.resume(rid)
    return rid


def audit_runs(engine: Engine, failed: Any) -> list[tuple[str, Any]]:
    from engine.audit.fork import fork_run
    from engine.errors import NonDeterminismError

    out: list[tuple[str, Any]] = []
    out.append(("patched", engine.run(with_patch, {"n": 2}).run_id))
    fork = fork_run(engine, failed, "check#0")
    engine.resume(fork)
    out.append(("forked", fork))
    FLAGS.update(preempt=True)
    rid = engine.run(basic, {"n": 4}).run_id
    engine.token.clear()
    with (Engine(engine.settings, workflows=[basic_reordered]) as changed,
          contextlib.suppress(NonDeterminismError)):
        changed.resume(rid)
    out.append(("parked", rid))
    return out


def expectation(engine: Engine, run_id: Any, label: str) -> dict[str, Any]:
    run = engine.store.load(run_id)
    return {
        "label": label,
        "status": run.state.status.value,
        "version": run.version,
        "output": run.state.output,
        "steps": {k: s.status.value for k, s in run.state.steps.items()},
        "state": run.state.model_dump(mode="json"),
    }


def export(engine: Engine) -> list[dict[str, Any]]:
    store = engine.store
    notes = store.recorder.select_notifications(None, 100_000)
    return [
        {"position": n.id, "run_id": str(n.originator_id), "version": n.originator_version,
         "type": n.topic.rpartition(":")[2], "topic": n.topic, "event": orjson.loads(n.state)}
        for n in notes
    ]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/golden/make_golden.py OUTDIR")
    main(Path(sys.argv[1]))

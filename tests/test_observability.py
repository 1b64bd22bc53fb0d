"""Logs that join the event history, OpenTelemetry spans, and a worker's Prometheus metrics."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from engine import Engine, RetryPolicy, RunStatus, step, step_context, workflow
from support import child_env

FAST = RetryPolicy(max_attempts=3, initial_interval_s=0.01, backoff=1.0, jitter=0.0)
calls: Counter[str] = Counter()


@step(retry=FAST)
def shaky(n: int) -> int:
    calls["shaky"] += 1
    if calls["shaky"] == 1:
        raise ConnectionError("first try fails")
    return n


@step
def chunks(total: int) -> int:
    ctx = step_context()
    start = ctx.last_checkpoint or 0
    for i in range(start, total):
        if i == 2 and ctx.attempt == 1:
            stopper[0]("stop at a checkpoint")
        ctx.checkpoint(i + 1, done=i + 1, total=total)
    return total


stopper: list[Any] = [lambda reason: None]


@workflow("obs")
def observed(n: int) -> int:
    return shaky(n) + chunks(4)


def test_logs_join_the_event_history_record_by_record(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    calls.clear()
    stopper[0] = engine.preempt
    caplog.set_level(logging.DEBUG, logger="stepstone")
    run_id = engine.start(observed, {"n": 3})
    assert engine.resume(run_id).status is RunStatus.PREEMPTED
    engine.token.clear()
    stopper[0] = lambda reason: None
    assert engine.resume(run_id).output == 7
    history = engine.history(run_id)
    records = [r for r in caplog.records if r.name == "stepstone.events"]
    by_version = {(r.__dict__["run_id"], r.__dict__["run_version"]): r for r in records}
    assert len(by_version) == len(records)  # one record per event, no duplicates
    for entry in history:
        record = by_version[(str(run_id), entry.version)]
        assert record.__dict__["event"] == entry.event_type
        assert record.__dict__["worker_id"] == entry.worker_id
        assert record.__dict__["workflow"] == "obs"
        if "step_key" in entry.fields:
            assert record.__dict__["step_key"] == entry.fields["step_key"]
        if "attempt" in entry.fields:
            assert record.__dict__["attempt"] == entry.fields["attempt"]
    assert len(records) == len(history)
    kinds = Counter(e.event_type for e in history)
    assert kinds["StepFailed"] == 1
    assert kinds["RunPreempted"] == 1
    # The engine's own records (a failure, a preemption) carry the run too.
    for r in caplog.records:
        if r.name == "stepstone.engine" and str(run_id) in r.getMessage():
            assert r.__dict__["run_id"] == str(run_id)
            assert r.__dict__["run_version"] is not None


def test_json_log_lines_from_the_cli_carry_the_run_fields(tmp_path: Path) -> None:
    env = child_env()
    out = subprocess.run(
        [sys.executable, "-m", "stepstone", "-vv", "run", "cliwf:summing", "--input",
         '{"a": 2}', "--db", f"sqlite:///{tmp_path / 's.db'}", "--log-format", "json"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stderr.splitlines() if line.startswith("{")]
    events = [line for line in lines if line.get("logger") == "stepstone.events"]
    assert events
    for line in events:
        assert {"run_id", "workflow", "run_version", "worker_id", "event", "time",
                "level"} <= line.keys()
    assert [e["run_version"] for e in events] == list(range(1, len(events) + 1))


def test_text_log_lines_name_their_run_and_log_each_failure_once(tmp_path: Path) -> None:
    """A worker's text log interleaves runs: each stepstone line must say which run it is
    about, and a failed attempt or run must be one line, not one from the event and another
    from the driver."""
    tests = Path(__file__).parent
    env = child_env(tests, tests / "api")
    url = f"sqlite:///{tmp_path / 's.db'}"
    lines: list[str] = []
    for target, data in (("apiwf:retrying", '{"name": "t"}'), ("apiwf:failing", '{"row": 3}')):
        out = subprocess.run(
            [sys.executable, "-m", "stepstone", "-v", "run", target, "--input", data, "--db",
             url], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
        lines += [line for line in out.stderr.splitlines() if " stepstone." in line]
    assert lines
    for line in lines:
        assert line.split(": ", 1)[1].startswith("run "), line
    failed = [line for line in lines if "failed" in line.lower() or "Failed" in line]
    # retrying: two failed attempts; failing: one failed attempt, then the run fails.
    assert len([x for x in failed if "StepFailed" in x]) == 3, failed
    assert len([x for x in failed if "RunFailed" in x]) == 1, failed
    assert len(failed) == 4, failed
    assert sum("not retried" in x for x in failed) == 1


_exporters: list[Any] = []


def _span_exporter() -> Any:
    """The process's one tracer provider (OpenTelemetry allows setting it once)."""
    if not _exporters:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        _exporters.append(exporter)
    return _exporters[0]


def test_spans_per_step_attempt_with_run_parent_and_events(engine: Engine) -> None:
    exporter = _span_exporter()
    exporter.clear()
    calls.clear()
    stopper[0] = lambda reason: None
    result = engine.run(observed, {"n": 5})
    assert result.output == 9
    spans = exporter.get_finished_spans()
    runs = [s for s in spans if s.name == "run obs"]
    assert len(runs) == 1
    run_span = runs[0]
    assert run_span.attributes["stepstone.run_id"] == str(result.run_id)
    steps = [s for s in spans if s.name.startswith("step ")]
    assert [(s.name, s.attributes["stepstone.attempt"], s.attributes["stepstone.outcome"])
            for s in steps] == [("step shaky#0", 1, "failed"), ("step shaky#0", 2, "completed"),
                                ("step chunks#0", 1, "completed")]
    for s in steps:
        assert s.parent is not None
        assert s.parent.span_id == run_span.context.span_id
        assert s.context.trace_id == run_span.context.trace_id
    checkpoints = [e for e in steps[2].events if e.name == "checkpoint"]
    assert [e.attributes["stepstone.sequence"] for e in checkpoints] == [1, 2, 3, 4]
    assert steps[0].status.status_code.name == "ERROR"


def test_without_opentelemetry_nothing_is_imported(tmp_path: Path) -> None:
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] == 'opentelemetry': raise ImportError('blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import cliwf\n"
        "from engine import Engine\n"
        f"e = Engine.from_url('sqlite:///{tmp_path / 'x.db'}')\n"
        "r = e.run(cliwf.summing, {'a': 1})\n"
        "assert r.status.value == 'completed', r\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')]\n"
        "print('ok')\n"
    )
    env = child_env()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


def _scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    totals: Counter[str] = Counter()
    for line in text.splitlines():
        if line.startswith("stepstone_") and not line.startswith("#"):
            name_labels, value = line.rsplit(" ", 1)
            name = name_labels.split("{")[0]
            totals[name] += float(value)
    return dict(totals)


def test_worker_metrics_match_the_event_log(store_url: str, tmp_path: Path) -> None:
    import socket

    import workerwf
    from support import wait_until
    from workers.harness import FAST_LEASE, engine_for, ledger_url, wait_all, workers

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db = ledger_url(store_url, tmp_path)
    with engine_for(store_url) as engine:
        ids = [engine.start(workerwf.chaos_chain, {"db": db, "tag": f"m{i}", "steps": 4,
                                                    "pause_ms": 2}) for i in range(5)]
        ids.append(engine.start(workerwf.long_units, {"db": db, "tag": "mu", "count": 6,
                                                       "unit_ms": 5}))
        with workers(store_url, tmp_path, 1, *FAST_LEASE, "--metrics-port", str(port)) as (w,):
            wait_all(engine, ids, 60)
            # The counters move after each save: wait until the last run's end is counted.
            scraped: dict[str, float] = {}

            def counted() -> bool:
                scraped.update(_scrape(port))
                return (scraped.get("stepstone_runs_finished_total") == len(ids)
                        and scraped.get("stepstone_runs_in_flight") == 0)

            wait_until(counted, "the metrics to count every finished run")
            assert w.stop() == 0
        events = Counter(e.event_type for r in ids for e in engine.history(r))
    assert scraped["stepstone_steps_started_total"] == events["StepStarted"]
    assert scraped["stepstone_steps_completed_total"] == events["StepCompleted"]
    assert scraped.get("stepstone_steps_failed_total", 0) == events["StepFailed"]
    assert scraped["stepstone_checkpoints_total"] == events["StepCheckpointed"]
    assert scraped["stepstone_runs_finished_total"] == events["RunCompleted"] + events["RunFailed"]
    assert scraped["stepstone_step_duration_seconds_count"] == (events["StepCompleted"]
                                                                + events["StepFailed"])
    assert scraped["stepstone_runs_in_flight"] == 0


def test_a_sqlite_run_loads_neither_the_postgres_driver_nor_opentelemetry(
    tmp_path: Path,
) -> None:
    """Both installed, neither needed: a run on SQLite never pays for importing them."""
    code = (
        "import sys\n"
        "import cliwf\n"
        "from engine import Engine\n"
        f"e = Engine.from_url('sqlite:///{tmp_path / 'x.db'}')\n"
        "r = e.run(cliwf.summing, {'a': 1})\n"
        "assert r.status.value == 'completed', r\n"
        "print(sorted({m.split('.')[0] for m in sys.modules\n"
        "              if m.split('.')[0] in ('psycopg', 'psycopg_pool', 'opentelemetry')}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=child_env(), timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr

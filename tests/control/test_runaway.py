"""Runaway limits: a step that checkpoints in a loop, or a run that records without end, is
stopped at its cap with an error naming the step and the cap, and its log stops growing."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from controlkit import engine_for

import controlwf
from engine import RunStatus
from support import ledger_path


def test_a_checkpoint_loop_is_stopped_at_its_cap(store_url: str) -> None:
    with engine_for(store_url, max_checkpoints_per_minute=300) as engine:
        t0 = time.monotonic()
        result = engine.run(controlwf.runaway)
        assert time.monotonic() - t0 < 30  # not ten minutes of filling the disk
        assert result.status is RunStatus.FAILED
        assert result.error_type == "RunawayLimitError"
        message = result.error_message or ""
        assert "spin#0" in message
        assert "300" in message
        assert "max_checkpoints_per_minute" in message
        history = engine.history(result.run_id)
        saved = sum(1 for e in history if e.event_type == "StepCheckpointed")
        assert saved == 300  # the cap, and not one more
        assert [e.event_type for e in history[-2:]] == ["StepFailed", "RunFailed"]
        assert history[-2].fields["retryable"] is False  # a bug: retrying would loop again
        version = engine.store.load(result.run_id).version
        time.sleep(0.2)
        assert engine.store.load(result.run_id).version == version  # the log stopped


def test_a_run_is_stopped_at_its_event_cap(store_url: str, tmp_path: Path) -> None:
    with engine_for(store_url, max_events_per_run=100) as engine:
        result = engine.run(controlwf.many_steps, {"db": ledger_path(store_url, tmp_path),
                                                   "steps": 500, "pause_ms": 0})
        assert result.status is RunStatus.FAILED
        assert result.error_type == "RunawayLimitError"
        assert "100 events" in (result.error_message or "")
        assert "max_events_per_run" in (result.error_message or "")
        info: Any = engine.status(result.run_id)
        assert 100 <= info.version <= 102  # the cap, then the run's end
        size = engine.store.reader.size_of(result.run_id)
        assert size[0] == info.version
        assert size[1] > 0


def test_the_default_limits_leave_an_ordinary_run_alone(store_url: str, tmp_path: Path) -> None:
    with engine_for(store_url) as engine:
        result = engine.run(controlwf.chunked, {"db": ledger_path(store_url, tmp_path),
                                                "chunks": 2000, "pause_ms": 0})
        assert (result.status, result.output) == (RunStatus.COMPLETED, 4000)

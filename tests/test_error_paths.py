"""Error paths with real faults: a port that closes, a branch that keeps failing.

(Failed saves and group commits are covered with the store's write path.)
"""

from __future__ import annotations

import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from conftest import POSTGRES_URL
from engine import (
    Engine,
    RetryPolicy,
    RunNotFinishedError,
    RunStatus,
    Settings,
    StepFailedError,
    StoreUnavailableError,
    gather,
    step,
    step_context,
    workflow,
)
from netfault import Relay

calls: Counter[Any] = Counter()
stopper: list[Engine] = []


@step(retry=RetryPolicy(max_attempts=3, initial_interval_s=0.02, backoff=1.0, jitter=0.0))
def part(i: int) -> int:
    calls[i] += 1
    if i == 1 and step_context().attempt == 1:
        raise ConnectionError("flaky once")
    if i == 2:
        raise ValueError("broken for good")
    return i * 10


@step
def compensate() -> str:
    calls["compensate"] += 1
    if calls["compensate"] == 1:
        stopper[0].preempt("stop while compensating")
        step_context().checkpoint(None)
    return "compensated"


@workflow("fan-with-errors")
def fan_with_errors() -> str:
    try:
        return str(gather([part.bind(i) for i in range(3)], limit=1))
    except StepFailedError as e:
        return f"{e.step_key} {e.error_type}: {compensate()}"


def test_a_fan_out_retries_a_branch_and_replays_a_failed_one_from_the_log(
    engine: Engine,
) -> None:
    calls.clear()
    stopper[:] = [engine]
    first = engine.run(fan_with_errors, {})
    assert first.status is RunStatus.PREEMPTED
    assert calls == {0: 1, 1: 2, 2: 3, "compensate": 1}
    attempts = [(h.fields["step_key"], h.fields["attempt"], h.fields["retryable"])
                for h in engine.history(first.run_id) if h.event_type == "StepFailed"]
    assert attempts == [("part#1", 1, True), ("part#2", 1, True), ("part#2", 2, True),
                        ("part#2", 3, False)]
    engine.token.clear()
    second = engine.resume(first.run_id)
    assert second.status is RunStatus.COMPLETED
    assert second.output == "part#2 ValueError: compensated"
    # On resume the gather replayed all three branches, the failed one included, from the
    # log: none ran again; only the unfinished compensation did.
    assert calls == {0: 1, 1: 2, 2: 3, "compensate": 2}


@step
def only() -> int:
    return 1


@workflow("pending-forever")
def pending_forever() -> int:
    return only()


def test_the_result_of_an_unfinished_run_is_run_not_finished_error(engine: Engine) -> None:
    run_id = engine.start(pending_forever, {})
    with pytest.raises(RunNotFinishedError, match=f"run {run_id} is pending; resume it"):
        engine.result(run_id)
    calls.clear()
    stopper[:] = [engine]

    @workflow("stops-halfway")
    def stops() -> str:
        return compensate()

    preempted = engine.run(stops, {}).run_id
    with pytest.raises(RunNotFinishedError, match="is preempted"):
        engine.result(preempted)
    engine.token.clear()
    assert engine.resume(preempted).output == "compensated"
    assert engine.result(preempted) == "compensated"


def _closed_port() -> tuple[socket.socket, int]:
    """A port bound and never listened on: connections to it are refused."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s, s.getsockname()[1]


def test_an_engine_on_a_closed_port_fails_at_once_naming_the_store(tmp_path: Path) -> None:
    holder, port = _closed_port()
    with holder:
        url = f"postgresql://postgres@127.0.0.1:{port}/test"
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailableError, match=f"127.0.0.1:{port}"):
            Engine(Settings(database_url=url, connect_timeout_s=2))
        assert time.monotonic() - t0 < 30


def test_a_store_that_goes_away_fails_loads_clearly_and_comes_back(pg_schema: str) -> None:
    port = int(POSTGRES_URL.split("@", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
    with Relay(port) as relay:
        url = relay.url(pg_schema)
        with Engine(Settings(database_url=url, connect_timeout_s=0.5)) as engine:
            run_id = engine.run(pending_forever, {}).run_id
            relay.cut()  # the connections drop and the port closes
            with pytest.raises(StoreUnavailableError, match=f"127.0.0.1:{relay.port}"):
                engine.status(run_id)
            relay.restore()
            assert engine.result(run_id) == 1  # the next load reconnects

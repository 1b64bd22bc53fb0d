"""A workflow whose step waits at a gate: the test does something while a real process is
inside the step, then opens the gate."""

from __future__ import annotations

import time
from pathlib import Path

from engine import step, workflow


@step
def wait_at(gate: str) -> str:
    Path(gate + ".waiting").write_text("1")
    deadline = time.monotonic() + 60
    while not Path(gate).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the gate {gate} was never opened")
        time.sleep(0.02)
    return "through"


@step
def double(n: int) -> int:
    return 2 * n


@workflow("index-gated")
def gated(gate: str) -> str:
    return wait_at(gate)


@workflow("index-plain")
def plain(n: int) -> int:
    return double(n)

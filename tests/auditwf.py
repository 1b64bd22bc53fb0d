"""Three releases of one workflow, "audit-orders", for the deploy-safety check and parking.

`v1` is the code runs start with; `v2` inserts a step (runs in flight diverge); `v3` makes
the same change behind a patch marker (runs in flight replay the old path). Every step
counts its executions in CALLS, so tests can prove a check executes nothing.
"""

from __future__ import annotations

from collections import Counter

from engine import Preempted, patched, step, workflow

CALLS: Counter[str] = Counter()
STOP_IN_SHIP = {"on": False}


@step
def reserve(order: str) -> str:
    CALLS["reserve"] += 1
    return f"reserved {order}"


@step
def charge(order: str) -> str:
    CALLS["charge"] += 1
    return f"charged {order}"


@step
def fraud_check(order: str) -> bool:
    CALLS["fraud_check"] += 1
    return True


@step
def ship(order: str) -> str:
    CALLS["ship"] += 1
    if STOP_IN_SHIP["on"]:
        raise Preempted("stopped for the test")
    return f"shipped {order}"


@workflow("audit-orders")
def v1(order: str) -> list[str]:
    return [reserve(order), charge(order), ship(order)]


@workflow("audit-orders", version=2)
def v2(order: str) -> list[str]:
    done = [reserve(order)]
    fraud_check(order)  # inserted before charge: runs in flight diverge
    return [*done, charge(order), ship(order)]


@workflow("audit-orders", version=3)
def v3(order: str) -> list[str]:
    done = [reserve(order)]
    if patched("fraud-check"):
        fraud_check(order)
    return [*done, charge(order), ship(order)]

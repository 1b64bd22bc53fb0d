"""The workflows behind the golden logs. Keep them replayable: golden runs are checked
against them (`check_history`) in every later release."""

from __future__ import annotations

from typing import Any

from engine import NonRetryableError, Preempted, RetryPolicy, step, step_context, workflow

try:  # releases before patch markers wrote the older golden logs with this same module
    from engine import patched
except ImportError:  # pragma: no cover - only when regenerating an old release's log
    patched = None  # type: ignore[assignment]
try:  # releases before checkpoints a resume validates
    from engine import function_fingerprint
except ImportError:  # pragma: no cover - only when regenerating an old release's log
    function_fingerprint = None  # type: ignore[assignment]
try:
    from engine.durable import sleep
except ImportError:  # pragma: no cover - releases before durable sleep
    sleep = None  # type: ignore[assignment]
try:
    from engine import ChildFailedError, child, publish, receive
except ImportError:  # pragma: no cover - releases before messages and children (r3)
    publish = receive = child = ChildFailedError = None  # type: ignore[assignment,misc]

FAST = RetryPolicy(max_attempts=3, initial_interval_s=0.0, jitter=0.0)
FLAGS = {"flaky_failures": 0, "preempt": False, "broken": False}
CHECKS: dict[str, Any] = {"source": "a", "missing": []}


@step
def count(n: int) -> int:
    ctx = step_context()
    start = ctx.last_checkpoint or 0
    for i in range(start, n):
        ctx.checkpoint(i + 1, done=i + 1, total=n)
        if FLAGS["preempt"] and i == 1:
            FLAGS["preempt"] = False
            raise Preempted("golden: stopped in a checkpointed step")
    return n


@step(retry=FAST)
def flaky(tag: str) -> str:
    if FLAGS["flaky_failures"]:
        FLAGS["flaky_failures"] -= 1
        raise ConnectionError(f"golden: {tag} failed once")
    return f"{tag} ok"


@step
def check(n: int) -> int:
    if FLAGS["broken"]:
        raise NonRetryableError("golden: check is broken")
    return n * 2


@workflow("golden-basic")
def basic(n: int) -> dict[str, Any]:
    counted = count(n)
    return {"counted": counted, "flaky": flaky("basic"), "checked": check(counted)}


@workflow("golden-patched")
def with_patch(n: int) -> dict[str, Any]:
    counted = count(n)
    extra = flaky("patched") if patched is not None and patched("golden-extra") else None
    return {"counted": counted, "extra": extra}


@workflow("golden-basic")
def basic_reordered(n: int) -> dict[str, Any]:
    """A changed body, to park a golden run: asks for flaky before count."""
    tag = flaky("basic")
    return {"counted": count(n), "flaky": tag, "checked": check(n)}


@workflow("golden-sleep")
def with_sleep(n: int) -> int:
    first = count(n)
    if sleep is not None:
        sleep(0.01)
    return first + count(n + 1)


def golden_source(label: str) -> str:
    """The fingerprint of what `tally` reads: changed by the golden script between drives."""
    return f"{label}:{CHECKS['source']}"


def golden_missing(keys: list[str], n: int) -> list[str]:
    return [k for k in keys if k in CHECKS["missing"]]


with_checks: Any = None
if function_fingerprint is not None:
    @step(checkpoint_version=2, verify_effects=golden_missing)
    def tally(n: int) -> int:
        ctx = step_context()
        start = ctx.last_checkpoint or 0
        for i in range(start, n):
            ctx.checkpoint(i + 1, done=i + 1, total=n,
                           source=function_fingerprint(golden_source, "tally"),
                           effects=[f"tally-{i}"])
            if FLAGS["preempt"] and i == 2:
                FLAGS["preempt"] = False
                raise Preempted("golden: stopped in a validated step")
        return n

    @workflow("golden-checked")
    def with_checks(n: int) -> int:
        return tally(n)
@workflow("golden-messages")
def with_messages(n: int) -> dict[str, Any]:
    """r4: a message taken at once, one waited for, a receive that timed out, two publishes."""
    first = count(n)
    publish("stage", "counted")
    ready = receive("ready")  # sent before the run asked
    go = receive("go")  # sent while the run waited
    late = receive("never", timeout=0.01)  # nobody sends it: None
    publish("stage", "done")
    return {"first": first, "ready": ready, "go": go, "late": late}


@workflow("golden-kid")
def kid(n: int) -> int:
    if n < 0:
        raise ValueError("golden: no kid below zero")
    return check(n)


@workflow("golden-children")
def with_children(n: int) -> dict[str, Any]:
    """r4: a child that completes and one that fails, caught by the parent."""
    done = child(kid, {"n": n})
    try:
        child(kid, {"n": -1})
        failed = None
    except ChildFailedError as e:
        failed = e.status
    return {"done": done, "failed": failed}

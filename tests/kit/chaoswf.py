"""Workflows for the chaos-check tests: one idempotent, one deliberately not.

Side effects go to files relative to the working directory; `stepstone chaos` gives each of
its runs an empty one, so the uninterrupted run and the interrupted one do not share them.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from engine import step, step_context, workflow


@step
def mark(index: int, work_ms: int) -> int:
    """Idempotent: the effect is a file named after the operation id, so a re-run rewrites
    the same file; returns how many marks exist."""
    marks = Path("marks")
    marks.mkdir(exist_ok=True)
    (marks / step_context().operation_id.replace("/", "_")).write_text(str(index))
    time.sleep(work_ms / 1000)
    return len(list(marks.iterdir()))


@step
def units(count: int, unit_ms: int) -> int:
    """Idempotent with checkpoints: one file per unit, resumed from the last checkpoint."""
    ctx = step_context()
    done = Path("units")
    done.mkdir(exist_ok=True)
    for i in range(int(ctx.last_checkpoint or 0), count):
        time.sleep(unit_ms / 1000)
        (done / str(i)).write_text("done")
        ctx.checkpoint(i + 1, done=i + 1, total=count)
    return len(list(done.iterdir()))


@workflow("chaos-idempotent", version=1)
def idempotent(steps: int = 10, work_ms: int = 60, unit_count: int = 10,
               unit_ms: int = 30) -> dict[str, object]:
    counts = [mark(i, work_ms) for i in range(steps // 2)]
    done = units(unit_count, unit_ms)
    counts += [mark(i, work_ms) for i in range(steps // 2, steps)]
    return {"marks": counts, "units": done}


@step
def append_line(index: int, work_ms: int) -> int:
    """NOT idempotent: appends a line with no key, so a re-run after a kill appends again;
    returns the file's line count."""
    lines = Path("lines.txt")
    with lines.open("a") as f:
        f.write(f"{index}\n")
    time.sleep(work_ms / 1000)
    return len(lines.read_text().splitlines())


@workflow("chaos-append", version=1)
def append(steps: int = 10, work_ms: int = 80) -> list[int]:
    return [append_line(i, work_ms) for i in range(steps)]


@step
def new_id(index: int, work_ms: int) -> str:
    """Correct and idempotent, but returns a fresh random id each time it runs."""
    time.sleep(work_ms / 1000)
    return f"{index}-{uuid.uuid4().hex}"


@workflow("chaos-random", version=1)
def random_ids(steps: int = 6, work_ms: int = 60) -> list[str]:
    return [new_id(i, work_ms) for i in range(steps)]


@workflow("chaos-random-body", version=1)
def random_body(steps: int = 6, work_ms: int = 60) -> list[str]:
    """Wrong: a random value drawn in the body, outside any step, differs on every replay."""
    return [new_id(i, work_ms) for i in range(steps)] + [uuid.uuid4().hex]

"""A workflow whose one long step checkpoints with a source, effects and a version.

`sum_file` adds up the integers of an input file (one per line), a chunk at a time; each
chunk upserts one row per line into `cp_rows` of a downstream ledger (keyed by the step's
operation id and the line number, so a chunk written twice is written once), then
checkpoints the running total with the file's fingerprint as its source and the chunk's row
keys as its effects. Its output is `{"sum": ..., "lines": ...}` of the file it read, so a run
that never trusted a stale checkpoint ends with the sum of the file as it is at the end.

`make(...)` builds the workflow with the step's checkpoint options; every variant has the
same names, so a resume can run under other options (a version bump, another policy).
Version 1 checkpoints `{"offset", "total"}`, version 2 `{"pos", "sum"}`.

Driven from a subprocess with (the tests directory on PYTHONPATH):

    python -c "import sys, checkpointwf; sys.exit(checkpointwf.main(sys.argv[1:]))" \
        STORE_URL OPTIONS_JSON INPUT_JSON

which exits 0 when the run completed, 1 when it failed, 75 when it was preempted.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import orjson

from engine import (
    Engine,
    RunStatus,
    Settings,
    Workflow,
    file_fingerprint,
    signals_request_preemption,
    step,
    step_context,
    workflow,
)
from support import Ledger

RUNNER_CODE = "import sys, checkpointwf; sys.exit(checkpointwf.main(sys.argv[1:]))"
KEY = "cp-sum"

_ledgers: dict[str, Ledger] = {}

HOOK: dict[str, Any] = {"engine": None, "preempt_at": None, "seen": 0}
"""In-process tests: preempt `engine` before the step's `preempt_at`-th checkpoint of a drive."""


def ledger_for(db: str) -> Ledger:
    if db not in _ledgers:
        led = Ledger(db)
        led.execute("CREATE TABLE IF NOT EXISTS cp_rows (key TEXT PRIMARY KEY, value INTEGER)")
        led.execute("CREATE TABLE IF NOT EXISTS cp_starts (attempt INTEGER, start INTEGER)")
        _ledgers[db] = led
    return _ledgers[db]


def close_ledgers() -> None:
    while _ledgers:
        _ledgers.popitem()[1].close()


def missing_rows(keys: list[str], path: str, db: str, chunk: int, unit_ms: int) -> list[str]:
    """`verify_effects`: the keys that have no row in the downstream ledger."""
    led = ledger_for(db)
    found: set[str] = set()
    for i in range(0, len(keys), 500):
        part = keys[i : i + 500]
        marks = ",".join("?" * len(part))
        found.update(r[0] for r in led.execute(
            f"SELECT key FROM cp_rows WHERE key IN ({marks})", tuple(part)))
    return [k for k in keys if k not in found]


def upgrade_v1_v2(state: Any, version: int) -> Any:
    assert version == 1
    return {"pos": state["offset"], "sum": state["total"]}


def _sum_body(path: str, db: str, chunk: int, unit_ms: int, version: int,
              content: bool) -> dict[str, int]:
    ctx = step_context()
    cp = ctx.last_checkpoint
    names = ("offset", "total") if version == 1 else ("pos", "sum")
    offset, total = (int(cp[names[0]]), int(cp[names[1]])) if cp else (0, 0)
    led = ledger_for(db)
    led.execute("INSERT INTO cp_starts (attempt, start) VALUES (?, ?)", (ctx.attempt, offset))
    values = [int(v) for v in Path(path).read_text().split()]
    while offset < len(values):
        part = values[offset : offset + chunk]
        keys = [f"{ctx.operation_id}/{offset + i}" for i in range(len(part))]
        for key, value in zip(keys, part, strict=True):
            led.execute("INSERT INTO cp_rows (key, value) VALUES (?, ?) ON CONFLICT (key) "
                        "DO UPDATE SET value = excluded.value", (key, value))
        if unit_ms:
            time.sleep(unit_ms / 1000)
        offset += len(part)
        total += sum(part)
        HOOK["seen"] += 1
        if HOOK["engine"] is not None and HOOK["seen"] == HOOK["preempt_at"]:
            HOOK["engine"].preempt("test: preempt at a checkpoint")
        ctx.checkpoint(dict(zip(names, (offset, total), strict=True)), done=offset,
                       total=len(values), source=file_fingerprint(path, content=content),
                       effects=keys)
    return {"sum": total, "lines": offset}


def make(*, version: int = 1, upgrade: bool = False, on_version_change: str = "restart",
         on_source_change: str = "restart", verify: bool = True,
         on_missing_effects: str = "fallback",
         content: bool = False) -> Workflow[..., dict[str, int]]:
    """The workflow with these checkpoint options on its step (`content`: fingerprint the
    file's bytes rather than its size and mtime)."""

    @step(name="sum_file", checkpoint_version=version,
          on_version_change=upgrade_v1_v2 if upgrade else on_version_change,  # type: ignore[arg-type]
          on_source_change=on_source_change,  # type: ignore[arg-type]
          verify_effects=missing_rows if verify else None,
          on_missing_effects=on_missing_effects)  # type: ignore[arg-type]
    def sum_file(path: str, db: str, chunk: int, unit_ms: int) -> dict[str, int]:
        return _sum_body(path, db, chunk, unit_ms, version, content)

    @workflow("cp-sum", version=1)
    def cp_sum(path: str, db: str, chunk: int = 5, unit_ms: int = 0) -> dict[str, int]:
        return sum_file(path, db, chunk, unit_ms)

    return cp_sum


def main(argv: list[str]) -> int:
    store_url, options, given = argv[0], orjson.loads(argv[1]), orjson.loads(argv[2])
    wf = make(**options)
    with (Engine(Settings(database_url=store_url, worker_id="cp-runner")) as engine,
          signals_request_preemption(engine.token)):
        result = engine.run(wf, given, key=KEY)
    if result.status is RunStatus.COMPLETED:
        print(orjson.dumps(result.output).decode())
        return 0
    return 1 if result.status is RunStatus.FAILED else 75


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

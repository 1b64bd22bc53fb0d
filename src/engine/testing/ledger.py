"""`IdempotencyLedger`: a stand-in for an external system, to prove effects happen once.

Step code applies its side effects through the ledger under an idempotency key (normally
`step_context().operation_id`, plus an item or chunk number if a step makes several). The
ledger keeps the first application of each key and counts every attempt, so a test can see
both halves of the contract: steps ran at least once (attempts > 1 after a crash), and each
effect was recorded exactly once, with the same payload every time it was attempted.

It is a SQLite file, so the processes a crash test starts and kills all share it: pass
`ledger.path` to the workflow as input and open it there with `IdempotencyLedger(path)`.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from engine.context import current_step

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS effects (key TEXT PRIMARY KEY, payload TEXT NOT NULL,"
    " operation_id TEXT, attempt INTEGER)",
    "CREATE TABLE IF NOT EXISTS attempts (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " key TEXT NOT NULL, payload TEXT NOT NULL, operation_id TEXT, attempt INTEGER,"
    " pid INTEGER NOT NULL)",
)


class IdempotencyLedger:
    """Effects keyed for exactly-once, and every attempt at them, in one SQLite file.

    With no `path`, a temporary file is made and deleted by `close()`.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self._owned = path is None
        if path is None:
            fd, name = tempfile.mkstemp(prefix="stepstone-ledger-", suffix=".db")
            os.close(fd)
            path = name
        self.path = str(Path(path))
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        for ddl in _SCHEMA:
            self._db().execute(ddl)

    def _db(self) -> sqlite3.Connection:
        # One connection per process: a connection must not cross a fork.
        if self._conn is None or self._pid != os.getpid():
            self._conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._pid = os.getpid()
        return self._conn

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None
        if self._owned:
            for suffix in ("", "-wal", "-shm"):
                Path(self.path + suffix).unlink(missing_ok=True)

    def __enter__(self) -> IdempotencyLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing --------------------------------------------------------------------------
    def apply(self, key: str, effect: Any = None) -> bool:
        """Apply `effect` (any JSON value) under `key`: True if it took effect now, False if
        that key was applied before (the retry was absorbed). Every call counts as an attempt.

        Inside a step, the step's operation id and attempt are recorded with it.
        """
        ctx = current_step.get()
        op, attempt = (ctx.operation_id, ctx.attempt) if ctx else (None, None)
        payload = orjson.dumps(effect, option=orjson.OPT_SORT_KEYS).decode()
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "INSERT INTO attempts (key, payload, operation_id, attempt, pid) "
                "VALUES (?, ?, ?, ?, ?)", (key, payload, op, attempt, os.getpid()),
            )
            applied = db.execute(
                "INSERT INTO effects (key, payload, operation_id, attempt) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (key) DO NOTHING", (key, payload, op, attempt),
            ).rowcount
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return applied == 1

    # -- reading --------------------------------------------------------------------------
    def effects(self) -> dict[str, Any]:
        """Each applied key with its effect, in the order they were applied."""
        rows = self._db().execute("SELECT key, payload FROM effects ORDER BY rowid")
        return {key: orjson.loads(payload) for key, payload in rows}

    def attempts(self) -> Counter[str]:
        """How many times each key was attempted (at least once per applied key)."""
        return Counter(key for (key,) in self._db().execute("SELECT key FROM attempts"))

    def retried(self) -> dict[str, int]:
        """The keys attempted more than once: the at-least-once window at work."""
        return {key: n for key, n in self.attempts().items() if n > 1}

    def assert_each_effect_once(self, expected: Iterable[str] | None = None) -> None:
        """Check the exactly-once contract and say what broke it.

        Every attempt of a key must carry the payload that was applied (a step that computes
        a different effect on retry is not idempotent, even though the key absorbed it); with
        `expected`, the applied keys must be exactly those (a missing key is a lost effect,
        an extra one usually a key that changes between attempts, e.g. one built from
        `attempt`, a clock or a random id).
        """
        applied = dict(self._db().execute("SELECT key, payload FROM effects"))
        problems = [
            f"{key!r} was applied with {applied[key]} but attempted again with {payload}"
            for key, payload in self._db().execute(
                "SELECT DISTINCT key, payload FROM attempts ORDER BY key"
            )
            if applied.get(key) != payload
        ]
        if expected is not None:
            wanted = list(expected)
            missing = [k for k in wanted if k not in applied]
            extra = sorted(set(applied) - set(wanted))
            if missing:
                problems.append(f"never applied: {missing}")
            if extra:
                problems.append(f"applied but not expected (an unstable key?): {extra}")
        if problems:
            raise AssertionError("effects not exactly once:\n  " + "\n  ".join(problems))

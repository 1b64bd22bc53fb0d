"""The published values view: the latest value each run `publish`ed for each key.

What a caller polls for ("the export file is ready, here is its path") without waiting for the
run to end; the API serves it at `/runs/{id}/published`. One row per (run, key), overwritten
by each later `ValuePublished` of the key: the batch applies facts in log order, so the last
one wins, and a rebuild gives the same rows. The value is kept as JSON text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from engine import events as ev
from projections.facts import Fact
from projections.sql import Rows, Table, Tx
from projections.view import View

PUBLISHED = Table(
    name="published",
    columns=(
        ("run_id", "uuid"),
        ("key", "text"),
        ("value", "text"),
        ("step_key", "text"),
        ("published_at", "ts"),
        ("position", "int"),
    ),
    key=("run_id", "key"),
)


class PublishedView(View):
    name = "published"
    tables = (PUBLISHED,)
    handles = frozenset({ev.ValuePublished})
    ignores = frozenset(set(ev.EVENT_TYPES) - {ev.ValuePublished})
    """It holds published values only; nothing else a run records changes them."""

    def load(self, tx: Tx, facts: Sequence[Fact]) -> Rows:
        return lambda: []  # rows are overwritten whole: nothing to read first

    def apply(self, tx: Tx, facts: Sequence[Fact], loaded: list[list[Any]]) -> None:
        latest: dict[tuple[str, str], tuple[Any, ...]] = {}
        for fact in facts:
            if fact.kind is ev.ValuePublished:
                d = fact.data
                latest[(fact.run_id, d["key"])] = (
                    fact.run_id, d["key"], orjson.dumps(d["value"]).decode(), d["step_key"],
                    d["timestamp"], fact.position,
                )
        tx.upsert(self.bound[0], list(latest.values()))

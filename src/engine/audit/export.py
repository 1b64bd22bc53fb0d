"""Export: the run log as JSON Lines, one stored event per line, in a stable format.

Each line is one object (docs/audit.md is the reference):

    {"position": 42, "run_id": "...", "version": 3, "type": "StepCompleted",
     "topic": "engine.events:StepCompleted", "event": {...the payload as stored...}}

`event` is the payload exactly as the store holds it, not as this release would decode it:
its `class_version`, `prev_hash` and `hash` included, so the hash chain can be checked from
an export alone (`engine.audit.verify`) and a later release reads it through its upcasters.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple, cast
from uuid import UUID

import orjson
from eventsourcing.persistence import StoredEvent

from engine.codec import OrjsonTranscoder, PydanticMapper
from engine.events import RunEvent
from engine.store import RunStore


class Row(NamedTuple):
    """One stored event as it sits in the log."""

    position: int
    run_id: UUID
    version: int
    topic: str
    state: bytes


def rows(
    store: RunStore, *, run_id: UUID | None = None, workflow: str | None = None,
) -> Iterator[Row]:
    """The stored events in log order: all, one run's, or those of one workflow's runs."""
    if run_id is not None:
        for r in store.reader.iter_run(run_id):
            yield Row(r.position, run_id, r.version, r.topic, r.state)
        return
    wanted = (
        {s.originator_id for s in store.started() if s.workflow == workflow}
        if workflow is not None else None
    )
    for r in store.reader.iter_after(0):
        if wanted is None or r.run_id in wanted:
            yield Row(r.position, r.run_id, r.version, r.topic, r.state)


def has_events(store: RunStore, *, run_id: UUID | None = None,
               workflow: str | None = None) -> bool:
    """Whether the run, or any run of the workflow, is in the store: an audit of nothing must
    say so rather than report zero events as a success."""
    if run_id is not None:
        return bool(store.recorder.select_events(run_id, limit=1))
    if workflow is not None:
        return any(s.workflow == workflow for s in store.started())
    return True


def record_of(row: Row) -> dict[str, Any]:
    return {
        "position": row.position,
        "run_id": str(row.run_id),
        "version": row.version,
        "type": row.topic.rpartition(":")[2],
        "topic": row.topic,
        "event": orjson.loads(row.state),
    }


def write_export(store: RunStore, out: Any, **which: Any) -> int:
    """Write the chosen events as JSON Lines to the binary file `out`; returns how many."""
    count = 0
    for row in rows(store, **which):
        out.write(orjson.dumps(record_of(row)) + b"\n")
        count += 1
    return count


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of an export file, in file order."""
    with open(path, "rb") as f:
        return [orjson.loads(line) for line in f if line.strip()]


def stored_event(record: dict[str, Any]) -> StoredEvent:
    """An export record as the store would hold it (to replay it, or import it elsewhere)."""
    return StoredEvent(
        originator_id=UUID(record["run_id"]),
        originator_version=record["version"],
        topic=record["topic"],
        state=orjson.dumps(record["event"]),
    )


def read_export(source: str | Path | Iterable[dict[str, Any]]) -> dict[UUID, list[RunEvent]]:
    """Each run's events from an export, decoded (and upcast) by this release's mapper.

    Raises `UnknownEventError` naming the type and the run and version of an event this
    release does not know.
    """
    records = read_records(source) if isinstance(source, str | Path) else source
    mapper = PydanticMapper(transcoder=OrjsonTranscoder())
    runs: dict[UUID, list[RunEvent]] = {}
    for record in sorted(records, key=lambda r: (r["run_id"], r["version"])):
        event = cast(RunEvent, mapper.to_domain_event(stored_event(record)))
        runs.setdefault(event.originator_id, []).append(event)
    return runs


def import_records(store: RunStore, records: Iterable[dict[str, Any]]) -> int:
    """Append exported events to `store` in one transaction (restoring an archive, or golden
    logs in tests). Existing events with the same run and version make it fail whole."""
    stored = [stored_event(r) for r in sorted(records, key=lambda r: r["position"])]
    store.recorder.insert_events(stored)
    return len(stored)

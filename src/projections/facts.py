"""Stored notifications turned into the plain records the views apply ("facts").

Why not `store.mapper.to_domain_event` for every event: measured on SQLite, reading
notifications runs at ~245k events/s and reading plus the mapper's pydantic validation at
~130k/s, which alone would spend the whole rebuild budget (half the read rate). The events
were validated by pydantic when the engine wrote them, so a fact is the stored JSON decoded by
orjson, checked for the event's field names. The mapper is still the authority: it decodes
every event whose stored class version differs from the code's (upcasting), every event of a
store with a cipher or compressor, and every event the quick check rejects, so an unknown or
broken event gets the mapper's own diagnosis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, cast
from uuid import UUID

import orjson
from eventsourcing.persistence import Mapper, Notification
from eventsourcing.utils import get_topic
from pydantic import BaseModel

from engine.errors import DamagedLogError, UnknownEventError
from engine.events import EVENT_TYPES, RunEvent
from engine.logcontext import get_logger
from projections.errors import EventNotProjectableError

log = get_logger("stepstone.projections")

_ID_FIELDS = frozenset({"originator_id", "originator_version"})


class Fact(NamedTuple):
    """One event as the views see it: its global position, its run, its class, its fields.

    `kind` is the event's class from `engine.events`: the views dispatch on it with `is`, so a
    renamed or removed event fails at import and type-check time, not silently. `data` holds
    the event's JSON fields (timestamps as ISO 8601 strings), exactly as stored.
    The run id is its canonical text: the views key dicts by it, and `UUID.__hash__` (Python
    code) costs more than the rest of a dict lookup.
    """

    position: int
    run_id: str
    kind: type[RunEvent]
    data: dict[str, Any]


@dataclass(frozen=True)
class _Spec:
    kind: type[RunEvent]
    class_version: int
    required: frozenset[str]
    allowed: frozenset[str]


def _spec(cls: type[RunEvent]) -> _Spec:
    fields = cls.model_fields
    return _Spec(
        kind=cls,
        class_version=getattr(cls, "class_version", 1),
        required=frozenset(n for n, f in fields.items() if f.is_required()) - _ID_FIELDS,
        allowed=frozenset(fields) - _ID_FIELDS,
    )


_SPECS: dict[str, _Spec] = {get_topic(cls): _spec(cls) for cls in EVENT_TYPES}


def decode(
    notes: Sequence[Notification], mapper: Mapper[UUID]
) -> tuple[list[Fact], EventNotProjectableError | None]:
    """`decode_rows` of the library's notifications (what its subscription delivers)."""
    return decode_rows(
        [(n.id, n.originator_id, n.originator_version, n.topic, n.state) for n in notes], mapper
    )


def decode_rows(
    rows: Sequence[tuple[int, UUID | str, int, str, bytes]], mapper: Mapper[UUID]
) -> tuple[list[Fact], EventNotProjectableError | None]:
    """The facts of `rows` (`LogRow`s, or notifications' fields) up to the first one that
    cannot be projected, and its error.

    The caller applies the good prefix and then raises the error, so the views stop exactly
    before the bad event and resume from it.
    """
    quick = mapper.cipher is None and mapper.compressor is None
    facts: list[Fact] = []
    run_ids: dict[Any, str] = {}  # str(UUID) is slow Python code; a batch has few runs
    loads, specs, append = orjson.loads, _SPECS, facts.append
    new = tuple.__new__  # a Fact without its Python-level `__new__`: a third of a µs an event
    for position, originator_id, version, topic, state in rows:
        spec = specs.get(topic)
        data: Any = None
        if quick and spec is not None:
            # Inline, not a helper: this loop is most of a rebuild's own (non-read) time.
            try:
                data = loads(state)
            except orjson.JSONDecodeError:
                data = None
            if not (
                type(data) is dict
                and data.pop("class_version", 1) == spec.class_version
                and spec.required <= data.keys() <= spec.allowed
            ):
                data = None
        if data is None:
            note = Notification(
                id=position, topic=topic, state=bytes(state), originator_version=version,
                originator_id=originator_id if isinstance(originator_id, UUID)
                else UUID(originator_id),
            )
            try:
                event = mapper.to_domain_event(note)
                if spec is None:
                    raise UnknownEventError(
                        note.topic, note.originator_id, note.originator_version,
                        f"the projectors do not know {type(event).__name__} events",
                    )
            except DamagedLogError as e:
                # Damage to one event, which no upgrade fixes: skip it (every rebuild skips
                # it alike) rather than stop the views of every run behind it.
                log.warning("skipping event at position %d: %s", position, e)
                continue
            except (UnknownEventError, ValueError, TypeError, AttributeError) as e:
                return facts, EventNotProjectableError(position, str(e))
            data = _normalized(cast(BaseModel, event))
        assert spec is not None
        if isinstance(originator_id, str):
            run_id = originator_id
        elif (known := run_ids.get(originator_id)) is not None:
            run_id = known
        else:
            run_id = run_ids[originator_id] = str(originator_id)
        append(new(Fact, (position, run_id, spec.kind, data)))
    return facts, None


def fact_of(event: RunEvent, position: int) -> Fact:
    """The fact of an already decoded event (the library's per-event `process_event` path)."""
    return Fact(position, str(event.originator_id), type(event), _normalized(event))


def _normalized(event: BaseModel) -> dict[str, Any]:
    # Through orjson, as the engine stored it: timestamps read the same on both paths.
    data: dict[str, Any] = orjson.loads(orjson.dumps(event.model_dump(exclude=set(_ID_FIELDS))))
    return data

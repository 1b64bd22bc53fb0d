"""Tamper evidence: each run event carries a hash chained to the previous event of its run.

The hash covers what is stored, not the decoded event: the event's JSON payload as the mapper
writes it (with its `class_version`, without the hash itself), plus its topic, run id and
version. So an upcast in a later release, which changes the decoded shape but not the stored
bytes, leaves every hash valid; and a payload moved to another version or another run no
longer matches. `prev_hash` is inside the payload, which is what chains the events.

The hash is computed when the aggregate triggers the event (pure: no clock, no I/O), and
checked by `engine.audit.verify` from the raw rows. Without a key it proves consistency, not
authorship; `docs/audit.md` says what it can and cannot show.
"""

from __future__ import annotations

import hashlib
from typing import Any
from uuid import UUID

import orjson
from eventsourcing.utils import get_topic
from pydantic import BaseModel

_ID_FIELDS = {"originator_id", "originator_version"}


def content_digest(topic: str, run_id: UUID | str, version: int, payload: dict[str, Any]) -> str:
    """sha256 of the canonical form of one stored event (`payload` without its `hash`).

    Canonical: orjson with sorted keys, over the JSON the store holds. orjson writes datetimes,
    UUIDs and floats the same way whether given the Python values or the strings it wrote.
    """
    doc = {"topic": topic, "run_id": str(run_id), "version": version, "event": payload}
    return hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).hexdigest()


def stored_payload(event: BaseModel) -> dict[str, Any]:
    """The JSON object `engine.codec.PydanticMapper` stores for `event`: its fields but the run
    id and version, plus its `class_version` when above 1. A class that sets
    `store_without_defaults` (snapshots) leaves out fields at their defaults."""
    payload: dict[str, Any] = event.__pydantic_serializer__.to_python(
        event, exclude=_ID_FIELDS,
        exclude_defaults=getattr(type(event), "store_without_defaults", False),
    )
    class_version = getattr(type(event), "class_version", 1)
    if class_version > 1:
        payload["class_version"] = class_version
    return payload


def seal(event: BaseModel) -> dict[str, Any]:
    """The stored payload of an event about to be stored, its `hash` set to its digest.

    The digest and the stored bytes come from this one dump of the event rather than one each;
    the caller keeps the payload for the mapper.
    """
    payload = stored_payload(event)
    payload["hash"] = content_digest(
        get_topic(type(event)),
        event.originator_id,  # type: ignore[attr-defined]
        event.originator_version,  # type: ignore[attr-defined]
        {k: v for k, v in payload.items() if k != "hash"},
    )
    return payload


SEAL = "<seal>"
"""Given as an event's `hash` when it is triggered: the event replaces it by its own digest."""

"""How run events become bytes in the store and back: pydantic models through orjson.

The library's default mapper rebuilds events with `object.__new__`, which would bypass
pydantic validation, so this mapper dumps and validates models instead. Upcasting follows the
library's convention: a stored `class_version` below the class's runs `upcast_vN_vN+1`.
"""

from __future__ import annotations

from typing import Any, cast
from uuid import UUID

import orjson
from eventsourcing.persistence import Mapper, StoredEvent, Transcoder
from eventsourcing.utils import TopicError, get_topic, resolve_topic
from pydantic import BaseModel, ValidationError

from engine.audit.chain import stored_payload
from engine.errors import DamagedLogError, UnknownEventError
from engine.events import STORED_PAYLOAD


class OrjsonTranscoder(Transcoder):
    """orjson encodes datetimes, UUIDs and enums natively; pydantic restores their types."""

    def encode(self, obj: Any) -> bytes:
        return orjson.dumps(obj)

    def decode(self, data: bytes) -> Any:
        return orjson.loads(data)


class PydanticMapper(Mapper[UUID]):
    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        model = cast(BaseModel, domain_event)
        # An event the engine just recorded carries the payload its hash was computed from.
        state = model.__dict__.get(STORED_PAYLOAD)
        if state is None:
            state = stored_payload(model)
        data = self.transcoder.encode(state)
        if self.compressor:
            data = self.compressor.compress(data)
        if self.cipher:
            data = self.cipher.encrypt(data)
        return StoredEvent(
            originator_id=model.originator_id,  # type: ignore[attr-defined]
            originator_version=model.originator_version,  # type: ignore[attr-defined]
            topic=get_topic(type(model)),
            state=data,
        )

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        """Decode one stored event, upcasting it from an older class version.

        `UnknownEventError` advises upgrading Stepstone only when the event is really from a
        newer release: a type of this package's vocabulary that this release lacks, or a class
        version above this release's. JSON that does not fit the event class is
        `UnknownEventError` that points at an upcaster or at `stepstone verify`; bytes that
        are not a JSON object, or a type from no release, are damage (`DamagedLogError`),
        which no upgrade fixes.
        """
        topic = stored_event.topic
        run_id = stored_event.originator_id
        version = stored_event.originator_version
        try:
            cls = resolve_topic(topic)
        except TopicError as e:
            if topic.startswith(_OUR_EVENTS):
                raise UnknownEventError(topic, run_id, version, "no such event type") from e
            raise DamagedLogError(run_id, version, None, f"unknown event type {topic!r}") from e
        data = stored_event.state
        try:
            if self.cipher:
                data = self.cipher.decrypt(data)
            if self.compressor:
                data = self.compressor.decompress(data)
            state: dict[str, Any] = self.transcoder.decode(data)
            if not isinstance(state, dict):
                raise TypeError(f"a JSON {type(state).__name__}, not an object")
            from_version = state.pop("class_version", 1)
            known = getattr(cls, "class_version", 1)
            if isinstance(from_version, int) and from_version > known:
                raise UnknownEventError(
                    topic, run_id, version,
                    f"stored as class version {from_version}; this release knows {known}",
                )
            while from_version < known:
                getattr(cls, f"upcast_v{from_version}_v{from_version + 1}")(state)
                from_version += 1
            state["originator_id"] = run_id
            state["originator_version"] = version
            return cls.model_validate(state)
        except (ValidationError, AttributeError) as e:
            # JSON an event class could have written, not what this release's class reads.
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise UnknownEventError(topic, run_id, version, reason, newer=False) from e
        except (orjson.JSONDecodeError, TypeError) as e:  # bytes no release wrote
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DamagedLogError(
                run_id, version, None, f"its {topic.rpartition(':')[2]} payload does not "
                f"decode ({reason})",
            ) from e


_OUR_EVENTS = "engine.events:"

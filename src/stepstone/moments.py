"""Moments typed on the command line: an ISO 8601 date or time, or a duration back from now.

`--since 7d`, `--finished-before 2026-01-31`, `--finished-before 90d`: one parser, so every
command reads them alike. A date alone means its midnight UTC; a time needs its zone (a bare
local time would mean something else on every machine).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")


def parse_moment(text: str, *, now: datetime, option: str) -> datetime:
    """`text` as a UTC moment; `ValueError` with a one-line message naming `option`."""
    found = _DURATION.match(text.strip().lower())
    if found:
        return now - timedelta(seconds=float(found[1]) * _UNITS[found[2]])
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{option} {text!r} is neither a date (2026-01-31), a UTC time "
            "(2026-01-31T12:00:00Z) nor a duration back from now (90d, 12h, 30m, 2w)"
        ) from None
    if moment.tzinfo is None:
        if len(text.strip()) > 10:
            raise ValueError(f"{option} {text!r} has no time zone; add Z for UTC, e.g. {text}Z")
        moment = moment.replace(tzinfo=UTC)
    return moment


def parse_past(text: str, *, now: datetime, option: str) -> datetime:
    """A moment that must not be in the future (retention never reaches ahead of now)."""
    moment = parse_moment(text, now=now, option=option)
    if moment > now:
        raise ValueError(f"{option} {text!r} is in the future; give a past date or a duration "
                         "such as 90d")
    return moment

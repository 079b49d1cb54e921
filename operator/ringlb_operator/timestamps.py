"""RFC 3339 times as the status and the API spell them, parsed and formatted in one place.

Status fields that hold a time (a node lost since, a warm-up started at) are compared from pass
to pass: one format, always UTC and whole seconds, keeps an unchanged time an unchanged string.
"""

from __future__ import annotations

import datetime


def parse_time(value: str) -> datetime.datetime | None:
    """None for anything unparseable (a hand-edited status); a naive time is taken as UTC."""
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)


def format_time(value: datetime.datetime) -> str:
    return value.astimezone(datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")

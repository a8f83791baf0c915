"""The alert message schema `safeguard.alert/1`, shared by the daemon and the listener.

Required fields are exactly those of DESIGN.md; anything else is optional so that other
producers can publish valid alerts.
"""

from __future__ import annotations

import os
import time
from functools import cache
from typing import Any

SCHEMA_ID = "safeguard.alert/1"
# RFC 3339 date-time; its UTC designator may be written `Z` or `z` (section 5.6, NOTE)
_RFC3339 = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"

ALERT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": SCHEMA_ID,
    "type": "object",
    "required": [
        "schema",
        "id",
        "device_id",
        "event",
        "category",
        "severity",
        "score",
        "started_at",
        "sent_at",
    ],
    "properties": {
        "schema": {"const": SCHEMA_ID},
        "id": {"type": "string", "minLength": 1, "maxLength": 64},
        "device_id": {"type": "string", "pattern": r"^[A-Za-z0-9_.-]{1,64}$"},
        "event": {"enum": ["start", "update", "end"]},
        "category": {"type": "string", "minLength": 1, "maxLength": 64},
        "severity": {"enum": ["info", "warning", "critical"]},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "started_at": {"type": "string", "pattern": _RFC3339},
        "sent_at": {"type": "string", "pattern": _RFC3339},
        "event_id": {"type": "string", "minLength": 1, "maxLength": 64},
    },
}


@cache
def _validator() -> Any:
    import jsonschema  # only where alerts are checked: the daemon's other paths start faster

    return jsonschema.Draft202012Validator(ALERT_SCHEMA)


class AlertInvalid(ValueError):
    """A message that is not a valid `safeguard.alert/1` alert."""


def validate(alert: object) -> dict[str, Any]:
    """`alert` itself if valid; AlertInvalid naming the first problem otherwise."""
    import jsonschema

    error = jsonschema.exceptions.best_match(_validator().iter_errors(alert))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(message)"
        raise AlertInvalid(f"{where}: {error.message}")
    assert isinstance(alert, dict)
    return alert


_last = [0]


def new_id() -> str:
    """A unique, time-ordered id: 48-bit milliseconds then 80 random bits, as 32 hex digits.

    Ids made by one process are strictly increasing, like ULIDs.
    """
    millis = time.time_ns() // 1_000_000
    value = (millis << 80) | int.from_bytes(os.urandom(10), "big")
    if value <= _last[0]:
        value = _last[0] + 1
    _last[0] = value
    return f"{value:032x}"


def rfc3339(unix: float) -> str:
    """UTC RFC 3339 with milliseconds, e.g. 2026-11-21T10:00:00.123Z."""
    whole = int(unix)
    millis = round((unix - whole) * 1000)
    if millis == 1000:
        whole, millis = whole + 1, 0
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"

"""Pure checks of incoming MQTT messages: what is accepted, and why the rest is rejected."""

from __future__ import annotations

import json
import math
from typing import Any

import fastjsonschema

from edge.schema import ALERT_SCHEMA, AlertInvalid, validate
from listener.store import parse_time

DEVICE_STATUSES = ("online", "offline", "stopped")

# The same schema compiled to Python code (draft-07 keywords only, so the meaning is the same):
# about 25x faster than the reference validator on valid alerts. A message it refuses is
# judged again by `edge.schema.validate`, which has the last word and names the problem.
_FAST = fastjsonschema.compile({k: v for k, v in ALERT_SCHEMA.items() if k != "$schema"})


def validate_alert(data: Any) -> dict[str, Any]:
    """`data` if it is a valid alert; AlertInvalid otherwise."""
    try:
        _FAST(data)
    except fastjsonschema.JsonSchemaException:
        return validate(data)
    assert isinstance(data, dict)
    return data


class Rejected(Exception):
    """A message that is not stored; `reason` is the metrics outcome."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def topic_device(topic: str, prefix: str, suffix: str) -> str | None:
    """The <device> of `<prefix>/<device>/<suffix>`, or None if the topic is not of that form."""
    head, tail = prefix + "/", "/" + suffix
    if not (topic.startswith(head) and topic.endswith(tail)):
        return None
    device = topic[len(head) : len(topic) - len(tail)]
    return device if device and "/" not in device else None


def _no_constants(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _clean(value: Any, depth: int = 0) -> None:
    """Reject what a database cannot hold: NUL characters, lone surrogates, absurd nesting."""
    if depth > 32:
        raise ValueError("nested too deeply")
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("NUL character in a string")
        value.encode("utf-8")
    elif isinstance(value, dict):
        for key, item in value.items():
            _clean(key, depth + 1)
            _clean(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _clean(item, depth + 1)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError("non-finite number")


def parse_json(payload: bytes, max_bytes: int) -> Any:
    """The JSON document in `payload`; Rejected (oversized/malformed) otherwise."""
    if len(payload) > max_bytes:
        raise Rejected("oversized", f"{len(payload)} bytes > {max_bytes}")
    try:
        data = json.loads(payload.decode("utf-8"), parse_constant=_no_constants)
        _clean(data)
    except (UnicodeError, ValueError, RecursionError) as exc:
        raise Rejected("malformed", f"not clean JSON: {exc}") from None
    return data


def check_alert(topic: str, payload: bytes, prefix: str, max_bytes: int) -> dict[str, Any]:
    """The alert in a message on `<prefix>/<device>/alert`, or Rejected saying why not."""
    device = topic_device(topic, prefix, "alert")
    if device is None:
        raise Rejected("malformed", f"unexpected topic {topic[:200]!r}")
    data = parse_json(payload, max_bytes)
    try:
        alert = validate_alert(data)
        parse_time(alert["started_at"])
        parse_time(alert["sent_at"])
    except (AlertInvalid, ValueError, OverflowError) as exc:  # Overflow: 0001-01-01T00:30+01:00
        raise Rejected("malformed", str(exc)[:300]) from None
    if alert["device_id"] != device:
        raise Rejected("spoofed", f"topic device {device!r} != payload {alert['device_id']!r}")
    return alert


def check_status(payload: bytes) -> str:
    text = payload.decode("utf-8", errors="replace").strip()
    if text not in DEVICE_STATUSES:
        raise Rejected("malformed", f"unknown status {text[:40]!r}")
    return text


def check_health(payload: bytes, max_bytes: int) -> dict[str, Any]:
    data = parse_json(payload, max_bytes)
    if not isinstance(data, dict):
        raise Rejected("malformed", "health is not a JSON object")
    return data

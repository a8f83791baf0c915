"""Times in `safeguard.alert/1`: RFC 3339 with `Z`, `z` or an offset, and nothing looser."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from edge.schema import AlertInvalid, validate
from listener.checks import Rejected, check_alert, validate_alert
from listener.store import parse_time
from tests.helpers import make_alert

ACCEPTED = [
    "2026-11-21T10:00:00.000Z",
    "2026-11-21T10:00:00.000z",  # RFC 3339 5.6: the UTC designator may be lower case
    "2026-11-21T10:00:00z",
    "2026-11-21T11:00:00.000+01:00",
]
REFUSED = [
    "2026-11-21T10:00:00.000",  # no zone
    "2026-11-21 10:00:00.000Z",
    "2026-11-21t10:00:00.000Z",
    "2026-11-21T10:00:00.000UTC",
    "2026-11-21T10:00:00.000+0100",
    "2026-11-21T10:00:00.000zz",
    "2026-11-21T10:00:00.000Zz",
    "2026-11-21T10:00:00.000z+01:00",
]


@pytest.mark.parametrize("when", ACCEPTED)
def test_utc_as_z_or_lower_case_z_or_an_offset_is_valid(when: str) -> None:
    alert = make_alert("kitchen-pi", started_at=when, sent_at=when)
    assert validate(alert) is alert  # the daemon's outbox and the reference validator
    assert validate_alert(alert) is alert  # the listener's compiled validator
    payload = json.dumps(alert).encode()
    assert check_alert("safeguard/kitchen-pi/alert", payload, "safeguard", 65536) == alert
    assert parse_time(when) == datetime(2026, 11, 21, 10, tzinfo=timezone.utc)


@pytest.mark.parametrize("when", REFUSED)
def test_other_spellings_stay_invalid(when: str) -> None:
    for field in ("started_at", "sent_at"):
        alert = make_alert("kitchen-pi", **{field: when})
        with pytest.raises(AlertInvalid, match=field):
            validate(alert)
        with pytest.raises(AlertInvalid, match=field):
            validate_alert(alert)
        payload = json.dumps(alert).encode()
        with pytest.raises(Rejected, match="malformed"):
            check_alert("safeguard/kitchen-pi/alert", payload, "safeguard", 65536)

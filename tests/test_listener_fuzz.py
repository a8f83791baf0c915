"""Fuzzing: the message checks and store (hypothesis), the API against its OpenAPI schema
(schemathesis). No crash, no 500, nothing stored that should not be."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from edge.schema import AlertInvalid, validate
from listener.api import CLIP_TYPES
from listener.app import build_state, create_app
from listener.checks import Rejected, check_alert
from listener.config import parse
from listener.store import Store, utcnow
from tests.helpers import listener_database, make_alert

TOKEN = "fuzz-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(st.characters(codec=None), max_size=80),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=10,
)
FIELDS = ["schema", "id", "device_id", "event", "category", "severity", "score", "started_at",
          "sent_at", "event_id", "location"]  # fmt: skip


@st.composite
def messages(draw: st.DrawFn) -> tuple[str, bytes]:
    alert: dict[str, Any] = make_alert(draw(st.sampled_from(["dev-a", "dev-b"])))
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(FIELDS))
        if draw(st.booleans()):
            alert[key] = draw(json_values)
        else:
            alert.pop(key, None)
    device = draw(st.sampled_from(["dev-a", "dev-b", "dev-a/x", ""]))
    payload = json.dumps(alert).encode()
    if draw(st.integers(0, 9)) == 0:
        payload = draw(st.binary(max_size=200))
    elif draw(st.integers(0, 9)) == 0:
        cut = draw(st.integers(0, len(payload)))
        payload = payload[:cut]
    return f"safeguard/{device}/alert", payload


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fuzz_store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Store]:
    for url in listener_database(request.param, tmp_path_factory.mktemp("fuzz")):
        store = Store(url)
        store.migrate()
        yield store
        store.close()


def test_message_checks_and_store(fuzz_store: Store) -> None:
    accepted: set[tuple[str, str]] = set()

    valid = ("safeguard/dev-a/alert", json.dumps(make_alert("dev-a")).encode())

    @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
    @given(messages())
    @example(valid)  # the accept path runs even when the random draws hold no valid alert
    def one(message: tuple[str, bytes]) -> None:
        topic, payload = message
        before = fuzz_store.count_alerts()
        try:
            alert = check_alert(topic, payload, "safeguard", 4096)
        except Rejected as exc:
            reason = exc.reason
        else:
            reason = ""
        if reason:
            assert reason in {"malformed", "oversized", "spoofed"}
            assert fuzz_store.count_alerts() == before  # nothing stored
            return
        try:  # the fast validator never accepts what the reference validator refuses
            validate(json.loads(payload))
        except AlertInvalid as exc:
            pytest.fail(f"accepted an invalid alert: {exc}")
        assert topic == f"safeguard/{alert['device_id']}/alert"
        new = fuzz_store.store_alerts([alert], utcnow())
        key = (alert["device_id"], alert["id"])
        assert new == ({key} - accepted)
        accepted.add(key)
        assert fuzz_store.count_alerts() == before + len(new)

    one()
    assert accepted


@pytest.fixture(scope="module")
def api_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    for url in listener_database("postgresql", tmp_path_factory.mktemp("api-fuzz")):
        cfg = parse({"database": {"url": url}, "http": {"max_clip_bytes": 4096}})
        state = build_state(cfg, TOKEN)
        state.store.store_alerts([make_alert("dev-a", id="known-1")], utcnow())
        yield create_app(state, start_ingest=False)
        state.store.close()


def _clip_bytes(_ctx: Any, value: Any) -> bytes:
    """Generated clip bodies as bytes (schemathesis has no serializer for media types)."""
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8", errors="surrogatepass")


schemathesis.serializer(*CLIP_TYPES)(_clip_bytes)


@pytest.fixture(scope="module")
def api_schema(api_app: FastAPI) -> Any:
    schema = schemathesis.openapi.from_asgi("/openapi.json", api_app, headers=AUTH)
    return schema.exclude(path="/api/live")  # an endless stream by design


def test_api_never_fails(api_schema: Any) -> None:
    """Every operation, with generated (also invalid) input: no 500, responses as documented."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 8
    for operation in operations:

        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
        @given(operation.as_strategy())
        def run(case: Any) -> None:
            case.call_and_validate(
                headers=AUTH, checks=[not_a_server_error, response_schema_conformance]
            )

        run()


def test_api_schema_covers_the_api(api_schema: Any, tmp_path: Path) -> None:
    paths = {op.path for op in (r.ok() for r in api_schema.get_all_operations())}
    assert {"/api/alerts", "/api/alerts/{alert_id}", "/api/devices"} <= paths
    assert "/api/alerts/{alert_id}/clip" in paths
    assert tmp_path.exists()


@pytest.mark.parametrize("when", ["0001-01-01T00:30:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_a_time_beyond_the_calendar_in_utc_is_malformed(when: str) -> None:
    alert = make_alert("dev-a", started_at=when)
    with pytest.raises(Rejected, match=r"^malformed"):
        check_alert("safeguard/dev-a/alert", json.dumps(alert).encode(), "safeguard", 4096)

"""The HTTP API: filters, pagination, acknowledgement, devices, clips, auth, metrics."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from listener.app import build_state, create_app
from listener.config import parse, read_secret
from listener.state import State
from tests.helpers import listener_database, make_alert

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(params=["sqlite", "postgresql"])
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[TestClient, State]]:
    for url in listener_database(request.param, tmp_path):
        cfg = parse({"database": {"url": url}, "http": {"max_clip_bytes": 4096}})
        state = build_state(cfg, TOKEN)
        with TestClient(create_app(state, start_ingest=False)) as client:
            yield client, state


def seed(state: State) -> list[dict[str, Any]]:
    """Six alerts received one after another (oldest first)."""
    spec = [
        ("kitchen-pi", "scream", "critical"),
        ("kitchen-pi", "glass", "warning"),
        ("hall-pi", "gunshot", "critical"),
        ("hall-pi", "scream", "info"),
        ("porch-pi", "fight", "warning"),
        ("kitchen-pi", "scream", "critical"),
    ]
    alerts = []
    base = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for i, (device, category, severity) in enumerate(spec):
        alert = make_alert(device, category=category, severity=severity)
        state.store.store_alerts([alert], base + timedelta(minutes=i))
        alerts.append(alert)
    return alerts


def ids(response: Any) -> list[str]:
    assert response.status_code == 200, response.text
    return [a["id"] for a in response.json()]


def test_auth_everywhere_but_health(api: tuple[TestClient, State]) -> None:
    client, _state = api
    for path in ("/api/alerts", "/api/devices", "/metrics", "/api/alerts/x", "/api/config"):
        assert client.get(path).status_code == 401, path
        wrong = client.get(path, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401, path
        assert wrong.headers["www-authenticate"] == "Bearer"
    assert client.post("/api/alerts/x/ack", json={"by": "me"}).status_code == 401
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "degraded", "mqtt": False, "database": True}
    assert client.get("/").status_code == 200  # the dashboard page itself (it asks for the token)


def test_list_filters_and_pagination(api: tuple[TestClient, State]) -> None:
    client, state = api
    alerts = seed(state)
    newest_first = [a["id"] for a in reversed(alerts)]
    assert ids(client.get("/api/alerts", headers=AUTH)) == newest_first
    assert ids(client.get("/api/alerts?limit=2", headers=AUTH)) == newest_first[:2]
    assert ids(client.get("/api/alerts?limit=2&offset=2", headers=AUTH)) == newest_first[2:4]
    assert ids(client.get("/api/alerts?device=hall-pi", headers=AUTH)) == newest_first[2:4]
    scream = ids(client.get("/api/alerts?category=scream&severity=critical", headers=AUTH))
    assert scream == [alerts[5]["id"], alerts[0]["id"]]
    since = client.get("/api/alerts", params={"since": "2026-01-01T00:04:00Z"}, headers=AUTH)
    assert ids(since) == newest_first[:2]
    assert client.get("/api/alerts?limit=1000", headers=AUTH).status_code == 200
    assert client.get("/api/alerts?limit=1001", headers=AUTH).status_code == 422
    assert client.get("/api/alerts?severity=bad", headers=AUTH).status_code == 422
    naive = client.get("/api/alerts", params={"since": "2026-01-01T00:04:00"}, headers=AUTH)
    assert naive.status_code == 400
    one = client.get(f"/api/alerts/{alerts[0]['id']}", headers=AUTH).json()
    assert {k: one[k] for k in alerts[0]} == alerts[0]
    assert one["listener"]["status"] == "new"
    assert client.get("/api/alerts/unknown", headers=AUTH).status_code == 404


def test_acknowledge_and_resolve(api: tuple[TestClient, State]) -> None:
    client, state = api
    alerts = seed(state)
    target = alerts[2]["id"]
    before = datetime.now(timezone.utc) - timedelta(seconds=1)
    acked = client.post(f"/api/alerts/{target}/ack", json={"by": "alice"}, headers=AUTH)
    assert acked.status_code == 200, acked.text
    handling = acked.json()["listener"]
    assert handling["status"] == "acknowledged"
    assert handling["acknowledged_by"] == "alice"
    when = datetime.fromisoformat(handling["acknowledged_at"].replace("Z", "+00:00"))
    assert before <= when <= datetime.now(timezone.utc) + timedelta(seconds=1)
    again = client.post(f"/api/alerts/{target}/ack", json={"by": "bob"}, headers=AUTH).json()
    assert again["listener"]["acknowledged_by"] == "alice"  # the first person is kept
    body = {"by": "bob", "note": "false alarm: a film"}
    done = client.post(f"/api/alerts/{target}/resolve", json=body, headers=AUTH).json()
    assert done["listener"]["status"] == "resolved"
    assert done["listener"]["resolved_by"] == "bob"
    assert done["listener"]["note"] == "false alarm: a film"
    assert ids(client.get("/api/alerts?status=resolved", headers=AUTH)) == [target]
    assert len(ids(client.get("/api/alerts?status=new", headers=AUTH))) == 5
    missing = client.post("/api/alerts/nope/ack", json={"by": "alice"}, headers=AUTH)
    assert missing.status_code == 404
    bad = client.post(f"/api/alerts/{target}/ack", json={"by": ""}, headers=AUTH)
    assert bad.status_code == 422
    extra = client.post(f"/api/alerts/{target}/ack", json={"by": "a", "x": 1}, headers=AUTH)
    assert extra.status_code == 422


def test_devices_status_health_and_counts(api: tuple[TestClient, State]) -> None:
    client, state = api
    seed(state)
    now = datetime.now(timezone.utc)
    state.store.set_device("kitchen-pi", status="online", status_at=now)
    state.store.set_device("kitchen-pi", health={"temp_c": 61.0}, health_at=now)
    state.store.set_device("garage-pi", status="offline", status_at=now)
    response = client.get("/api/devices", headers=AUTH)
    assert response.status_code == 200
    devices = {d["device_id"]: d for d in response.json()}
    assert set(devices) == {"kitchen-pi", "hall-pi", "porch-pi", "garage-pi"}
    assert devices["kitchen-pi"]["status"] == "online"
    assert devices["kitchen-pi"]["health"] == {"temp_c": 61.0}
    assert devices["kitchen-pi"]["alerts"] == 3
    assert devices["garage-pi"]["alerts"] == 0
    assert devices["garage-pi"]["status"] == "offline"
    assert devices["hall-pi"]["status"] is None


def test_clip_upload_and_download(api: tuple[TestClient, State]) -> None:
    client, state = api
    alert = seed(state)[0]
    url = f"/api/alerts/{alert['id']}/clip"
    wav = b"RIFF" + bytes(range(256)) * 4
    assert client.get(url, headers=AUTH).status_code == 404
    put = client.put(url, content=wav, headers={**AUTH, "Content-Type": "audio/wav"})
    assert put.status_code == 204, put.text
    got = client.get(url, headers=AUTH)
    assert got.status_code == 200
    assert got.content == wav
    assert got.headers["content-type"] == "audio/wav"
    assert client.get(f"/api/alerts/{alert['id']}", headers=AUTH).json()["listener"]["has_clip"]
    typed = {**AUTH, "Content-Type": "text/plain"}
    assert client.put(url, content=b"x", headers=typed).status_code == 415
    big = client.put(url, content=b"x" * 5000, headers={**AUTH, "Content-Type": "video/mp4"})
    assert big.status_code == 413
    unknown = client.put(
        "/api/alerts/nope/clip", content=wav, headers={**AUTH, "Content-Type": "audio/wav"}
    )
    assert unknown.status_code == 404
    assert client.get(url, headers=AUTH).content == wav  # the rejected uploads changed nothing


def test_openapi_and_metrics(api: tuple[TestClient, State]) -> None:
    client, state = api
    assert client.get("/openapi.json").status_code == 401
    spec = client.get("/openapi.json", headers=AUTH).json()
    assert "/api/alerts" in spec["paths"]
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    state.metrics.count("malformed", 3)
    text = client.get("/metrics", headers=AUTH).text
    assert 'safeguard_listener_alerts_total{outcome="malformed"} 3.0' in text


def test_token_from_environment_or_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SAFEGUARD_API_TOKEN", raising=False)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert read_secret("SAFEGUARD_API_TOKEN", "api_token") == ""
    (tmp_path / "api_token").write_text("from-credentials\n")
    assert read_secret("SAFEGUARD_API_TOKEN", "api_token") == "from-credentials"
    monkeypatch.setenv("SAFEGUARD_API_TOKEN", "from-env")
    assert read_secret("SAFEGUARD_API_TOKEN", "api_token") == "from-env"


def test_the_default_database_is_an_absolute_path_and_a_bad_one_is_said_plainly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sqlalchemy.engine import make_url

    from listener.cli import main

    url = parse({}).database.url  # not relative to the directory it is started in
    assert make_url(url).database == "/var/lib/safeguard-listener/alerts.db"

    (tmp_path / "file").write_text("")
    config = tmp_path / "listener.yaml"
    config.write_text(f"database: {{url: 'sqlite:///{tmp_path}/file/sub/alerts.db'}}\n")
    monkeypatch.setenv("SAFEGUARD_API_TOKEN", TOKEN)
    assert main(["--config", str(config), "--check"]) == 1
    err = capsys.readouterr().err
    assert f"cannot create {tmp_path}/file/sub: Not a directory; choose a writable path" in err
    assert "Traceback" not in err


def test_an_id_two_devices_used_is_addressed_with_its_device(
    api: tuple[TestClient, State],
) -> None:
    client, state = api
    now = datetime.now(timezone.utc)
    kitchen = make_alert("kitchen", id="evt-0001", category="smoke")
    garage = make_alert("garage", id="evt-0001", category="gunshot")
    assert state.store.store_alerts([kitchen, garage], now) == {
        ("kitchen", "evt-0001"), ("garage", "evt-0001")
    }  # fmt: skip
    ambiguous = client.get("/api/alerts/evt-0001", headers=AUTH)
    assert ambiguous.status_code == 409
    assert ambiguous.json()["devices"] == ["garage", "kitchen"]
    assert "?device=" in ambiguous.json()["detail"]
    one = client.get("/api/alerts/evt-0001?device=garage", headers=AUTH)
    assert one.json()["category"] == "gunshot"
    acked = client.post("/api/alerts/evt-0001/ack?device=garage", json={"by": "a"}, headers=AUTH)
    assert acked.json()["listener"]["status"] == "acknowledged"
    kitchen_now = client.get("/api/alerts/evt-0001?device=kitchen", headers=AUTH).json()
    assert kitchen_now["listener"]["status"] == "new"
    wav = {**AUTH, "Content-Type": "audio/wav"}
    url = "/api/alerts/evt-0001/clip"
    assert client.put(url, content=b"RIFF", headers=wav).status_code == 409
    assert client.put(url + "?device=kitchen", content=b"RIFF", headers=wav).status_code == 204
    assert client.get(url + "?device=kitchen", headers=AUTH).content == b"RIFF"
    assert client.get(url + "?device=garage", headers=AUTH).status_code == 404
    assert client.get("/api/alerts/evt-0001?device=nowhere", headers=AUTH).status_code == 404


def test_an_id_with_a_slash(api: tuple[TestClient, State]) -> None:
    """The schema allows any id: one with '/' can be read, acknowledged and given a clip."""
    client, state = api
    alert = make_alert("site-a", id="site/0001/x")
    state.store.store_alerts([alert], datetime.now(timezone.utc))
    base = "/api/alerts/site%2F0001%2Fx"
    assert client.get(base, headers=AUTH).json()["id"] == "site/0001/x"
    acked = client.post(base + "/ack", json={"by": "a"}, headers=AUTH)
    assert acked.status_code == 200, acked.text
    assert acked.json()["listener"]["acknowledged_by"] == "a"
    wav = {**AUTH, "Content-Type": "audio/wav"}
    assert client.put(base + "/clip", content=b"RIFF", headers=wav).status_code == 204
    assert client.get(base + "/clip", headers=AUTH).content == b"RIFF"
    resolved = client.post(base + "/resolve", json={"by": "b"}, headers=AUTH)
    assert resolved.json()["listener"]["status"] == "resolved"
    assert client.get("/api/alerts/site%2F0001", headers=AUTH).status_code == 404


def test_a_database_of_the_first_schema_is_migrated_with_its_data(tmp_path: Path) -> None:
    """A database made by the first release (alerts keyed by id alone) keeps its alerts,
    clips and acknowledgements, and then takes an id that another device used."""
    from alembic import command
    from alembic.config import Config as AlembicConfig

    import listener.store
    from listener.store import Store

    for kind in ("sqlite", "postgresql"):
        for url in listener_database(kind, tmp_path / kind):
            store = Store(url)
            cfg = AlembicConfig()
            folder = Path(listener.store.__file__).parent / "migrations"
            cfg.set_main_option("script_location", str(folder))
            with store.engine.begin() as conn:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "0001")
                conn.exec_driver_sql(
                    "INSERT INTO alerts (id, device_id, event, category, severity, score, "
                    "started_at, sent_at, received_at, payload, status, acknowledged_by) "
                    "VALUES ('evt-1', 'old-pi', 'start', 'glass', 'warning', 0.5, "
                    "'2026-01-01 00:00:00+00', '2026-01-01 00:00:00+00', "
                    '\'2026-01-01 00:00:01+00\', \'{"id": "evt-1", "device_id": "old-pi"}\', '
                    "'acknowledged', 'ann')"
                )
                conn.exec_driver_sql(
                    "INSERT INTO clips (alert_id, content_type, size, uploaded_at, data) "
                    "VALUES ('evt-1', 'audio/wav', 4, '2026-01-01 00:00:02+00', :data)"
                    if kind == "sqlite"
                    else "INSERT INTO clips (alert_id, content_type, size, uploaded_at, data) "
                    "VALUES ('evt-1', 'audio/wav', 4, '2026-01-01 00:00:02+00', 'RIFF')",
                    {"data": b"RIFF"} if kind == "sqlite" else {},
                )
            store.migrate()
            got = store.get_alert("evt-1")
            assert got is not None, kind
            assert got["listener"]["acknowledged_by"] == "ann"
            assert got["listener"]["has_clip"] is True
            assert store.get_clip("evt-1") == ("audio/wav", b"RIFF")
            other = make_alert("new-pi", id="evt-1")
            assert store.store_alerts([other], datetime.now(timezone.utc)) == {("new-pi", "evt-1")}
            assert store.get_alert("evt-1", "new-pi") is not None
            store.close()


def test_acknowledging_or_resolving_applies_to_the_whole_event(
    api: tuple[TestClient, State],
) -> None:
    """start, update (with the clip) and end share `event_id`: one decision for all three."""
    client, state = api
    now = datetime.now(timezone.utc)
    start = make_alert("porch-pi", event="start", score=0.8)
    update = make_alert("porch-pi", event="update", score=0.1, event_id=start["id"])
    end = make_alert("porch-pi", event="end", score=0.0, event_id=start["id"])
    other = make_alert("porch-pi", event="start")
    elsewhere = make_alert("hall-pi", event="end", event_id=start["id"])  # another device
    state.store.store_alerts([start, update, end, other, elsewhere], now)
    acked = client.post(f"/api/alerts/{start['id']}/ack", json={"by": "ann"}, headers=AUTH)
    assert acked.json()["id"] == start["id"]

    def status(alert: dict[str, Any]) -> tuple[str, str | None, str | None]:
        url = f"/api/alerts/{alert['id']}?device={alert['device_id']}"
        got = client.get(url, headers=AUTH).json()["listener"]
        return got["status"], got["acknowledged_by"], got["resolved_by"]

    assert [status(a) for a in (start, update, end)] == [("acknowledged", "ann", None)] * 3
    assert status(other) == ("new", None, None)
    assert status(elsewhere) == ("new", None, None)
    done = client.post(f"/api/alerts/{end['id']}/resolve", json={"by": "bob"}, headers=AUTH)
    assert done.json()["id"] == end["id"]
    assert [status(a) for a in (start, update, end)] == [("resolved", "ann", "bob")] * 3
    again = client.post(f"/api/alerts/{update['id']}/resolve", json={"by": "eve"}, headers=AUTH)
    assert again.json()["listener"]["resolved_by"] == "bob"  # the first resolution is kept


def test_event_filter_keyset_paging_and_summary(api: tuple[TestClient, State]) -> None:
    """`event_id=` lists one event's messages; `before`/`before_id` page through messages that
    share a receive time (one batch) without skipping any; `/api/summary` counts what is
    unacknowledged, an event once."""
    client, state = api
    batch_time = datetime(2026, 2, 1, tzinfo=timezone.utc)
    batch = [make_alert("busy-pi", severity="info") for _ in range(7)]
    state.store.store_alerts(batch, batch_time)  # one received_at for all seven
    start = make_alert("porch-pi", event="start", severity="critical")
    update = make_alert("porch-pi", event="update", event_id=start["id"], severity="critical")
    end = make_alert("porch-pi", event="end", event_id=start["id"], severity="critical")
    state.store.store_alerts([start], batch_time + timedelta(seconds=1))
    state.store.store_alerts([update, end], batch_time + timedelta(seconds=2))

    got = client.get(f"/api/alerts?event_id={start['id']}&device=porch-pi", headers=AUTH)
    assert sorted(ids(got)) == sorted(str(a["id"]) for a in (start, update, end))

    seen: list[str] = []
    query = "/api/alerts?limit=3"
    for _ in range(5):  # bounded: a server that ignored `before` would repeat page one
        page = client.get(query, headers=AUTH)
        seen += ids(page)
        if len(page.json()) < 3:
            break
        last = page.json()[-1]
        query = (
            f"/api/alerts?limit=3&before={last['listener']['received_at']}&before_id={last['id']}"
        ).replace("+", "%2B")
    assert len(seen) == len(set(seen)) == 10
    assert seen == ids(client.get("/api/alerts?limit=100", headers=AUTH))
    assert client.get("/api/alerts?before_id=x", headers=AUTH).status_code == 400

    counts = client.get("/api/summary", headers=AUTH).json()
    assert counts == {"new_alerts": 10, "new_events": 8, "new_critical_events": 1}
    late = make_alert("porch-pi", event="end", event_id=start["id"])
    client.post(f"/api/alerts/{update['id']}/ack", json={"by": "ann"}, headers=AUTH)
    state.store.store_alerts([late], batch_time + timedelta(seconds=3))  # after the ack
    counts = client.get("/api/summary", headers=AUTH).json()
    assert counts == {"new_alerts": 7, "new_events": 7, "new_critical_events": 0}  # late: handled

    day = client.get("/api/alerts?since=2026-02-01&limit=1000", headers=AUTH)
    assert len(ids(day)) == 11
    assert ids(client.get("/api/alerts?since=2026-02-02", headers=AUTH)) == []
    assert client.get("/api/alerts?since=0", headers=AUTH).status_code == 400  # not the epoch


def test_a_later_note_is_added_and_a_password_with_at_is_hidden(
    api: tuple[TestClient, State],
) -> None:
    from listener.store import public_url

    client, state = api
    alert = make_alert("porch-pi")
    state.store.store_alerts([alert], datetime.now(timezone.utc))
    url = f"/api/alerts/{alert['id']}"
    client.post(url + "/ack", json={"by": "alice", "note": "first"}, headers=AUTH)
    client.post(url + "/ack", json={"by": "bob", "note": "second"}, headers=AUTH)
    got = client.post(url + "/resolve", json={"by": "carol"}, headers=AUTH).json()["listener"]
    assert (got["acknowledged_by"], got["resolved_by"]) == ("alice", "carol")
    assert got["note"] == "first\nbob: second"
    shown = public_url("postgresql://postgres:s3cr@tpw@127.0.0.1:1/nodb")
    assert shown == "postgresql://postgres@127.0.0.1:1/nodb"


def test_a_leap_second_is_a_valid_time() -> None:
    import json

    from listener.checks import check_alert

    alert = make_alert(
        "porch-pi", started_at="2016-12-31T23:59:60Z", sent_at="2016-12-31T23:59:60.5Z"
    )
    got = check_alert("safeguard/porch-pi/alert", json.dumps(alert).encode(), "safeguard", 65536)
    assert got["started_at"] == "2016-12-31T23:59:60Z"
    from listener.store import parse_time

    assert parse_time("2016-12-31T23:59:60Z").isoformat() == "2016-12-31T23:59:59.999999+00:00"


def test_a_message_stored_after_its_event_was_handled_is_handled(
    api: tuple[TestClient, State],
) -> None:
    """The end of an event that was already acknowledged (or resolved) is not a new alert
    waiting for someone: it takes the start's handling."""
    client, state = api
    start = make_alert("porch-pi", event="start")
    start["event_id"] = start["id"]
    other = make_alert("porch-pi", event="start")
    state.store.store_alerts([start, other], datetime.now(timezone.utc))
    client.post(f"/api/alerts/{start['id']}/ack", json={"by": "ann"}, headers=AUTH)
    update = make_alert("porch-pi", event="update", event_id=start["id"])
    late_other = make_alert("porch-pi", event="end", event_id=other["id"])
    state.store.store_alerts([update, late_other], datetime.now(timezone.utc))
    got = client.get(f"/api/alerts/{update['id']}", headers=AUTH).json()["listener"]
    assert (got["status"], got["acknowledged_by"]) == ("acknowledged", "ann")
    assert (
        client.get(f"/api/alerts/{late_other['id']}", headers=AUTH).json()["listener"]["status"]
        == "new"
    )
    client.post(f"/api/alerts/{start['id']}/resolve", json={"by": "bob"}, headers=AUTH)
    end = make_alert("porch-pi", event="end", event_id=start["id"])
    state.store.store_alerts([end], datetime.now(timezone.utc))
    got = client.get(f"/api/alerts/{end['id']}", headers=AUTH).json()["listener"]
    assert (got["status"], got["acknowledged_by"], got["resolved_by"]) == ("resolved", "ann", "bob")
    assert client.get("/api/alerts?status=new", headers=AUTH).json()[0]["id"] == late_other["id"]


def test_a_whole_number_score_comes_back_as_sent(api: tuple[TestClient, State]) -> None:
    client, state = api
    alert = make_alert("porch-pi", score=1)
    state.store.store_alerts([alert], datetime.now(timezone.utc))
    body = client.get(f"/api/alerts/{alert['id']}", headers=AUTH).text
    assert '"score":1,' in body


NOTES_MAX_CHARS = 20_000  # as docs/listener.md says


def test_the_notes_of_one_alert_are_bounded(api: tuple[TestClient, State]) -> None:
    """Each note is at most 2000 characters, but notes kept being appended: one client could
    grow an alert's row without end. All notes of an alert together (with the `<by>: ` of the
    later ones) are at most 20,000 characters; a note beyond that is refused with 413 and
    changes nothing, not even the acknowledgement it came with."""
    client, state = api
    alert = make_alert("porch-pi")
    state.store.store_alerts([alert], datetime.now(timezone.utc))
    url = f"/api/alerts/{alert['id']}"
    for i in range(9):  # 2000 + 8 * (2000 + len("\nalice: ")) = 18,064 characters
        body = {"by": "alice", "note": str(i) * 2000}
        assert client.post(url + "/ack", json=body, headers=AUTH).status_code == 200
    fits = NOTES_MAX_CHARS - 18_064 - len("\nbob: ")
    last = client.post(url + "/ack", json={"by": "bob", "note": "x" * fits}, headers=AUTH)
    assert last.status_code == 200, last.text
    assert len(last.json()["listener"]["note"]) == NOTES_MAX_CHARS

    refused = client.post(url + "/resolve", json={"by": "bob", "note": "y"}, headers=AUTH)
    assert refused.status_code == 413
    assert refused.headers["content-type"] == "application/json"
    detail = refused.json()["detail"]
    assert f"longer than {NOTES_MAX_CHARS} characters ({NOTES_MAX_CHARS} now)" in detail
    got = client.get(url, headers=AUTH).json()["listener"]
    assert got["status"] == "acknowledged"  # the refused resolve did not happen
    assert len(got["note"]) == NOTES_MAX_CHARS
    assert got["note"].endswith("\nbob: " + "x" * fits)
    # handling without a note still works, and another alert has notes of its own
    done = client.post(url + "/resolve", json={"by": "bob"}, headers=AUTH)
    assert done.json()["listener"]["status"] == "resolved"
    other = make_alert("porch-pi")
    state.store.store_alerts([other], datetime.now(timezone.utc))
    body = {"by": "bob", "note": "fine"}
    assert client.post(f"/api/alerts/{other['id']}/ack", json=body, headers=AUTH).status_code == 200
    from listener import store

    assert store.NOTES_MAX_CHARS == NOTES_MAX_CHARS

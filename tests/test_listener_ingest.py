"""Ingest against a real Mosquitto, with SQLite and with PostgreSQL."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from listener.config import ListenerConfig, parse
from listener.ingest import Ingest
from listener.metrics import Metrics
from listener.store import AlertFilter, Store
from tests.helpers import DeviceClient, Mosquitto, listener_database, make_alert


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from listener_database(request.param, tmp_path)


def config(port: int, url: str, **mqtt: object) -> ListenerConfig:
    return parse(
        {"mqtt": {"port": port, "max_message_bytes": 4096, **mqtt}, "database": {"url": url}}
    )


def wait_for(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met after {timeout} s")
        time.sleep(0.02)


@pytest.fixture
def running(mosquitto: Mosquitto, db_url: str) -> Iterator[tuple[Ingest, Store, Metrics]]:
    store = Store(db_url)
    store.migrate()
    metrics = Metrics()
    ingest = Ingest(config(mosquitto.port, db_url), store, metrics)
    ingest.start()
    assert ingest.connected.wait(10)
    time.sleep(0.2)  # SUBACK
    yield ingest, store, metrics
    ingest.stop()
    store.close()


def test_valid_duplicate_and_bad_messages(
    running: tuple[Ingest, Store, Metrics], mosquitto: Mosquitto
) -> None:
    ingest, store, metrics = running
    device = DeviceClient(mosquitto.port)
    stored_when_acked: list[bool] = []
    device.on_ack.append(
        lambda ack: stored_when_acked.append(store.get_alert(ack["id"]) is not None)
    )
    first = make_alert("kitchen-pi", location={"lat": 27.49, "lon": 77.67})
    second = make_alert("kitchen-pi", category="gunshot", event="end", event_id=first["id"])
    device.publish_alert(first)
    device.publish_alert(first)  # a resend: stored once, acked again
    device.publish_raw("kitchen-pi", b"{not json")
    device.publish_raw("kitchen-pi", json.dumps({**make_alert("kitchen-pi"), "score": 7}).encode())
    device.publish_raw("kitchen-pi", b'{"score": NaN}')
    device.publish_raw("kitchen-pi", json.dumps(make_alert("kitchen-pi", pad="x" * 5000)).encode())
    device.publish_alert(make_alert("hall-pi"), device="kitchen-pi")  # spoofed device id
    device.publish_raw("kitchen-pi", b"\xff\xfe")
    device.publish_alert(second)
    acks = device.wait_acks(3)
    wait_for(lambda: metrics.value("malformed") == 4 and metrics.value("spoofed") == 1)
    time.sleep(0.3)  # nothing more may arrive
    assert len(device.acks) == 3
    assert sorted(str(a["id"]) for a in acks) == sorted(
        str(i) for i in [first["id"], first["id"], second["id"]]
    )
    assert all(a["status"] == "stored" and a["_topic"] == "safeguard/kitchen-pi/ack" for a in acks)
    assert stored_when_acked == [True, True, True]
    assert store.count_alerts() == 2
    assert metrics.value("stored") == 2
    assert metrics.value("duplicate") == 1
    assert metrics.value("oversized") == 1
    got = store.get_alert(str(first["id"]))
    assert got is not None
    assert got["listener"]["lat"] == 27.49
    assert got["listener"]["status"] == "new"
    newest = store.list_alerts(AlertFilter(), 10, 0)
    assert [a["id"] for a in newest] == [second["id"], first["id"]]
    assert ingest.connected.is_set()
    device.close()


def test_device_status_and_health(
    running: tuple[Ingest, Store, Metrics], mosquitto: Mosquitto
) -> None:
    _ingest, store, metrics = running
    device = DeviceClient(mosquitto.port)
    device.publish_raw("porch-pi", b"online", suffix="status")
    device.publish_raw("porch-pi", json.dumps({"temp_c": 51.5, "drops": 0}).encode(), "health")
    device.publish_raw("attic-pi", b"exploded", suffix="status")
    device.publish_raw("attic-pi", b"[1, 2]", suffix="health")

    def malformed(kind: str) -> float | None:
        return metrics.registry.get_sample_value(
            "safeguard_listener_device_messages_total", {"kind": kind, "outcome": "malformed"}
        )

    # the four messages are handled in order: once the last is counted, all were
    wait_for(lambda: malformed("health") == 1)
    devices = {d["device_id"]: d for d in store.list_devices()}
    assert devices["porch-pi"]["status"] == "online"
    assert devices["porch-pi"]["health"] == {"temp_c": 51.5, "drops": 0}
    assert "attic-pi" not in devices
    assert malformed("status") == 1
    device.close()


def test_survives_a_broker_restart(
    running: tuple[Ingest, Store, Metrics], mosquitto: Mosquitto
) -> None:
    ingest, store, _metrics = running
    mosquitto.restart()
    wait_for(ingest.connected.is_set, timeout=20)
    time.sleep(0.3)
    device = DeviceClient(mosquitto.port)
    alert = make_alert("after-restart")
    device.publish_alert(alert)
    device.wait_acks(1)
    assert store.get_alert(str(alert["id"])) is not None
    device.close()


def test_two_instances_share_the_load(mosquitto: Mosquitto, db_url: str) -> None:
    store = Store(db_url)
    store.migrate()
    group = [Ingest(config(mosquitto.port, db_url), Store(db_url), Metrics()) for _ in range(2)]
    for member in group:
        member.start()
        assert member.connected.wait(10)
    time.sleep(0.3)
    device = DeviceClient(mosquitto.port)
    sent = [make_alert(f"dev-{i % 7}") for i in range(200)]
    for alert in sent:
        device.publish_alert(alert)
    for alert in sent[:20]:
        device.publish_alert(alert)
    device.wait_acks(220, timeout=30)
    stored = [m.metrics.value("stored") for m in group]
    assert sum(stored) == 200
    assert all(n > 0 for n in stored), stored  # both members took a share
    assert store.count_alerts() == 200
    for member in group:
        member.stop()
        member.store.close()
    store.close()
    device.close()


def test_an_unreachable_broker_is_said_once_per_streak(
    mosquitto: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A listener started while the broker is down says so (once, not per attempt) and
    connects by itself when the broker comes up."""
    mosquitto.stop()
    url = f"sqlite:///{tmp_path / 'alerts.db'}"
    store = Store(url)
    store.migrate()
    ingest = Ingest(config(mosquitto.port, url), store, Metrics())
    with caplog.at_level(logging.DEBUG, logger="listener.ingest"):
        ingest.start()
        try:
            time.sleep(3.5)  # attempts 1-2 s apart
            said = [r for r in caplog.records if "cannot reach the broker" in r.getMessage()]
            assert [r.levelno for r in said][:1] == [logging.WARNING]
            assert len(said) >= 2
            assert all(r.levelno == logging.DEBUG for r in said[1:])
            assert not ingest.connected.is_set()
            mosquitto.start()
            assert ingest.connected.wait(40)
        finally:
            ingest.stop()
            store.close()


def test_sqlite_commits_are_durable_before_the_ack(tmp_path: Path) -> None:
    """WAL with synchronous=NORMAL does not sync a commit: after a power cut an alert the
    device was told is stored could be gone. FULL syncs the WAL on every commit."""
    store = Store(f"sqlite:///{tmp_path / 'alerts.db'}")
    store.migrate()
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar_one() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
    store.close()


def test_two_devices_may_use_the_same_id(
    running: tuple[Ingest, Store, Metrics], mosquitto: Mosquitto
) -> None:
    """Deduplication is per device: a garage's gunshot numbered like the kitchen's smoke
    alert is stored (and acked as stored) instead of being dropped as a resend."""
    _ingest, store, metrics = running
    device = DeviceClient(mosquitto.port)
    smoke = make_alert("kitchen", id="evt-0001", category="smoke", severity="warning")
    gunshot = make_alert("garage", id="evt-0001", category="gunshot")
    device.publish_alert(smoke)
    device.publish_alert(gunshot)
    device.publish_alert(gunshot)  # a real resend
    acks = device.wait_acks(3)
    assert sorted(str(a["_topic"]) for a in acks) == [
        "safeguard/garage/ack", "safeguard/garage/ack", "safeguard/kitchen/ack"
    ]  # fmt: skip
    wait_for(lambda: metrics.value("stored") == 2 and metrics.value("duplicate") == 1)
    stored = {a["device_id"]: a for a in store.list_alerts(AlertFilter(), 10, 0)}
    assert set(stored) == {"kitchen", "garage"}
    assert stored["garage"]["category"] == "gunshot"
    got = store.get_alert("evt-0001", "garage")
    assert got is not None
    assert got["category"] == "gunshot"
    device.close()


def test_retained_status_and_health_keep_their_time(
    running: tuple[Ingest, Store, Metrics], mosquitto: Mosquitto
) -> None:
    """The broker sends its retained copies again on every (re)connect: they must not make
    a device that died long ago look as if it spoke a moment ago."""
    ingest, store, metrics = running
    device = DeviceClient(mosquitto.port)
    for suffix, payload in (("status", b"online"), ("health", b'{"temp_c": 50}')):
        device.client.publish(f"safeguard/attic-pi/{suffix}", payload, qos=1, retain=True)

    def stored(kind: str) -> float | None:
        return metrics.registry.get_sample_value(
            "safeguard_listener_device_messages_total", {"kind": kind, "outcome": "stored"}
        )

    wait_for(lambda: stored("status") == 1 and stored("health") == 1)
    before = {d["device_id"]: d for d in store.list_devices()}["attic-pi"]
    assert before["status_at"] is not None
    device.client.publish("safeguard/attic-pi/status", b"offline", qos=1, retain=True)
    wait_for(lambda: stored("status") == 2)
    died = {d["device_id"]: d for d in store.list_devices()}["attic-pi"]
    time.sleep(1.1)
    ingest.stop()  # a listener restart: the broker re-delivers both retained messages
    ingest.start()
    assert ingest.connected.wait(10)
    time.sleep(1.0)
    after = {d["device_id"]: d for d in store.list_devices()}["attic-pi"]
    assert after["status"] == "offline"
    assert after["status_at"] == died["status_at"]
    assert after["health_at"] == before["health_at"]
    device.close()


def test_a_lower_case_z_is_utc(
    running: tuple[Ingest, Store, Metrics], mosquitto: Mosquitto
) -> None:
    """RFC 3339 lets the UTC designator be `z`: such an alert is stored (at the right time)
    and acked like any other, not dropped as malformed."""
    from datetime import datetime, timezone

    from sqlalchemy import select

    from listener.models import alerts

    _ingest, store, metrics = running
    device = DeviceClient(mosquitto.port)
    alert = make_alert(
        "kitchen-pi", started_at="2026-11-21T10:00:00.000z", sent_at="2026-11-21T10:00:01z"
    )
    device.publish_alert(alert)
    [ack] = device.wait_acks(1)
    assert ack["id"] == alert["id"]
    assert metrics.value("malformed") == 0
    with store.engine.connect() as conn:
        started, sent = conn.execute(
            select(alerts.c.started_at, alerts.c.sent_at).where(alerts.c.id == alert["id"])
        ).one()
    utc = timezone.utc
    assert started.replace(tzinfo=started.tzinfo or utc) == datetime(2026, 11, 21, 10, tzinfo=utc)
    assert sent.replace(tzinfo=sent.tzinfo or utc) == datetime(2026, 11, 21, 10, 0, 1, tzinfo=utc)
    got = store.get_alert(str(alert["id"]))
    assert got is not None
    assert got["started_at"] == "2026-11-21T10:00:00.000z"  # the message as it was sent
    device.close()

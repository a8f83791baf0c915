"""The listener down: SMS within ack_timeout + 5 s, exactly once per alert and contact."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.delivery import AlertsConfig, DeliveryService, run_test_alert
from edge.mqtt import MqttConfig
from edge.outbox import Outbox
from tests.delivery_helpers import Acker, make_event
from tests.helpers import Mosquitto
from tests.twilio_fake import FakeTwilio

CONTACTS = ["+15550000001", "+15550000002"]


@pytest.fixture
def twilio() -> Iterator[FakeTwilio]:
    fake = FakeTwilio()
    fake.start()
    yield fake
    fake.stop()


def alerts_config(twilio: FakeTwilio, **extra: object) -> AlertsConfig:
    return AlertsConfig.model_validate(
        {
            "ack_timeout": 3,
            "sms": {
                "enabled": True,
                "account_sid": twilio.account_sid,
                "api_base_url": twilio.url,
                "from": "+15550000000",
                "to": CONTACTS,
                "backoff": 0.05,
            },
            "voice": {
                "enabled": True,
                "account_sid": twilio.account_sid,
                "api_base_url": twilio.url,
                "from": "+15550000000",
                "to": CONTACTS[:1],
            },
            **extra,
        }
    )


def test_listener_down_sms_once(mosquitto: Mosquitto, twilio: FakeTwilio, tmp_path: Path) -> None:
    acker = Acker(mosquitto.port)
    acker.online = False  # the listener is down: alerts reach the broker, nobody acks
    twilio.fail_next(500)  # Twilio answers 500, then 201: still exactly one SMS
    outbox = Outbox(tmp_path / "o.db", "dev-1", {"lat": 27.49, "lon": 77.67})
    env = {"SAFEGUARD_TWILIO_AUTH_TOKEN": twilio.auth_token}
    alerts = alerts_config(twilio, resend_after=1)
    svc = DeliveryService(MqttConfig(port=mosquitto.port), alerts, outbox, "dev-1", environ=env)
    svc.start()
    try:
        assert svc.link.wait_connected(10)
        raised = time.monotonic()
        outbox.submit(make_event(1, severity="warning"))
        outbox.submit(make_event(2, severity="critical"))
        outbox.submit(make_event(3, severity="info"))  # below min_severity: no SMS
        outbox.submit(make_event(4, severity="warning", phase="update"))  # not a start
        ids = [a["id"] for a in outbox.pending()]
        deadline = raised + alerts.ack_timeout + 5
        while len(twilio.messages) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        sent_at = [t for t, path, status in twilio.requests if status == 201 and "Messages" in path]
        assert len(sent_at) == 4
        assert max(sent_at) <= deadline
        assert min(sent_at) >= raised + alerts.ack_timeout - 0.5  # not before the ack timeout
        time.sleep(3)  # alerts are still unacked and republished: no SMS is repeated
        pairs = sorted((m["to"], m["body"]) for m in twilio.messages)
        assert len(pairs) == 4
        assert len(set(pairs)) == 4
        assert {to for to, _ in pairs} == set(CONTACTS)
        assert all("maps.google.com/?q=27.49,77.67" in body for _, body in pairs)
        assert [status for _, _, status in twilio.requests].count(500) == 1
        assert len(twilio.calls) == 1  # one voice call: only the critical alert
        for alert_id, sms_count in zip(ids, (2, 2, 0, 0), strict=True):
            results = outbox.fallback_results(alert_id)
            assert sum(1 for ch, _, state, _ in results if ch == "sms" and state == "sent") == (
                sms_count
            )
        assert svc.stats()["sms_sent"] == 4
        assert outbox.depth() == 4  # still pending: the listener will get them when back
        acker.online = True
        assert acker.wait_for(set(ids), 10) == set()
    finally:
        svc.stop(5)
        acker.close()


def test_rate_limit_defers_and_records(
    mosquitto: Mosquitto, twilio: FakeTwilio, tmp_path: Path
) -> None:
    outbox = Outbox(tmp_path / "o.db", "dev-1")
    env = {"SAFEGUARD_TWILIO_AUTH_TOKEN": twilio.auth_token}
    alerts = alerts_config(twilio, ack_timeout=1)
    alerts = alerts.model_copy(
        update={"sms": alerts.sms.model_copy(update={"rate_per_hour": 3}), "voice": alerts.voice}
    )
    svc = DeliveryService(MqttConfig(port=mosquitto.port), alerts, outbox, "dev-1", environ=env)
    svc.start()
    try:
        for n in range(3):
            outbox.submit(make_event(n))
        deadline = time.monotonic() + 8
        while svc.stats().get("sms_deferred", 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        assert len(twilio.messages) == 3  # the hourly limit holds
        states = [s for a in outbox.pending() for _, _, s, _ in outbox.fallback_results(a["id"])]
        assert states.count("sent") == 3
        assert states.count("deferred") == 3  # recorded with the alert, tried again later
    finally:
        svc.stop(5)


def test_test_alert_all_channels(mosquitto: Mosquitto, twilio: FakeTwilio, tmp_path: Path) -> None:
    acker = Acker(mosquitto.port)
    env = {"SAFEGUARD_TWILIO_AUTH_TOKEN": twilio.auth_token}
    results = run_test_alert(
        MqttConfig(port=mosquitto.port), alerts_config(twilio), "dev-9", environ=env
    )
    assert [(c, ok) for c, ok, _ in results] == [
        ("mqtt", True),
        ("sms:+15550000001", True),
        ("sms:+15550000002", True),
        ("voice:+15550000001", True),
    ]
    assert len(twilio.messages) == 2
    acker.close()
    missing = run_test_alert(
        MqttConfig(port=mosquitto.port), alerts_config(twilio), "d", environ={}
    )
    assert missing[-1][0] == "fallback"
    assert not missing[-1][1]
    assert "SAFEGUARD_TWILIO_AUTH_TOKEN" in missing[-1][2]


def test_broker_unreachable_sms_without_waiting(
    mosquitto: Mosquitto, twilio: FakeTwilio, tmp_path: Path
) -> None:
    outbox = Outbox(tmp_path / "o.db", "dev-1")
    env = {"SAFEGUARD_TWILIO_AUTH_TOKEN": twilio.auth_token}
    alerts = alerts_config(twilio)  # ack_timeout 3 s
    svc = DeliveryService(MqttConfig(port=mosquitto.port), alerts, outbox, "dev-1", environ=env)
    svc.start()
    try:
        assert svc.link.wait_connected(10)
        mosquitto.stop()
        time.sleep(alerts.ack_timeout + 0.5)  # the broker has been unreachable that long
        raised = time.monotonic()
        outbox.submit(make_event(1))
        while len(twilio.messages) < 2 and time.monotonic() < raised + alerts.ack_timeout:
            time.sleep(0.05)
        assert len(twilio.messages) == 2  # sent before this alert's own ack_timeout
        assert time.monotonic() - raised < alerts.ack_timeout
    finally:
        svc.stop(5)


def test_a_channel_without_its_secret_is_off_and_mqtt_goes_on(
    mosquitto: Mosquitto, twilio: FakeTwilio, tmp_path: Path
) -> None:
    """SMS enabled without the Twilio token used to stop the daemon at start (and under
    systemd, after five restarts, for good): MQTT alerts were lost with it. Now the channel is
    off, the log and health say why, and alerts are still published and acked."""
    acker = Acker(mosquitto.port)
    outbox = Outbox(tmp_path / "o.db", "dev-1")
    svc = DeliveryService(
        MqttConfig(port=mosquitto.port), alerts_config(twilio), outbox, "dev-1", environ={}
    )
    svc.start()
    try:
        outbox.submit(make_event(1, severity="critical"))
        [alert_id] = [a["id"] for a in outbox.pending()]
        assert acker.wait_for({alert_id}, 10) == set()
        off = svc.stats()["fallback_off"]
        assert [line.split(":")[0] for line in off] == ["sms", "voice"]
        assert "SAFEGUARD_TWILIO_AUTH_TOKEN" in off[0]
    finally:
        svc.stop(5)
        acker.close()

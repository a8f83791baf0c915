"""Delivery against a real Mosquitto: ack path, status, retained state/health, discovery."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge.delivery import AlertsConfig, DeliveryService, run_test_alert
from edge.mqtt import MqttConfig, MqttLink
from edge.outbox import Outbox
from tests.delivery_helpers import Acker, make_event
from tests.helpers import Mosquitto


class Watcher:
    """Records the last retained/live payload per topic under `pattern`."""

    def __init__(self, port: int, pattern: str) -> None:
        self.last: dict[str, str] = {}
        self.count: dict[str, int] = {}
        self.cond = threading.Condition()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"watch-{port}")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(pattern, qos=1)
        self.client.loop_start()

    def _on_message(self, client: object, userdata: object, message: paho.MQTTMessage) -> None:
        with self.cond:
            self.last[message.topic] = message.payload.decode()
            self.count[message.topic] = self.count.get(message.topic, 0) + 1
            self.cond.notify_all()

    def wait(self, topic: str, value: str | None = None, timeout: float = 10.0) -> str:
        with self.cond:
            ok = self.cond.wait_for(
                lambda: topic in self.last and (value is None or self.last[topic] == value),
                timeout,
            )
            assert ok, f"{topic} = {self.last.get(topic)!r}, wanted {value!r}"
            return self.last[topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def service(mosquitto: Mosquitto, tmp_path: Path) -> Iterator[DeliveryService]:
    outbox = Outbox(tmp_path / "outbox.db", "dev-1")
    svc = DeliveryService(MqttConfig(port=mosquitto.port), AlertsConfig(), outbox, "dev-1")
    yield svc
    svc.stop(5.0)
    outbox.close()


def test_contract_defaults() -> None:
    config = MqttConfig.model_validate({})
    assert (config.host, config.port, config.prefix) == ("127.0.0.1", 1883, "safeguard")
    assert AlertsConfig.model_validate({}).ack_timeout == 20.0
    assert MqttConfig.model_validate({"protocol": 5}).protocol == "5"
    with pytest.raises(ValueError, match="extra"):
        MqttConfig.model_validate({"password": "x"})


def test_alert_acked_end_to_end(mosquitto: Mosquitto, service: DeliveryService) -> None:
    watcher = Watcher(mosquitto.port, "safeguard/dev-1/#")
    acker = Acker(mosquitto.port)
    acked: list[str] = []
    service._on_ack = acked.append
    service.start()
    watcher.wait("safeguard/dev-1/status", "online")
    service.outbox.submit(make_event(1, severity="critical"))
    [alert_id] = [a["id"] for a in service.outbox.pending()]
    assert acker.wait_for({alert_id}, 10) == set()
    deadline = time.monotonic() + 10
    while service.outbox.depth() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert service.outbox.depth() == 0
    assert acked == [alert_id]
    stats = service.stats()
    assert stats["acked"] == 1
    assert stats["connected"] is True
    assert stats["sent"] >= 1
    alert = json.loads(watcher.wait("safeguard/dev-1/alert"))
    assert alert["id"] == alert_id
    assert alert["schema"] == "safeguard.alert/1"
    service.stop(5.0)
    watcher.wait("safeguard/dev-1/status", "stopped")
    acker.close()
    watcher.close()


def test_a_topic_the_client_refuses_does_not_stop_delivery(
    mosquitto: Mosquitto, service: DeliveryService, caplog: pytest.LogCaptureFixture
) -> None:
    """A state topic with a wildcard (a category named `siren+`) made paho raise in the sender
    thread, which died: no alert was ever published again."""
    service.publish_state("siren+", True)
    service.publish_state("scream", True)
    acker = Acker(mosquitto.port)
    watcher = Watcher(mosquitto.port, "safeguard/dev-1/#")
    service.start()
    service.outbox.submit(make_event(1, severity="critical"))
    [alert_id] = [a["id"] for a in service.outbox.pending()]
    assert acker.wait_for({alert_id}, 10) == set()
    watcher.wait("safeguard/dev-1/state/scream", "ON")
    assert "cannot publish on 'safeguard/dev-1/state/siren+'" in caplog.text
    acker.close()
    watcher.close()


def test_health_state_and_discovery(mosquitto: Mosquitto, service: DeliveryService) -> None:
    service.publish_health({"latency_ms": 12})  # before connecting: kept and sent later
    service.publish_state("scream", True)
    service.start()
    watcher = Watcher(mosquitto.port, "#")  # subscribes after: gets the retained ones
    assert json.loads(watcher.wait("safeguard/dev-1/health")) == {"latency_ms": 12}
    watcher.wait("safeguard/dev-1/state/scream", "ON")
    topic = "homeassistant/binary_sensor/dev_1/scream/config"
    config = json.loads(watcher.wait(topic))
    assert config["state_topic"] == "safeguard/dev-1/state/scream"
    assert config["availability"][0]["topic"] == "safeguard/dev-1/status"
    service.publish_state("scream", False)
    service.publish_state("drone", True)  # a new category gets announced too
    watcher.wait("safeguard/dev-1/state/scream", "OFF")
    watcher.wait("homeassistant/binary_sensor/dev_1/drone/config")
    # only what the device uses: no sensor that would never get a state
    announced = {t.split("/")[3] for t in watcher.last if t.startswith("homeassistant/")}
    assert announced == {"scream", "drone", "problem"}
    before = watcher.count[topic]
    watcher.client.publish("homeassistant/status", "online", qos=1)  # HA restarted
    with watcher.cond:
        assert watcher.cond.wait_for(lambda: watcher.count[topic] > before, 10)
    watcher.close()


def test_retired_categories_and_discovery_off_clear_what_an_earlier_run_left(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """A crash left `state/scream` ON and its sensor announced; the next run has scream
    disabled (or no microphone) and Home Assistant discovery off: Home Assistant showed
    "Unsafe" for ever. Now the state and every sensor of this device are removed."""
    first = DeliveryService(
        MqttConfig(port=mosquitto.port), AlertsConfig(), Outbox(tmp_path / "1.db", "d"), "d"
    )
    first.publish_state("scream", True)
    first.publish_state("violence", False)
    first.start()
    watcher = Watcher(mosquitto.port, "#")
    watcher.wait("homeassistant/binary_sensor/d/scream/config")
    watcher.wait("safeguard/d/state/scream", "ON")
    first.stop(5)  # the retained ON stays at the broker, as after a crash
    watcher.close()
    ha_off = MqttConfig.model_validate(
        {"port": mosquitto.port, "homeassistant": {"enabled": False}}
    )
    second = DeliveryService(ha_off, AlertsConfig(), Outbox(tmp_path / "2.db", "d"), "d")
    second.publish_state("violence", False)
    second.retire(["gunshot", "scream"])
    second.start()
    watcher = Watcher(mosquitto.port, "safeguard/d/status")
    watcher.wait("safeguard/d/status", "online")
    time.sleep(1.0)
    second.stop(5)
    watcher.close()
    retained = Watcher(mosquitto.port, "#")  # what a new subscriber (Home Assistant) gets
    time.sleep(1.0)
    kept = {t: v for t, v in retained.last.items() if v}
    retained.close()
    assert "safeguard/d/state/scream" not in kept
    assert kept["safeguard/d/state/violence"] == "OFF"
    assert not [t for t in kept if t.startswith("homeassistant/")], kept


def test_the_problem_sensor_reads_the_health_message() -> None:
    """The diagnostic sensor's template, rendered as Home Assistant renders it (Jinja2's
    immutable sandbox), on health messages of a working and of a deaf device."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from edge import homeassistant

    messages = homeassistant.discovery_messages(
        homeassistant.HomeAssistantConfig(), "safeguard", "d", ["scream"]
    )
    problem = json.loads(dict(messages)["homeassistant/binary_sensor/d/problem/config"])
    assert problem["state_topic"] == problem["json_attributes_topic"] == "safeguard/d/health"
    assert problem["default_entity_id"] == "binary_sensor.safeguard_d_problem"
    template = ImmutableSandboxedEnvironment().from_string(problem["value_template"])

    def state(**health: object) -> str:
        return template.render(value_json={"capture": "running", "delivery": {}, **health})

    assert state() == "OFF"
    assert state(capture="none", video_capture="running") == "OFF"  # a camera-only device
    assert state(capture="retrying") == "ON"
    assert state(video_capture="retrying") == "ON"
    assert state(delivery={"fallback_off": ["sms: secret missing"]}) == "ON"


def test_last_will_offline(mosquitto: Mosquitto, tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db", "dev-2")
    svc = DeliveryService(
        MqttConfig(port=mosquitto.port, keepalive=5), AlertsConfig(), outbox, "dev-2"
    )
    svc.start()
    watcher = Watcher(mosquitto.port, "safeguard/dev-2/status")
    watcher.wait("safeguard/dev-2/status", "online")
    svc.link._client._sock.close()  # type: ignore[union-attr]  # the connection dies uncleanly
    watcher.wait("safeguard/dev-2/status", "offline", timeout=15)
    watcher.wait("safeguard/dev-2/status", "online", timeout=15)  # and it comes back
    svc.stop(5)
    watcher.close()


def test_mqtt_311_and_test_alert(mosquitto: Mosquitto, tmp_path: Path) -> None:
    acker = Acker(mosquitto.port)
    config = MqttConfig(port=mosquitto.port, protocol="3.1.1")
    outbox = Outbox(tmp_path / "o.db", "dev-3")
    svc = DeliveryService(config, AlertsConfig(), outbox, "dev-3")
    svc.start()
    outbox.submit(make_event(1))
    ids = {a["id"] for a in outbox.pending()}
    assert acker.wait_for(ids, 10) == set()
    svc.stop(5)
    [(channel, ok, detail)] = run_test_alert(config, AlertsConfig(), "dev-3")
    assert channel == "mqtt"
    assert ok, detail
    acker.online = False
    [(channel, ok, detail)] = run_test_alert(config, AlertsConfig(ack_timeout=1), "dev-3")
    assert not ok
    assert "no ack" in detail
    acker.close()


def test_broker_outage_is_logged_once_per_streak_without_errors(
    mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    """An unreachable broker is one warning per streak of failed attempts (the rest DEBUG),
    not paho's ERROR on every pass of its loop; a clean stop logs no error or warning."""
    mosquitto.stop()
    link = MqttLink(
        MqttConfig(port=mosquitto.port, reconnect_max=1),
        "dev-1",
        on_message=lambda _t, _p: None,
        on_connected=lambda: None,
        subscriptions=[],
    )

    def said(level: int, text: str) -> int:
        return sum(r.levelno == level and text in r.getMessage() for r in caplog.records)

    with caplog.at_level(logging.DEBUG, logger="edge.mqtt"):
        link.start()
        time.sleep(3.5)  # attempts about every second
        assert said(logging.WARNING, "cannot reach") == 1
        assert said(logging.DEBUG, "cannot reach") >= 1
        mosquitto.start()
        assert link.wait_connected(10)
        mosquitto.stop()  # a second streak
        deadline = time.monotonic() + 10
        while said(logging.WARNING, "cannot reach") < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert said(logging.WARNING, "cannot reach") == 2
        assert said(logging.WARNING, "disconnected") == 1
        mosquitto.start()
        assert link.wait_connected(10)
        link.stop(2.0)
    assert said(logging.WARNING, "disconnected") == 1  # the stop asked for is said at INFO
    assert said(logging.INFO, "disconnected") == 1
    assert said(logging.DEBUG, "Client is not connected") >= 1  # paho's, demoted
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_a_second_client_with_the_same_id_is_named_not_logged_every_second(
    mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    """Two daemons with one device id take the broker session from each other about once a
    second. The log says why once (ERROR naming the client id) instead of a warning each time."""

    def link() -> MqttLink:
        return MqttLink(
            MqttConfig(port=mosquitto.port, reconnect_max=2),
            "twin",
            on_message=lambda _t, _p: None,
            on_connected=lambda: None,
            subscriptions=[],
        )

    first, second = link(), link()
    with caplog.at_level(logging.DEBUG, logger="edge.mqtt"):
        first.start()
        assert first.wait_connected(10)
        second.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(
            r.levelno == logging.ERROR for r in caplog.records
        ):
            time.sleep(0.1)
        time.sleep(3)  # more takeovers: at DEBUG now
        first.stop(2.0)
        second.stop(2.0)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors, "the flapping was never explained"
    assert "is another client connected as 'safeguard-twin'?" in errors[0]
    assert len(errors) <= 2  # once per link at most
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG and "disconnected" in r.msg]
    assert len(warned) <= 2 * 2, [r.getMessage() for r in warned]  # before each link's ERROR
    assert debug, "later takeovers are logged at DEBUG"


def test_an_alert_the_disk_cannot_hold_is_still_delivered(
    mosquitto: Mosquitto, service: DeliveryService
) -> None:
    """A full disk: the alert is published from memory, acked, and counted in health."""
    acker = Acker(mosquitto.port)
    service.start()
    db = service.outbox._db
    db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
    for n in range(40):
        service.outbox.submit(make_event(n, severity="critical"))
    assert service.stats()["store_failures"] > 0
    deadline = time.monotonic() + 15
    while len(acker.stored) < 40 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(acker.stored) == 40
    while service.outbox.depth() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert service.outbox.depth() == 0
    assert service.stats()["unstored"] == 0
    acker.close()

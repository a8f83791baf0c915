"""Broker acks across a broker restart: a PUBACK for a message of the old session must not
reach the broker on the new one, where the same packet id names another message."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from listener.ingest import Ingest
from listener.metrics import Metrics
from listener.store import Key, Store
from tests.helpers import DeviceClient, Mosquitto, make_alert
from tests.test_listener_ingest import config, wait_for


class GatedStore(Store):
    """A real store whose batches holding a held alert wait until it is released."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._gates: dict[str, threading.Event] = {}
        self.entered: set[str] = set()

    def hold(self, alert_id: str) -> None:
        self._gates[alert_id] = threading.Event()

    def release(self, alert_id: str) -> None:
        self._gates[alert_id].set()

    def release_all(self) -> None:
        for gate in self._gates.values():
            gate.set()

    def store_alerts(self, batch: Iterable[dict[str, Any]], received_at: datetime) -> set[Key]:
        alerts = list(batch)
        for alert in alerts:
            gate = self._gates.get(str(alert["id"]))
            if gate is not None:
                self.entered.add(str(alert["id"]))
                assert gate.wait(30), "a held alert was never released"
        return super().store_alerts(alerts, received_at)


def test_an_ack_from_before_a_broker_restart_does_not_ack_a_new_message(
    mosquitto: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alert A is being stored when the broker restarts; on the new session the broker sends
    B with the packet id A had. A's PUBACK, once A is stored, would tell the broker that B is
    done while B is not stored yet (a crash now loses it). With a receive maximum of 1 the
    broker sends C only after B's PUBACK: C must not arrive while B is still being stored."""
    url = f"sqlite:///{tmp_path / 'alerts.db'}"
    store = GatedStore(url)
    store.migrate()
    ingest = Ingest(config(mosquitto.port, url, receive_maximum=1), store, Metrics())
    delivered: list[tuple[str, int]] = []  # (alert id, packet id) as the broker sent them
    handle = ingest.handle

    def recording(topic: str, payload: bytes, mid: int, qos: int, retain: bool = False) -> None:
        if topic.endswith("/alert"):
            delivered.append((str(json.loads(payload)["id"]), mid))
        handle(topic, payload, mid, qos, retain)

    monkeypatch.setattr(ingest, "handle", recording)
    first, second, third = (make_alert("kitchen-pi") for _ in range(3))
    store.hold(str(first["id"]))
    store.hold(str(second["id"]))
    ingest.start()
    try:
        assert ingest.connected.wait(10)
        time.sleep(0.2)  # SUBACK
        device = DeviceClient(mosquitto.port)
        device.publish_alert(first)
        wait_for(lambda: str(first["id"]) in store.entered)
        device.close()

        mosquitto.restart()
        wait_for(lambda: not ingest.connected.is_set())
        wait_for(ingest.connected.is_set, timeout=40)  # paho backs off while it is down
        time.sleep(0.3)  # SUBACK
        device = DeviceClient(mosquitto.port)
        device.publish_alert(second)
        device.publish_alert(third)
        wait_for(lambda: len(delivered) == 2)
        assert [d[0] for d in delivered] == [first["id"], second["id"]]
        assert delivered[0][1] == delivered[1][1]  # the new session reuses A's packet id

        store.release(str(first["id"]))  # A is stored now, B is next
        wait_for(lambda: str(second["id"]) in store.entered)
        time.sleep(1.0)  # a PUBACK sent for A would have freed the broker to send C by now
        assert len(delivered) == 2, delivered
        assert ingest.stale_acks == 1  # A's PUBACK was dropped, not sent

        store.release(str(second["id"]))  # B stored and acked: the broker sends C
        acks = device.wait_acks(3)
        assert {a["id"] for a in acks} == {first["id"], second["id"], third["id"]}
        assert [d[0] for d in delivered] == [first["id"], second["id"], third["id"]]
        assert store.count_alerts() == 3
        device.close()
    finally:
        store.release_all()
        ingest.stop()
        store.close()

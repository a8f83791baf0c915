"""The broker stopped for 60 s while 100 alerts are raised: all arrive, none stored twice."""

from __future__ import annotations

import time
from pathlib import Path

from edge.delivery import AlertsConfig, DeliveryService
from edge.mqtt import MqttConfig
from edge.outbox import Outbox
from tests.delivery_helpers import Acker, make_event
from tests.helpers import Mosquitto


def test_broker_down_60s_100_alerts(mosquitto: Mosquitto, tmp_path: Path) -> None:
    acker = Acker(mosquitto.port)
    outbox = Outbox(tmp_path / "outbox.db", "dev-1")
    config = MqttConfig(port=mosquitto.port, reconnect_max=2)
    svc = DeliveryService(config, AlertsConfig(), outbox, "dev-1")
    svc.start()
    try:
        assert svc.link.wait_connected(10)
        mosquitto.stop()
        down_at = time.monotonic()
        for n in range(100):  # spread over 55 s while the broker is down
            started = time.monotonic()
            outbox.submit(make_event(n))
            # never waits for the broker (down for 60 s); the bound leaves room for the commit's
            # fsync, which a shared disk has been seen to stall for a second
            assert time.monotonic() - started < 5.0
            time.sleep(max(0.0, down_at + 0.55 * (n + 1) - time.monotonic()))
        assert not svc.link.connected
        ids = {a["id"] for a in outbox.pending(limit=1000)}
        assert len(ids) == 100
        time.sleep(max(0.0, down_at + 60 - time.monotonic()))
        mosquitto.start()
        assert acker.wait_for(ids, 30) == set()
        deadline = time.monotonic() + 10
        while outbox.depth() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert outbox.depth() == 0  # every alert acknowledged end to end
        assert set(acker.stored) == ids  # stored once each (duplicates counted, not stored)
        assert svc.stats()["acked"] == 100
    finally:
        svc.stop(5)
        acker.close()

"""Alert raised -> listener ack received at the device, on loopback.

python -m bench.delivery [--alerts N] [--interval S]

Starts a real Mosquitto on an ephemeral loopback port, a test listener that stores and
acks (tests.delivery_helpers.Acker), and the DeliveryService on a fresh outbox. Each
alert's latency runs from just before `Outbox.submit` (the detector's call, including the
fsync'd commit) to the ack being applied in the device's outbox.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

from edge.delivery import AlertsConfig, DeliveryService
from edge.mqtt import MqttConfig
from edge.outbox import Outbox
from tests.delivery_helpers import Acker, make_event
from tests.helpers import Mosquitto


def run(alerts: int, interval: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp) / "broker")
        broker.workdir.mkdir()
        broker.start()
        acker = Acker(broker.port)
        outbox = Outbox(Path(tmp) / "outbox.db", "bench")
        acked: dict[str, float] = {}
        done = threading.Event()

        def on_ack(alert_id: str) -> None:
            acked[alert_id] = time.perf_counter()
            if len(acked) == alerts:
                done.set()

        service = DeliveryService(
            MqttConfig(port=broker.port), AlertsConfig(), outbox, "bench", on_ack=on_ack
        )
        service.start()
        try:
            assert service.link.wait_connected(10), "no broker connection"
            raised: list[float] = []
            for n in range(alerts):
                raised.append(time.perf_counter())
                outbox.submit(make_event(n))
                time.sleep(interval)
            assert done.wait(60), f"only {len(acked)} of {alerts} acked"
            ids = [a for a, _ in sorted(acked.items())]  # ids are time-ordered
            lat = sorted((acked[i] - t) * 1000 for i, t in zip(ids, raised, strict=True))
        finally:
            service.stop(5)
            acker.close()
            outbox.close()
            broker.stop()
    q = statistics.quantiles(lat, n=100, method="inclusive")
    return {"alerts": alerts, "p50_ms": q[49], "p99_ms": q[98], "max_ms": lat[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=500)
    parser.add_argument("--interval", type=float, default=0.02)
    args = parser.parse_args()
    result = run(args.alerts, args.interval)
    print(
        f"raised -> ack: {result['alerts']:.0f} alerts, p50 {result['p50_ms']:.1f} ms,"
        f" p99 {result['p99_ms']:.1f} ms, max {result['max_ms']:.1f} ms"
    )


if __name__ == "__main__":
    main()

"""A daemon stand-in for the SIGKILL test: runs the DeliveryService and raises a burst.

python -m tests.delivery_burst DB PORT FIRST COUNT INTERVAL
Prints "ready" once delivery runs, raises COUNT events (keys FIRST..), then keeps
delivering until SIGTERM (clean stop) or SIGKILL.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from edge.delivery import AlertsConfig, DeliveryService
from edge.mqtt import MqttConfig
from edge.outbox import Outbox
from tests.delivery_helpers import make_event


def main() -> int:
    db, port, first, count, interval = sys.argv[1:6]
    stop = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    outbox = Outbox(Path(db), "burst")
    service = DeliveryService(
        MqttConfig(port=int(port), reconnect_max=1), AlertsConfig(), outbox, "burst"
    )
    service.start()
    print("ready", flush=True)
    for n in range(int(first), int(first) + int(count)):
        if stop.is_set():
            break
        outbox.submit(make_event(n))
        time.sleep(float(interval))
    stop.wait()
    service.stop(5)
    outbox.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

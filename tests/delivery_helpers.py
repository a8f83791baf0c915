"""Helpers for the delivery tests: a listener stand-in that acks, events to raise."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge.events import Event


class Acker:
    """A test listener: subscribes to `<prefix>/+/alert`, stores each id once, acks it.

    `stored` holds distinct ids (a duplicate delivery is counted in `duplicates`, like the
    listener's deduplication by id); `online = False` simulates the listener being down.
    """

    def __init__(self, port: int, prefix: str = "safeguard", **tls: object) -> None:
        self.prefix = prefix
        self.stored: dict[str, float] = {}
        self.duplicates = 0
        self.online = True
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"acker-{port}",
            clean_session=False,
            protocol=paho.MQTTv311,
        )
        if tls:
            username = tls.pop("username", None)
            if username:
                self.client.username_pw_set(str(username), str(tls.pop("password")))
            if tls:
                self.client.tls_set(**tls)  # type: ignore[arg-type]
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect_async("127.0.0.1", port, 30)
        self.client.loop_start()
        if not self.ready.wait(10):
            raise TimeoutError("the test listener did not connect within 10 s")

    def _on_connect(
        self, client: object, userdata: object, flags: object, rc: object, props: object
    ) -> None:
        self.client.subscribe(f"{self.prefix}/+/alert", qos=1)
        self.ready.set()

    def _on_message(self, client: object, userdata: object, message: object) -> None:
        if not self.online:
            return
        alert = json.loads(message.payload)  # type: ignore[attr-defined]
        with self.lock:
            if alert["id"] in self.stored:
                self.duplicates += 1
            else:
                self.stored[alert["id"]] = time.monotonic()
        ack = json.dumps({"id": alert["id"], "status": "stored"})
        self.client.publish(f"{self.prefix}/{alert['device_id']}/ack", ack, qos=1)

    def wait_for(self, ids: set[str], timeout: float) -> set[str]:
        """The ids of `ids` still missing after waiting up to `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                missing = ids - set(self.stored)
            if not missing or time.monotonic() > deadline:
                return missing
            time.sleep(0.05)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def make_event(n: int, severity: str = "warning", phase: str = "start") -> Event:
    """A synthetic detector event (edge.events.Event), unique key per `n`."""
    now = time.time()
    extra: dict[str, Any] = {}
    if "end_s" in {f.name for f in dataclasses.fields(Event)}:
        extra["end_s"] = float(n) + 0.5
    return Event(
        **extra,
        phase=phase,  # type: ignore[arg-type]
        key=f"ev-{n}",
        category="scream",
        severity=severity,  # type: ignore[arg-type]
        score=0.9,
        peak_score=0.95,
        start_s=float(n),
        at_s=float(n) + 0.5,
        wall_start=now,
        wall_at=now,
    )

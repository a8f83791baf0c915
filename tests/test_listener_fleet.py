"""Fleet scale, small: two listener processes in one shared-subscription group on PostgreSQL.

The full 10,000-alert run is `python -m bench.listener_fleet` (results in bench/RESULTS.md).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.listener_fleet import BROKER_CONFIG, run_fleet
from tests.helpers import (
    DeviceClient,
    Mosquitto,
    make_alert,
    postgres_cluster,
    spawn_listener,
    wait_port,
)

TOKEN = "fleet-token"


def test_fleet_stores_every_alert_exactly_once(tmp_path: Path) -> None:
    cluster = postgres_cluster()
    name = f"sg_fleet_{uuid.uuid4().hex[:10]}"
    url = cluster.create_database(name)
    broker = Mosquitto(tmp_path / "broker", extra_config=BROKER_CONFIG)
    broker.workdir.mkdir()
    broker.start()
    try:
        result = run_fleet(url, broker, tmp_path, alerts=1000, devices=50, timeout=60)
    finally:
        broker.stop()
        cluster.drop_database(name)
    assert result.stored_rows == result.distinct_ids == 1000
    assert result.missing == 0
    assert [p["stored"] > 0 for p in result.per_instance] == [True, True]
    assert sum(p["stored"] for p in result.per_instance) == 1000
    assert sum(p["duplicate"] for p in result.per_instance) == result.duplicates == 50
    rejected = sum(p["malformed"] + p["spoofed"] + p["oversized"] for p in result.per_instance)
    assert rejected == result.malformed == 10


def _start(tmp_path: Path, name: str, broker: int, url: str) -> tuple[subprocess.Popen[bytes], str]:
    process, port, _ = spawn_listener(tmp_path, name, broker, url, TOKEN)
    wait_port(port, timeout=30)
    return process, f"http://127.0.0.1:{port}"


def _call(url: str, method: str = "GET", body: bytes | None = None, kind: str = "") -> int:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    if kind:
        headers["Content-Type"] = kind
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(response.status)


class LiveStream:
    """`/api/live` of one instance read in a thread: the events it carried."""

    def __init__(self, base: str) -> None:
        request = urllib.request.Request(
            base + "/api/live", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        self.response = urllib.request.urlopen(request, timeout=30)
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        kind = ""
        try:
            for raw in self.response:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    self.events.append((kind, json.loads(line[6:])))
        except (OSError, ValueError, AttributeError):  # closed under the reader
            return

    def wait(self, predicate: Callable[[str, dict[str, Any]], bool], timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not any(predicate(k, d) for k, d in list(self.events)):
            assert time.monotonic() < deadline, self.events
            time.sleep(0.05)

    def close(self) -> None:
        self.response.close()


def test_acks_resolutions_and_clips_reach_the_other_instance_s_dashboards(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """Two instances in one group on one database: an acknowledgement, a resolution and a
    clip upload made on one are `update` events on the other's live stream."""
    cluster = postgres_cluster()
    name = f"sg_relay_{uuid.uuid4().hex[:10]}"
    url = cluster.create_database(name)
    first, a = _start(tmp_path, "a", mosquitto.port, url)
    second, b = _start(tmp_path, "b", mosquitto.port, url)
    device = DeviceClient(mosquitto.port)
    streams: list[LiveStream] = []
    try:
        start = make_alert("yard-pi", event="start")
        start["event_id"] = start["id"]
        end = make_alert("yard-pi", event="end", event_id=start["id"], score=0.0)
        time.sleep(1.0)  # both instances subscribed
        device.publish_alert(start)
        device.publish_alert(end)
        device.wait_acks(2)
        streams = [LiveStream(b), LiveStream(a)]
        for stream in streams:
            stream.wait(lambda kind, _d: kind == "hello")
        live_b = streams[0]

        body = json.dumps({"by": "alice"}).encode()
        kind = "application/json"
        assert _call(f"{a}/api/alerts/{start['id']}/ack", "POST", body, kind) == 200
        for alert in (start, end):  # the whole event

            def acked(kind: str, data: dict[str, Any], alert_id: object = alert["id"]) -> bool:
                return bool(
                    kind == "update"
                    and data["id"] == alert_id
                    and data["listener"]["acknowledged_by"] == "alice"
                )

            live_b.wait(acked)
        assert _call(f"{a}/api/alerts/{end['id']}/clip", "PUT", b"RIFF" * 64, "audio/wav") == 204
        live_b.wait(
            lambda k, d: k == "update" and d["id"] == end["id"] and d["listener"]["has_clip"]
        )
        body = json.dumps({"by": "bob"}).encode()
        assert _call(f"{b}/api/alerts/{end['id']}/resolve", "POST", body, kind) == 200
        streams[1].wait(lambda k, d: k == "update" and d["id"] == start["id"]
                        and d["listener"]["status"] == "resolved")  # fmt: skip
        assert not [a for a in device.acks if a["id"] not in (start["id"], end["id"])]
    finally:
        for stream in streams:
            stream.close()
        device.close()
        for process in (first, second):
            process.terminate()
            process.wait(timeout=20)
        cluster.drop_database(name)

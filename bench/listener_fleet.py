"""Fleet benchmark: two `safeguard-listener` processes in one shared-subscription group on one
PostgreSQL store take alerts from simulated devices through a real Mosquitto.

    .venv/bin/python -m bench.listener_fleet [--alerts 10000] [--devices 200]

Every valid alert must be stored exactly once (duplicates are resends of the same id, malformed
messages are never stored), and the rate is unique alerts stored *and acked* per second, from
the first publish to the last first-ack the devices receive.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from tests.helpers import Mosquitto, PostgresCluster, free_port, make_alert, wait_port

TOKEN = "fleet-bench-token"  # a throwaway token for loopback processes
# Broker settings a fleet needs: no queue cap that would drop QoS 1 messages under load.
BROKER_CONFIG = "max_queued_messages 0\nmax_inflight_messages 1000\n"


@dataclass
class FleetResult:
    alerts: int
    devices: int
    duplicates: int
    malformed: int
    seconds: float
    rate: float
    stored_rows: int
    distinct_ids: int
    missing: int
    per_instance: list[dict[str, float]]

    def line(self) -> str:
        split = " + ".join(f"{int(p['stored'])}" for p in self.per_instance)
        return (
            f"{self.alerts} alerts ({self.devices} devices, {self.duplicates} duplicates, "
            f"{self.malformed} malformed): {self.rate:.0f} alerts/s stored+acked "
            f"({self.seconds:.2f} s); rows {self.stored_rows}, distinct {self.distinct_ids}, "
            f"missing {self.missing}; stored per instance {split}; rejected "
            f"{sum(p['malformed'] + p['spoofed'] + p['oversized'] for p in self.per_instance):.0f}"
        )


def _metrics(base: str) -> dict[str, float]:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    request = urllib.request.Request(base + "/metrics", headers=auth)  # loopback
    with urllib.request.urlopen(  # http://127.0.0.1 only
        request, timeout=10
    ) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for outcome, value in re.findall(
        r'safeguard_listener_alerts_total\{outcome="(\w+)"\} (\S+)', text
    ):
        out[outcome] = float(value)
    return out


def _healthy(base: str) -> bool:
    with urllib.request.urlopen(  # http://127.0.0.1 only
        base + "/healthz", timeout=5
    ) as response:
        return bool(json.load(response)["mqtt"])


def _messages(
    alerts: int, devices: int, dup_rate: float, bad_rate: float
) -> tuple[list[tuple[str, bytes]], set[str], int, int]:
    rng = random.Random(7)
    names = [f"sim-{i:03d}" for i in range(devices)]
    valid = [make_alert(names[i % devices], score=round(rng.random(), 3)) for i in range(alerts)]
    out: list[tuple[str, bytes]] = [(str(a["device_id"]), json.dumps(a).encode()) for a in valid]
    n_dup, n_bad = int(alerts * dup_rate), int(alerts * bad_rate)
    for _ in range(n_dup):  # a resend shortly after the original
        src = rng.randrange(alerts)
        out.insert(min(len(out), src + rng.randrange(1, 200)), out[src])
    for i in range(n_bad):
        device = names[i % devices]
        kind = i % 4
        if kind == 0:
            payload = b'{"schema": "safeguard.alert/1", "id": '
        elif kind == 1:
            payload = json.dumps(make_alert(device, severity="apocalyptic")).encode()
        elif kind == 2:
            payload = json.dumps(make_alert("someone-else")).encode()  # spoofed device id
        else:
            payload = json.dumps(make_alert(device, padding="x" * 70_000)).encode()  # oversized
        out.insert(rng.randrange(len(out)), (device, payload))
    return out, {str(a["id"]) for a in valid}, n_dup, n_bad


def run_fleet(
    db_url: str,
    mosquitto: Mosquitto,
    workdir: Path,
    *,
    alerts: int = 10_000,
    devices: int = 200,
    instances: int = 2,
    publishers: int = 2,
    timeout: float = 300.0,
) -> FleetResult:
    messages, expected, n_dup, n_bad = _messages(alerts, devices, 0.05, 0.01)
    procs: list[subprocess.Popen[bytes]] = []
    bases: list[str] = []
    env = {**os.environ, "SAFEGUARD_API_TOKEN": TOKEN}
    acked: set[str] = set()
    done = threading.Event()
    last_ack = [0.0]
    lock = threading.Lock()

    def on_ack(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        ack_id = json.loads(msg.payload)["id"]
        with lock:
            if ack_id not in acked:
                acked.add(ack_id)
                last_ack[0] = time.monotonic()
                if len(acked) >= len(expected):
                    done.set()

    clients: list[mqtt.Client] = []
    pubs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(instances):
            port = free_port()
            cfg = workdir / f"listener-{i}.yaml"
            cfg.write_text(
                f"mqtt: {{port: {mosquitto.port}, group: fleet}}\n"
                f"database: {{url: '{db_url}'}}\nhttp: {{port: {port}}}\n"
            )
            log = (workdir / f"listener-{i}.log").open("wb")
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "listener.cli", "--config", str(cfg)],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            log.close()
            bases.append(f"http://127.0.0.1:{port}")
            wait_port(port, timeout=30)
        deadline = time.monotonic() + 20
        while not all(_healthy(b) for b in bases):
            if time.monotonic() > deadline:
                raise TimeoutError("listeners never reached the broker")
            time.sleep(0.05)
        time.sleep(0.5)  # their SUBACKs
        monitor = mqtt.Client(CallbackAPIVersion.VERSION2, "fleet-monitor", protocol=mqtt.MQTTv5)
        monitor.on_message = on_ack
        monitor.connect("127.0.0.1", mosquitto.port)
        monitor.loop_start()
        clients.append(monitor)
        monitor.subscribe("safeguard/+/ack", qos=1)
        # The devices publish from their own processes (as separate machines would).
        shares: list[list[tuple[str, bytes]]] = [[] for _ in range(publishers)]
        for device, payload in messages:
            shares[int(device[4:]) % publishers].append((device, payload))
        for i, share in enumerate(shares):
            path = workdir / f"publisher-{i}.jsonl"
            with path.open("w") as out:
                for device, payload in share:
                    out.write(json.dumps([device, payload.decode("latin-1")]) + "\n")
            pubs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "bench.listener_fleet",
                        "--publish",
                        str(path),
                        "--port",
                        str(mosquitto.port),
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
            )
        for pub in pubs:
            assert pub.stdout is not None
            assert pub.stdout.readline().strip() == b"ready"
        time.sleep(0.3)
        start = time.monotonic()
        for pub in pubs:
            assert pub.stdin is not None
            pub.stdin.write(b"go\n")
            pub.stdin.flush()
        if not done.wait(timeout):
            raise TimeoutError(f"only {len(acked)} of {len(expected)} alerts acked in {timeout} s")
        seconds = last_ack[0] - start
        time.sleep(1.0)  # late duplicates and rejects are counted too
        per_instance = [_metrics(b) for b in bases]
        with psycopg.connect(db_url) as conn:
            rows, distinct = conn.execute(
                "SELECT count(*), count(DISTINCT id) FROM alerts"
            ).fetchone() or (0, 0)
            stored = {r[0] for r in conn.execute("SELECT id FROM alerts")}
        return FleetResult(
            alerts=alerts,
            devices=devices,
            duplicates=n_dup,
            malformed=n_bad,
            seconds=seconds,
            rate=len(expected) / seconds,
            stored_rows=int(rows),
            distinct_ids=int(distinct),
            missing=len(expected - stored) + len(stored - expected),
            per_instance=per_instance,
        )
    finally:
        for client in clients:
            client.disconnect()
            client.loop_stop()
        for proc in procs + pubs:
            proc.terminate()
        for proc in procs + pubs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for proc in pubs:
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()


def publish_share(path: Path, port: int, clients: int = 4) -> None:
    """Publisher process: connect, say ready, publish its share on `go`, wait for PUBACKs."""
    share = [json.loads(line) for line in path.read_text().splitlines()]
    pubs = []
    for i in range(clients):
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, f"fleet-{path.stem}-{i}", protocol=mqtt.MQTTv5
        )
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)
        client.connect("127.0.0.1", port)
        client.loop_start()
        pubs.append(client)
    print("ready", flush=True)
    sys.stdin.readline()
    infos = []
    for device, payload in share:
        pub = pubs[int(device[4:]) % clients]
        infos.append(pub.publish(f"safeguard/{device}/alert", payload.encode("latin-1"), qos=1))
    for info in infos:
        info.wait_for_publish(120)
    for client in pubs:
        client.disconnect()
        client.loop_stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--alerts", type=int, default=10_000)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--publish", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.publish is not None:
        publish_share(args.publish, args.port)
        return
    cluster = PostgresCluster(durable=True)
    cluster.start()
    with tempfile.TemporaryDirectory(prefix="sg-fleet-") as tmp:
        work = Path(tmp)
        broker = Mosquitto(work / "broker", extra_config=BROKER_CONFIG)
        broker.workdir.mkdir()
        broker.start()
        try:
            url = cluster.create_database("sg_fleet_bench")
            result = run_fleet(url, broker, work, alerts=args.alerts, devices=args.devices)
            cluster.drop_database("sg_fleet_bench")
        finally:
            broker.stop()
            cluster.stop()
    print(result.line())
    ok = result.stored_rows == result.distinct_ids == result.alerts and result.missing == 0
    print("exactly once:", "yes" if ok else "NO")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

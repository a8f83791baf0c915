"""The listener process when its database stops answering, turns read-only, or is not there
yet at start: the HTTP server keeps answering, /healthz says what is wrong, nothing is acked
that is not stored."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    DeviceClient,
    FreezableProxy,
    Mosquitto,
    free_port,
    make_alert,
    postgres_cluster,
    spawn_listener,
    wait_port,
)

TOKEN = "outage-token"


def get(url: str, timeout: float = 30, token: bool = False) -> tuple[int, bytes, float]:
    """Status, body and seconds taken (status 0: no answer within `timeout`)."""
    headers = {"Authorization": f"Bearer {TOKEN}"} if token else {}
    start = time.monotonic()
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=timeout
        ) as r:
            return r.status, r.read(), time.monotonic() - start
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), time.monotonic() - start
    except OSError:
        return 0, b"", time.monotonic() - start


def health(base: str, timeout: float = 30) -> tuple[dict[str, Any], float]:
    status, body, took = get(base + "/healthz", timeout)
    assert status == 200, (status, body)
    return json.loads(body), took


@pytest.fixture
def database() -> Iterator[tuple[str, int]]:
    """A fresh PostgreSQL database: its name and the server's port."""
    cluster = postgres_cluster()
    name = f"sg_outage_{uuid.uuid4().hex[:10]}"
    cluster.create_database(name)
    yield name, cluster.port
    cluster.drop_database(name)


def start_listener(tmp_path: Path, broker: int, url: str) -> tuple[subprocess.Popen[bytes], str]:
    process, port, _ = spawn_listener(tmp_path, "listener", broker, url, TOKEN)
    return process, f"http://127.0.0.1:{port}"


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def test_a_database_that_stops_answering_does_not_hang_the_server(
    tmp_path: Path, mosquitto: Mosquitto, database: tuple[str, int]
) -> None:
    name, pg_port = database
    proxy = FreezableProxy(pg_port)
    process, base = start_listener(
        tmp_path, mosquitto.port, f"postgresql://postgres@127.0.0.1:{proxy.port}/{name}"
    )
    try:
        wait_port(int(base.rpartition(":")[2]), timeout=60)
        deadline = time.monotonic() + 20
        while health(base)[0] != {"status": "ok", "mqtt": True, "database": True}:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        proxy.freeze()
        # monitoring probes and dashboards keep asking while the database is frozen
        with ThreadPoolExecutor(80) as pool:
            probes = [pool.submit(get, base + "/healthz") for _ in range(45)]
            probes += [pool.submit(get, base + "/api/alerts", 30, True) for _ in range(20)]
            time.sleep(1.0)
            said, took = health(base, timeout=10)
            assert said == {"status": "degraded", "mqtt": True, "database": False}
            assert took < 4.0, took
            for path in ("/", "/app.js", "/leaflet/leaflet.js"):
                status, _body, took = get(base + path, timeout=10)
                assert status == 200, path
                assert took < 2.0, (path, took)
            status, _body, took = get(base + "/metrics", timeout=10, token=True)
            assert (status, took < 2.0) == (200, True), took
            answers = [probe.result() for probe in probes]
        assert all(status == 200 for status, _b, _t in answers[:45])
        assert all(took < 15 for _s, _b, took in answers), max(t for _s, _b, t in answers)
        listed = answers[45:]
        assert {status for status, _b, _t in listed} == {503}
        assert json.loads(listed[0][1]) == {"detail": "database unavailable"}
        proxy.thaw()
        deadline = time.monotonic() + 30
        while not health(base)[0]["database"]:
            assert time.monotonic() < deadline, "the database never came back"
            time.sleep(0.2)
        device = DeviceClient(mosquitto.port)
        device.publish_alert(make_alert("after-thaw"))
        device.wait_acks(1, timeout=20)
        device.close()
    finally:
        proxy.close()
        stop(process)
    text = (tmp_path / "listener.log").read_text()
    assert "Traceback" not in text, text[-3000:]


def test_a_read_only_database_is_an_outage_not_a_bad_message(
    mosquitto: Mosquitto, database: tuple[str, int]
) -> None:
    """A replica, a failover or default_transaction_read_only: alerts wait (no ack, no
    PUBACK, the device resends) and are stored once writes work again; /healthz says so."""
    from fastapi.testclient import TestClient

    from listener.app import build_state, create_app
    from listener.config import parse

    name, pg_port = database
    url = f"postgresql://postgres@127.0.0.1:{pg_port}/{name}"
    cfg = parse({"mqtt": {"port": mosquitto.port}, "database": {"url": url}})
    state = build_state(cfg, TOKEN)
    cluster = postgres_cluster()

    def read_only(on: bool) -> None:
        cluster._admin(
            f'ALTER DATABASE "{name}" SET default_transaction_read_only = {"on" if on else "off"}'
        )
        cluster._admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        )

    with TestClient(create_app(state)) as client:
        assert state.ingest.connected.wait(10)
        time.sleep(0.2)
        assert client.get("/healthz").json()["database"] is True
        read_only(True)
        device = DeviceClient(mosquitto.port)
        alert = make_alert("ro-pi")
        device.publish_alert(alert)
        time.sleep(3)
        assert device.acks == []
        assert state.metrics.value("failed") == 0
        assert client.get("/healthz").json() == {
            "status": "degraded", "mqtt": True, "database": False
        }  # fmt: skip
        read_only(False)
        acks = device.wait_acks(1, timeout=40)
        assert acks[0]["id"] == alert["id"]
        assert state.store.get_alert(str(alert["id"]), "ro-pi") is not None
        assert client.get("/healthz").json()["database"] is True
        device.close()


def test_start_waits_for_a_database_that_is_not_there_yet(
    tmp_path: Path, mosquitto: Mosquitto, database: tuple[str, int]
) -> None:
    """A database that cannot be reached at start (a slow cluster at boot, maintenance) is
    waited for, said once, instead of exit 1 (systemd gives up after a few fast failures)."""
    name, pg_port = database
    port = free_port()
    process, base = start_listener(
        tmp_path, mosquitto.port, f"postgresql://postgres@127.0.0.1:{port}/{name}"
    )
    proxy = None
    try:
        time.sleep(5)
        assert process.poll() is None, (tmp_path / "listener.log").read_text()
        said = (tmp_path / "listener.log").read_text()
        assert said.count("cannot migrate the database") == 1, said
        assert "trying again until it answers" in said
        proxy = FreezableProxy(pg_port, port=port)  # the database comes up
        deadline = time.monotonic() + 40
        while True:
            status, body, _took = get(base + "/healthz", timeout=5)
            if status == 200 and json.loads(body)["database"]:
                break
            assert time.monotonic() < deadline, (tmp_path / "listener.log").read_text()
            time.sleep(0.3)
    finally:
        stop(process)
        if proxy is not None:
            proxy.close()
    assert "the database answers: migrated" in (tmp_path / "listener.log").read_text()

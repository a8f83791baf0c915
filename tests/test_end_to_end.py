"""The whole path with real components: `safeguard run` on a replayed recording with a
gunshot, a real Mosquitto, the real `safeguard-listener` on SQLite. The alert is stored by
the listener, acknowledged back to the device's outbox, and the device's retained status
and category state are right; `safeguard check` reaches the broker."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.helpers import ROOT, Mosquitto, free_port, require_models, retained, wait_port
from tests.test_cli_audio import scene

TOKEN = "e2e-token"


def test_gunshot_reaches_the_listener_and_is_acknowledged(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    http_port = free_port()
    listener_config = tmp_path / "listener.yaml"
    listener_config.write_text(
        f"mqtt: {{host: 127.0.0.1, port: {mosquitto.port}, prefix: safeguard}}\n"
        f"database: {{url: 'sqlite:///{tmp_path}/alerts.db'}}\n"
        f"http: {{host: 127.0.0.1, port: {http_port}}}\n"
    )
    env = {**os.environ, "SAFEGUARD_API_TOKEN": TOKEN}
    listener = subprocess.Popen(
        [sys.executable, "-m", "listener.cli", "--config", str(listener_config)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(http_port, timeout=30)
        daemon_config = tmp_path / "daemon.yaml"
        daemon_config.write_text(
            f"device: {{id: e2e-pi}}\nstorage: {{dir: {tmp_path / 'state'}}}\n"
            f"models: {{dir: {require_models()}}}\n"
            f"mqtt: {{host: 127.0.0.1, port: {mosquitto.port}}}\n"
            f"audio: {{source: 'file:{scene(tmp_path)}'}}\n"
        )
        check = subprocess.run(
            [sys.executable, "-m", "edge.cli", "check", "--config", str(daemon_config)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert check.returncode == 0, check.stderr
        assert f"broker: ok (127.0.0.1:{mosquitto.port})" in check.stdout

        run = subprocess.run(
            [sys.executable, "-m", "edge.cli", "run", "--config", str(daemon_config)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        assert run.returncode == 0, run.stderr

        request = urllib.request.Request(
            f"http://127.0.0.1:{http_port}/api/alerts?limit=10",
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            stored = json.load(response)
        shots = [a for a in stored if a["category"] == "gunshot" and a["device_id"] == "e2e-pi"]
        assert {a["event"] for a in shots if "clip" not in a} == {"start", "end"}
        assert [a["event"] for a in shots if "clip" in a] == ["update"]  # the clip, after the end

        outbox = sqlite3.connect(tmp_path / "state" / "outbox.db")
        acked = outbox.execute("SELECT count(*) FROM outbox WHERE acked IS NOT NULL").fetchone()
        total = outbox.execute("SELECT count(*) FROM outbox").fetchone()
        assert acked == total, "every alert the device raised was acknowledged by the listener"

        assert retained(mosquitto.port, "safeguard/e2e-pi/status") == "stopped"
        assert retained(mosquitto.port, "safeguard/e2e-pi/state/gunshot") == "OFF"
    finally:
        listener.terminate()
        listener.wait(timeout=10)


def test_check_fails_clearly_without_a_broker(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        f"models: {{dir: {require_models()}}}\nstorage: {{dir: {tmp_path}}}\n"
        f"mqtt: {{port: {free_port()}}}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "edge.cli", "check", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "cannot reach the MQTT broker" in result.stderr

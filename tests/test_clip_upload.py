"""Clip upload from the device to the listener, with real components: the real
`safeguard-listener` process (SQLite, a real Mosquitto) and the real `Uploader`.

A clip uploads and downloads byte-identical; a listener that is down, then up but without the
alert yet (404), still gets the clip; a pending upload survives a restart of the device side;
a clip deleted by retention is dropped, counted and logged; a refused upload (413) is dropped
with the listener's reason, a wrong token (401) is retried. End to end: `safeguard run` on a
recording with a scream leaves the clip downloadable from the listener.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import soundfile

from edge.clips import prune
from edge.config import parse_config
from edge.errors import ConfigError
from edge.upload import ListenerConfig, Uploader, pick_file
from tests.helpers import (
    AUDIO_DEV,
    ROOT,
    DeviceClient,
    Mosquitto,
    free_port,
    make_alert,
    require_models,
    require_shared,
    wait_port,
)

TOKEN = "clip-upload-token"
SCREAM = "screams__positive__femaleScream-061.flac"
WAIT_S = 90.0  # generous: the machine is shared


def wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout} s")
        time.sleep(0.05)


def fetch(url: str, token: str = TOKEN) -> tuple[int, str, bytes]:
    """(status, content type, body) of a GET with the bearer token."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("content-type", ""), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, "", exc.read()


class Listener:
    """The real `safeguard-listener` as a subprocess, on a port chosen before it starts."""

    def __init__(self, workdir: Path, mqtt_port: int, max_clip_bytes: int = 50_000_000) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "listener.yaml"
        self.config.write_text(
            f"mqtt: {{host: 127.0.0.1, port: {mqtt_port}}}\n"
            f"database: {{url: 'sqlite:///{workdir}/alerts.db'}}\n"
            f"http: {{host: 127.0.0.1, port: {self.port}, max_clip_bytes: {max_clip_bytes}}}\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "SAFEGUARD_API_TOKEN": TOKEN}
        with (self.workdir / "listener.log").open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "listener.cli", "--config", str(self.config)],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_port(self.port, timeout=60)
        wait_for(lambda: json.loads(fetch(self.url + "/healthz")[2])["mqtt"], "listener on MQTT")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None

    def alert(self, alert_id: str) -> dict[str, Any]:
        status, _, body = fetch(f"{self.url}/api/alerts/{alert_id}")
        assert status == 200, (status, body)
        result: dict[str, Any] = json.loads(body)
        return result

    def clip(self, alert_id: str) -> tuple[int, str, bytes]:
        return fetch(f"{self.url}/api/alerts/{alert_id}/clip")


@pytest.fixture
def listener(mosquitto: Mosquitto, tmp_path: Path) -> Iterator[Listener]:
    """A listener, not started yet: tests start it when they need it up."""
    folder = tmp_path / "listener"
    folder.mkdir()
    server = Listener(folder, mosquitto.port)
    yield server
    server.stop()


@pytest.fixture
def device(mosquitto: Mosquitto) -> Iterator[DeviceClient]:
    client = DeviceClient(mosquitto.port)
    yield client
    client.close()


def publish(device: DeviceClient, **fields: object) -> str:
    """Publish one alert and wait for the listener's ack; its id."""
    alert = make_alert("upload-pi", **fields)
    before = len(device.acks)
    device.publish_alert(alert)
    device.wait_acks(before + 1, timeout=WAIT_S)
    return str(alert["id"])


def wav_clip(folder: Path, name: str = "clip.wav", seconds: float = 2.0) -> dict[str, Any]:
    """A real 16-bit WAV and the clip reference the clip writer would announce for it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    rng = np.random.default_rng(len(name))
    soundfile.write(path, rng.normal(0, 0.1, int(16000 * seconds)), 16000, subtype="PCM_16")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"audio": {"path": str(path), "duration_s": seconds, "sha256": digest}}


def uploader(url: str, storage: Path, token: str = TOKEN, **overrides: object) -> Uploader:
    settings = {"enabled": True, "url": url, "retry_min_s": 0.1, "retry_max_s": 1.0}
    config = ListenerConfig.model_validate({**settings, **overrides})
    return Uploader(config, storage / "uploads.db", token=token)


def test_a_clip_uploads_and_downloads_byte_identical(
    listener: Listener, device: DeviceClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    listener.start()
    alert_id = publish(device, event="update", clip={"start_s": 0.0})
    clip = wav_clip(tmp_path / "clips")
    monkeypatch.setenv("SAFEGUARD_API_TOKEN", TOKEN)  # read like every other secret
    config = ListenerConfig(enabled=True, url=listener.url + "/")
    sender = Uploader(config, tmp_path / "state" / "uploads.db")
    assert listener.alert(alert_id)["listener"]["has_clip"] is False
    sender.start()
    try:
        assert sender.add(alert_id, clip)
        wait_for(lambda: sender.stats()["sent"] == 1, "upload sent")
        status, content_type, body = listener.clip(alert_id)
        assert status == 200
        assert content_type == "audio/wav"
        assert body == Path(clip["audio"]["path"]).read_bytes()
        assert hashlib.sha256(body).hexdigest() == clip["audio"]["sha256"]
        assert listener.alert(alert_id)["listener"]["has_clip"] is True
        health = sender.health()
        assert health["uploads_pending"] == 0
        assert health["uploads_sent"] == 1
        assert health["uploads_rejected"] == health["uploads_missing"] == 0
    finally:
        sender.stop(timeout=30)


def test_listener_down_then_without_the_alert_then_it_arrives(
    listener: Listener, device: DeviceClient, tmp_path: Path
) -> None:
    clip = wav_clip(tmp_path / "clips")
    alert = make_alert("upload-pi", event="update")
    sender = uploader(listener.url, tmp_path / "state")
    sender.start()
    try:
        sender.add(str(alert["id"]), clip)
        wait_for(lambda: sender.stats()["failed_attempts"] >= 2, "attempts while down")
        assert "listener unreachable" in sender.last_error
        assert sender.pending() == 1

        listener.start()  # up, but the alert's MQTT message has not come yet: 404, retried
        wait_for(lambda: sender.last_error.startswith("HTTP 404"), "404 while not stored")
        failed = sender.stats()["failed_attempts"]
        wait_for(lambda: sender.stats()["failed_attempts"] > failed, "404 retried")
        assert sender.pending() == 1
        assert sender.stats()["sent"] == 0

        device.publish_alert(alert)
        device.wait_acks(1, timeout=WAIT_S)
        wait_for(lambda: sender.pending() == 0, "upload once the alert is stored")
        assert sender.stats()["sent"] == 1
        assert listener.clip(str(alert["id"]))[2] == Path(clip["audio"]["path"]).read_bytes()
    finally:
        sender.stop(timeout=30)


def test_a_pending_upload_is_sent_after_a_restart(
    listener: Listener, device: DeviceClient, tmp_path: Path
) -> None:
    clip = wav_clip(tmp_path / "clips")
    alert = make_alert("upload-pi", event="update")
    before = uploader(listener.url, tmp_path / "state")
    before.start()
    before.add(str(alert["id"]), clip)  # queued while the listener is down
    wait_for(lambda: before.stats()["failed_attempts"] >= 1, "a failed attempt")
    before.stop(timeout=30)

    listener.start()
    device.publish_alert(alert)
    device.wait_acks(1, timeout=WAIT_S)
    assert listener.clip(str(alert["id"]))[0] == 404  # nothing sent it in between

    after = uploader(listener.url, tmp_path / "state")  # the daemon's next start
    assert after.pending() == 1
    after.start()
    try:
        wait_for(lambda: after.stats()["sent"] == 1, "the upload after the restart")
        assert listener.clip(str(alert["id"]))[2] == Path(clip["audio"]["path"]).read_bytes()
        assert after.stats()["failed_attempts"] >= 1  # the counters survived too
    finally:
        after.stop(timeout=30)


def test_a_clip_deleted_by_retention_is_dropped_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge")
    folder = tmp_path / "clips"
    # named as the clip writer names its files (pruning touches only those)
    kept = wav_clip(folder, "20261122T000100Z_scream_aaaa1111.wav")
    gone = wav_clip(folder, "20200101T000000Z_scream_bbbb2222.wav")
    os.utime(gone["audio"]["path"], (1.0, 1.0))  # written long ago
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: kept stays pending
    sender = uploader(url, tmp_path / "state")
    sender.add("alert-kept", kept)
    sender.add("alert-old", gone)
    removed = prune(folder, quota_bytes=1e9, retention_s=86400)  # the clip writer's retention
    assert removed == [Path(gone["audio"]["path"])]
    sender.start()
    try:
        wait_for(lambda: sender.stats()["missing"] == 1, "the deleted clip counted")
        assert sender.pending() == 1  # the other one is still waiting for the listener
        assert sender.health()["uploads_missing"] == 1
    finally:
        sender.stop(timeout=30)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "alert-old" in r.getMessage() and "20200101T000000Z_scream_bbbb2222.wav" in r.getMessage()
        for r in warnings
    )
    assert not any("alert-kept" in r.getMessage() and "deleted" in r.getMessage() for r in warnings)


def test_refused_uploads_are_reported_with_the_reason(
    mosquitto: Mosquitto, device: DeviceClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge")
    server = Listener(tmp_path, mosquitto.port, max_clip_bytes=1024)
    server.start()
    try:
        alert_id = publish(device, event="update")
        clip = wav_clip(tmp_path / "clips")  # 64 kB: over the listener's limit
        wrong = uploader(server.url, tmp_path / "wrong", token="not-the-token")
        wrong.start()
        wrong.add(alert_id, clip)
        wait_for(lambda: wrong.stats()["failed_attempts"] >= 2, "401 retried")
        assert wrong.pending() == 1  # a token can be corrected: not dropped
        assert wrong.stats()["rejected"] == 0
        wrong.stop(timeout=30)
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert any("HTTP 401: missing or wrong bearer token" in m for m in errors), errors

        right = uploader(server.url, tmp_path / "right")
        right.start()
        right.add(alert_id, clip)
        wait_for(lambda: right.stats()["rejected"] == 1, "413 dropped")
        assert right.pending() == 0
        assert right.stats()["sent"] == 0
        right.stop(timeout=30)
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert any("HTTP 413: clip larger than 1024 bytes" in m for m in errors), errors
        assert server.clip(alert_id)[0] == 404
    finally:
        server.stop()


class Scripted(http.server.BaseHTTPRequestHandler):
    """Answers the clip PUTs with the statuses in `script`, in order; keeps what it got."""

    script: ClassVar[list[tuple[int, dict[str, str]]]] = []
    bodies: ClassVar[list[bytes]] = []

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        status, headers = self.script.pop(0)
        if status == 204:
            self.bodies.append(body)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_busy_or_failing_listener_is_retried_with_backoff(tmp_path: Path) -> None:
    """429 and 5xx are retried (the listener's own API never answers them, so a scripted
    loopback server does), and the file still arrives intact."""
    Scripted.script = [(503, {}), (429, {"Retry-After": "0"}), (502, {}), (204, {})]
    Scripted.bodies = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    clip = wav_clip(tmp_path / "clips")
    sender = uploader(f"http://127.0.0.1:{server.server_address[1]}", tmp_path / "state")
    sender.start()
    try:
        sender.add("busy-alert", clip)
        wait_for(lambda: sender.stats()["sent"] == 1, "sent after the busy answers")
        assert sender.stats()["failed_attempts"] == 3
        assert sender.stats()["rejected"] == 0
        assert Scripted.bodies == [Path(clip["audio"]["path"]).read_bytes()]
        assert Scripted.script == []
    finally:
        sender.stop(timeout=30)
        server.shutdown()
        server.server_close()


def test_which_file_of_a_clip_is_sent() -> None:
    both = {"audio": {"path": "/c/a.wav"}, "video": {"path": "/c/v.mp4"}}
    assert pick_file(both, "audio") == Path("/c/a.wav")
    assert pick_file(both, "video") == Path("/c/v.mp4")
    assert pick_file({"video": {"path": "/c/v.mp4"}}, "audio") == Path("/c/v.mp4")
    assert pick_file({"start_s": 1.0}, "audio") is None


def test_the_listener_section_of_the_config() -> None:
    shipped = (ROOT / "config.yaml").read_text()
    block = shipped[shipped.index("# listener:") :].split("\n\n")[0]
    assert "enabled: true" in block
    enabled = shipped.replace(block, "\n".join(line[2:] for line in block.splitlines()))
    config = parse_config(enabled)  # the commented example is valid once uncommented
    assert config.listener.enabled
    assert config.listener.url == "http://127.0.0.1:8080"
    assert parse_config("").listener.enabled is False  # off by default
    with pytest.raises(ConfigError, match=r"listener\.url is required"):
        parse_config("listener: {enabled: true}")
    with pytest.raises(ConfigError, match=r"listener\.token: unknown key \(line 1\)"):
        parse_config("listener: {url: 'http://x', token: abc}")
    with pytest.raises(ConfigError, match=r"listener\.url: must start with http"):
        parse_config("listener: {url: 'ftp://x'}")
    with pytest.raises(ConfigError, match=r"listener\.retry_max_s"):
        parse_config("listener: {retry_max_s: 0}")


def scream_scene(folder: Path) -> Path:
    """Quiet room noise, 4 s of a real scream at 2.0 s, then 4 s of quiet: a WAV."""
    scream, rate = soundfile.read(require_shared(AUDIO_DEV / "clips" / SCREAM), dtype="float32")
    assert rate == 16000
    scream = scream[: 4 * rate]
    noise = np.random.default_rng(2).normal(0, 0.002, rate * 10).astype(np.float32)
    noise[2 * rate : 2 * rate + len(scream)] += scream
    path = folder / "scream_scene.wav"
    soundfile.write(path, noise, rate, subtype="PCM_16")
    return path


def test_safeguard_run_on_a_scream_leaves_the_clip_on_the_listener(
    listener: Listener, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    listener.start()
    config = tmp_path / "daemon.yaml"
    config.write_text(
        f"device: {{id: upload-e2e}}\nstorage: {{dir: {tmp_path / 'state'}}}\n"
        f"models: {{dir: {require_models()}}}\n"
        f"mqtt: {{host: 127.0.0.1, port: {mosquitto.port}}}\n"
        f"audio: {{source: 'file:{scream_scene(tmp_path)}'}}\n"
        f"listener: {{enabled: true, url: '{listener.url}', retry_min_s: 0.2, retry_max_s: 2}}\n"
    )
    env = {**os.environ, "SAFEGUARD_API_TOKEN": TOKEN}
    run = subprocess.run(
        [sys.executable, "-m", "edge.cli", "run", "--config", str(config)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    status, _, body = fetch(f"{listener.url}/api/alerts?device=upload-e2e&limit=100")
    assert status == 200
    stored = json.loads(body)
    updates = [a for a in stored if a["category"] == "scream" and "clip" in a]
    assert len(updates) == 1, (stored, run.stderr[-3000:])
    update = updates[0]
    assert update["listener"]["has_clip"] is True, run.stderr[-3000:]
    status, content_type, data = listener.clip(update["id"])
    assert status == 200
    assert content_type == "audio/wav"
    assert hashlib.sha256(data).hexdigest() == update["clip"]["audio"]["sha256"]
    assert data == Path(update["clip"]["audio"]["path"]).read_bytes()
    assert "uploaded" in run.stderr
    queue = tmp_path / "state" / "uploads.db"
    assert queue.is_file()
    with sqlite3.connect(queue) as db:
        assert db.execute("SELECT count(*) FROM uploads").fetchone() == (0,)
        assert dict(db.execute("SELECT name, value FROM counters"))["sent"] == 1


def test_safeguard_check_tries_the_listener_and_its_token(
    listener: Listener, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """`safeguard check` with upload on: the listener must accept the token; a wrong token and
    an unreachable listener are each one clear line and a failing exit."""
    listener.start()

    def check(url: str, token: str) -> subprocess.CompletedProcess[str]:
        config = tmp_path / "check.yaml"
        config.write_text(
            f"device: {{id: check-pi}}\nstorage: {{dir: {tmp_path / 'state'}}}\n"
            f"models: {{dir: {require_models()}}}\n"
            f"mqtt: {{host: 127.0.0.1, port: {mosquitto.port}}}\n"
            f"listener: {{enabled: true, url: '{url}', timeout_s: 5}}\n"
        )
        return subprocess.run(
            [sys.executable, "-m", "edge.cli", "check", "--config", str(config)],
            cwd=ROOT,
            env={**os.environ, "SAFEGUARD_API_TOKEN": token},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    good = check(listener.url, TOKEN)
    assert good.returncode == 0, good.stderr
    assert f"listener: ok ({listener.url}" in good.stdout
    wrong = check(listener.url, "not-the-token")
    assert wrong.returncode != 0
    assert "refused the api_token (HTTP 401" in wrong.stderr
    closed = f"http://127.0.0.1:{free_port()}"
    down = check(closed, TOKEN)
    assert down.returncode != 0
    assert f"cannot reach the listener at {closed}" in down.stderr

"""The MJPEG preview with a real HTTP client: refused without the password, a multipart
stream of decodable JPEG frames that follow the frame ring with it; off by default and
refusing to start without its secret."""

from __future__ import annotations

import base64
import http.client
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.camera import FrameRing
from edge.config import parse_config
from edge.errors import ConfigError
from edge.preview import BOUNDARY, PreviewServer
from edge.videoconfig import PreviewConfig
from tests.helpers import ROOT, VIDEO_DEV, require_models, require_shared

PASSWORD = "correct horse battery"


def auth(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
def ring() -> FrameRing:
    ring = FrameRing(4, (48, 64, 3))
    ring.write(np.full((48, 64, 3), (0, 0, 200), np.uint8), 0.0)  # red
    return ring


@pytest.fixture
def preview(ring: FrameRing) -> Iterator[PreviewServer]:
    config = PreviewConfig(enabled=True, port=0, fps=10, max_clients=1)
    server = PreviewServer(config, ring, password=PASSWORD)
    server.start()
    yield server
    server.stop()


def get(
    server: PreviewServer, path: str, headers: dict[str, str]
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request("GET", path, headers=headers)
    return conn, conn.getresponse()


def read_part(response: http.client.HTTPResponse) -> np.ndarray:
    """One JPEG part of the multipart stream, decoded."""
    assert response.readline() == f"--{BOUNDARY}\r\n".encode()
    headers = {}
    while (line := response.readline()) != b"\r\n":
        name, value = line.decode().split(":", 1)
        headers[name.lower()] = value.strip()
    assert headers["content-type"] == "image/jpeg"
    data = response.read(int(headers["content-length"]))
    assert response.read(2) == b"\r\n"
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    assert image.shape == (48, 64, 3)
    return np.asarray(image)


def test_preview_needs_the_password(preview: PreviewServer) -> None:
    for headers in ({}, auth("safeguard", "wrong"), auth("admin", PASSWORD)):
        conn, response = get(preview, "/", headers)
        assert response.status == 401
        assert response.getheader("WWW-Authenticate", "").startswith("Basic")
        conn.close()
    conn, response = get(preview, "/snapshot.jpg", auth("safeguard", PASSWORD))
    assert response.status == 200
    assert response.getheader("Content-Type") == "image/jpeg"
    image = cv2.imdecode(np.frombuffer(response.read(), np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    assert image[:, :, 2].mean() > 150  # red
    conn.close()
    assert preview.refused == 3


def test_preview_streams_the_newest_frame(preview: PreviewServer, ring: FrameRing) -> None:
    conn, response = get(preview, "/", auth("safeguard", PASSWORD))
    assert response.status == 200
    assert response.getheader("Content-Type") == (f"multipart/x-mixed-replace; boundary={BOUNDARY}")
    assert read_part(response)[:, :, 2].mean() > 150  # red
    ring.write(np.full((48, 64, 3), (200, 0, 0), np.uint8), 1.0)  # blue
    for _ in range(5):  # at 10 fps, the new frame shows within a part or two
        if read_part(response)[:, :, 0].mean() > 150:
            break
    else:
        pytest.fail("the stream did not follow the ring")
    second, busy = get(preview, "/", auth("safeguard", PASSWORD))  # max_clients=1
    assert busy.status == 503
    second.close()
    conn.close()


def test_preview_is_off_by_default_and_refuses_to_start_without_a_password(
    ring: FrameRing, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert parse_config("{}").video.preview.enabled is False
    monkeypatch.delenv("SAFEGUARD_PREVIEW_PASSWORD", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(ConfigError, match="SAFEGUARD_PREVIEW_PASSWORD"):
        PreviewServer(PreviewConfig(enabled=True, port=0), ring)
    monkeypatch.setenv("SAFEGUARD_PREVIEW_PASSWORD", PASSWORD)
    server = PreviewServer(PreviewConfig(enabled=True, port=0), ring)  # from the secret
    server.start()
    try:
        conn, response = get(server, "/snapshot.jpg", auth("safeguard", PASSWORD))
        assert response.status == 200
        conn.close()
    finally:
        server.stop()


def test_snapshot_takes_a_cache_busting_query(preview: PreviewServer) -> None:
    conn, response = get(preview, "/snapshot.jpg?t=1700000000", auth("safeguard", PASSWORD))
    assert response.status == 200
    assert response.getheader("Content-Type") == "image/jpeg"
    conn.close()


def safeguard(command: str, tmp_path: Path, preview: str, password: bool) -> tuple[int, str]:
    clip = require_shared(VIDEO_DEV / "clips" / "nofi002.mp4")
    config = tmp_path / "config.yaml"
    config.write_text(
        f"models: {{dir: {require_models()}}}\nstorage: {{dir: {tmp_path}}}\n"
        "audio: {source: none}\n"
        f"video: {{source: 'file:{clip}', preview: {{enabled: true, {preview}}}}}\n"
        "mqtt: {host: 127.0.0.1, port: 9}\n"
    )
    secrets = {"CREDENTIALS_DIRECTORY", "SAFEGUARD_PREVIEW_PASSWORD"}
    env = {k: v for k, v in os.environ.items() if k not in secrets}
    if password:
        env["SAFEGUARD_PREVIEW_PASSWORD"] = PASSWORD
    run = subprocess.run(
        [str(ROOT / ".venv/bin/safeguard"), command, "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    return run.returncode, run.stdout + run.stderr


def test_a_preview_port_in_use_or_a_foreign_host_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out = safeguard("run", tmp_path, f"port: {port}", password=True)
    assert code == 1, out
    assert "Traceback" not in out, out
    assert f"video.preview.port: 127.0.0.1:{port} is in use" in out, out
    code, out = safeguard("run", tmp_path, "port: 0, host: 192.0.2.55", password=True)
    assert code == 1, out
    assert "Traceback" not in out, out
    assert "video.preview.host: 192.0.2.55 is not an address of this machine" in out, out


def test_check_fails_on_a_preview_without_password_or_with_a_foreign_host(
    tmp_path: Path,
) -> None:
    """`check` said ok to both, and `run` then refused to start."""
    code, out = safeguard("check", tmp_path, "port: 0", password=False)
    assert code == 1, out
    assert "SAFEGUARD_PREVIEW_PASSWORD" in out, out
    assert "broker" not in out, out  # it stopped at the preview
    code, out = safeguard("check", tmp_path, "port: 0, host: 192.0.2.55", password=True)
    assert code == 1, out
    assert "video.preview.host" in out, out

"""The MJPEG preview with a real HTTP client: refused without the password, a multipart
stream of decodable JPEG frames that follow the frame ring with it; off by default and
refusing to start without its secret."""

from __future__ import annotations

import base64
import http.client
from collections.abc import Iterator

import cv2
import numpy as np
import pytest

from edge.camera import FrameRing
from edge.config import parse_config
from edge.errors import ConfigError
from edge.preview import BOUNDARY, PreviewServer
from edge.videoconfig import PreviewConfig

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

"""An optional MJPEG preview of the camera (`video.preview`), off by default.

When on, an HTTP server in its own threads serves the newest frame of the frame ring as
`multipart/x-mixed-replace` at `/` (and one JPEG at `/snapshot.jpg`), behind HTTP basic
auth. The password is a secret (`preview_password`: `SAFEGUARD_PREVIEW_PASSWORD` or
`$CREDENTIALS_DIRECTORY/preview_password`); without it the preview refuses to start. Basic
auth travels in clear text: keep the preview on loopback or a trusted network, or put a TLS
proxy in front of it. Readers only copy the newest frame: capture never waits for them.
"""

from __future__ import annotations

import base64
import errno
import hmac
import logging
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import cv2

from edge.camera import FrameRing
from edge.errors import ConfigError
from edge.secrets import env_name, read_secret
from edge.videoconfig import PreviewConfig

log = logging.getLogger(__name__)
BOUNDARY = "safeguardframe"
SECRET_NAME = "preview_password"  # noqa: S105 (the name of the secret, not its value)


class PortInUse(ConfigError):
    """video.preview.port is taken (by another program, or by a running safeguard)."""


def listen(config: PreviewConfig, handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    """The preview's HTTP server bound to video.preview.host:port; a one-line error naming the
    key when it cannot be (the port is in use, the host is not an address of this machine)."""
    where = f"{config.host}:{config.port}"
    try:
        return ThreadingHTTPServer((config.host, config.port), handler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(
                f"video.preview.port: {where} is in use by another program: choose another port"
            ) from None
        if exc.errno in {errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT} or isinstance(
            exc, socket.gaierror
        ):
            raise ConfigError(
                f"video.preview.host: {config.host} is not an address of this machine "
                f"({exc.strerror or exc}): use 127.0.0.1, 0.0.0.0 or one of its own addresses"
            ) from None
        raise ConfigError(
            f"video.preview: cannot listen on {where}: {exc.strerror or exc}"
            + (" (ports below 1024 need privileges)" if exc.errno == errno.EACCES else "")
        ) from None


class PreviewServer:
    def __init__(self, config: PreviewConfig, ring: FrameRing, password: str | None = None) -> None:
        password = password if password is not None else read_secret(SECRET_NAME)
        if not password:
            raise ConfigError(
                f"video.preview is on but its password is missing: set {env_name(SECRET_NAME)} "
                f"or provide $CREDENTIALS_DIRECTORY/{SECRET_NAME}"
            )
        self.config = config
        self.ring = ring
        self.clients = 0
        self.refused = 0  # failed logins and clients over the limit
        self._lock = threading.Lock()
        self._stop = threading.Event()
        token = base64.b64encode(f"{config.user}:{password}".encode()).decode()
        self._expected = f"Basic {token}".encode()
        self._httpd = listen(config, self._handler())
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="preview", daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        log.info("MJPEG preview on http://%s:%d/", self.config.host, self.port)

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread.is_alive():  # shutdown() waits for a serve_forever that never ran
            self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout)

    def authorised(self, header: str | None) -> bool:
        return header is not None and hmac.compare_digest(header.encode(), self._expected)

    def jpeg(self) -> bytes | None:
        latest = self.ring.latest()
        if latest is None:
            return None
        ok, data = cv2.imencode(".jpg", latest[2], [cv2.IMWRITE_JPEG_QUALITY, self.config.quality])
        return data.tobytes() if ok else None

    def _enter(self) -> bool:
        with self._lock:
            if self.clients >= self.config.max_clients:
                self.refused += 1
                return False
            self.clients += 1
            return True

    def _leave(self) -> None:
        with self._lock:
            self.clients -= 1

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "safeguard-preview"

            def log_message(self, format: str, *args: object) -> None:
                log.debug("preview %s: %s", self.address_string(), format % args)

            def do_GET(self) -> None:
                if not server.authorised(self.headers.get("Authorization")):
                    server.refused += 1
                    self.send_response(HTTPStatus.UNAUTHORIZED)
                    self.send_header("WWW-Authenticate", 'Basic realm="safeguard preview"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                path = urlsplit(self.path).path  # `?t=...`: a cache-busting query
                if path == "/snapshot.jpg":
                    self._snapshot()
                elif path in ("/", "/stream.mjpg"):
                    self._stream()
                else:
                    self.send_error(HTTPStatus.NOT_FOUND)

            def _snapshot(self) -> None:
                data = server.jpeg()
                if data is None:
                    self.send_error(HTTPStatus.SERVICE_UNAVAILABLE, "no frame yet")
                    return
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(data)

            def _stream(self) -> None:
                if not server._enter():
                    self.send_error(HTTPStatus.SERVICE_UNAVAILABLE, "too many preview clients")
                    return
                try:
                    self.send_response(HTTPStatus.OK)
                    self.send_header(
                        "Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}"
                    )
                    self.send_header("Cache-Control", "no-store")
                    self.end_headers()
                    period = 1.0 / server.config.fps
                    while not server._stop.is_set():
                        began = time.monotonic()
                        data = server.jpeg()
                        if data is not None:
                            self.wfile.write(
                                f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                                f"Content-Length: {len(data)}\r\n\r\n".encode()
                                + data
                                + b"\r\n"
                            )
                            self.wfile.flush()
                        server._stop.wait(max(0.0, period - (time.monotonic() - began)))
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the viewer went away
                finally:
                    server._leave()

        return Handler

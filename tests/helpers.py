"""Shared test helpers: paths to ../shared, free ports, a real Mosquitto broker."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
SHARED_MODELS = SHARED / "models"
AUDIO_DEV = SHARED / "data" / "audio-dev"
VIDEO_DEV = SHARED / "data" / "video-dev"
MODELS_DIR = ROOT / "var" / "models"


def require_shared(path: Path) -> Path:
    """`path`, or a failure that says what is missing and how to get it."""
    if not path.exists():
        pytest.fail(
            f"{path} is missing: these tests need the project's shared development data and "
            "model mirror beside the repository (../shared, with models/ and data/). "
            "Get that folder from the project's maintainers and place it next to the clone.",
            pytrace=False,
        )
    return path


def require_models() -> Path:
    """The fetched models folder (`make models` fills it from the mirror)."""
    if not (MODELS_DIR / "yamnet.tflite").is_file():
        pytest.fail(f"{MODELS_DIR} has no models: run `make models` first", pytrace=False)
    return MODELS_DIR


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@dataclass
class Mosquitto:
    """A real Mosquitto on an ephemeral loopback port, which tests may stop and restart."""

    workdir: Path
    port: int = field(default_factory=free_port)
    extra_config: str = ""
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {self.workdir}/\nlog_dest file {self.workdir}/mosquitto.log\n"
            + self.extra_config
        )
        self.process = subprocess.Popen([exe, "-c", str(conf)])
        wait_port(self.port)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

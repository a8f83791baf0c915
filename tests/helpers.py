"""Shared test helpers: paths to ../shared, free ports, a real Mosquitto broker."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
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
            # as root, Mosquitto would switch to its own user, which cannot write here
            + ("user root\n" if os.geteuid() == 0 else "")
            + f"persistence_location {self.workdir}/\nlog_dest file {self.workdir}/mosquitto.log\n"
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


# --- listener helpers ------------------------------------------------------------------------


def make_alert(device: str = "dev-1", **fields: object) -> dict[str, object]:
    """A valid `safeguard.alert/1` message (fields override the defaults)."""
    from edge.schema import SCHEMA_ID, new_id, rfc3339

    now = time.time()
    alert: dict[str, object] = {
        "schema": SCHEMA_ID,
        "id": new_id(),
        "device_id": device,
        "event": "start",
        "category": "scream",
        "severity": "critical",
        "score": 0.93,
        "started_at": rfc3339(now - 1.0),
        "sent_at": rfc3339(now),
    }
    alert.update(fields)
    return alert


class PostgresCluster:
    """A throwaway PostgreSQL cluster on an ephemeral loopback port (initdb + pg_ctl).

    As root it runs as the `postgres` user. Without initdb it falls back to a server already
    listening on 127.0.0.1:5432 with trust authentication.
    """

    def __init__(self, durable: bool = False) -> None:
        self.durable = durable
        self.port = 5432
        self.workdir: Path | None = None
        self.owned = False

    @staticmethod
    def _initdb() -> str | None:
        found = shutil.which("initdb")
        if found:
            return found
        candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        return str(candidates[-1]) if candidates else None

    def _run(self, argv: list[str]) -> None:
        import os

        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        subprocess.run(argv, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        import os
        import tempfile

        initdb = self._initdb()
        if initdb is None:
            wait_port(5432, timeout=2)
            return
        self.workdir = Path(tempfile.mkdtemp(prefix="sg-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.workdir, "postgres", "postgres")
        data = self.workdir / "data"
        self.port = free_port()
        self._run(
            [initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"]
        )
        options = f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 "
        options += "-c max_connections=200 "
        if not self.durable:
            options += "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        pg_ctl = str(Path(initdb).with_name("pg_ctl"))
        self._run(
            [
                pg_ctl,
                "-D",
                str(data),
                "-l",
                str(self.workdir / "log"),
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
            ]
        )
        self.owned = True
        wait_port(self.port)

    def stop(self) -> None:
        if self.owned and self.workdir is not None:
            initdb = self._initdb()
            assert initdb is not None
            pg_ctl = str(Path(initdb).with_name("pg_ctl"))
            self._run([pg_ctl, "-D", str(self.workdir / "data"), "-m", "fast", "-w", "stop"])
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.owned = False

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(
            f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True
        ) as conn:
            conn.execute(sql.encode())

    def create_database(self, name: str) -> str:
        """A fresh, empty database; its URL."""
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self._admin(f'CREATE DATABASE "{name}"')
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def drop_database(self, name: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


_CLUSTER: list[PostgresCluster] = []


def postgres_cluster() -> PostgresCluster:
    """The suite's one throwaway PostgreSQL cluster, started on first use, stopped at exit."""
    if not _CLUSTER:
        import atexit

        cluster = PostgresCluster()
        cluster.start()
        atexit.register(cluster.stop)
        _CLUSTER.append(cluster)
    return _CLUSTER[0]


def listener_database(kind: str, tmp_path: Path) -> Iterator[str]:
    """A fresh listener database URL of `kind` (sqlite or postgresql), dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path}/alerts.db"
        return
    import uuid

    cluster = postgres_cluster()
    name = f"sg_test_{uuid.uuid4().hex[:12]}"
    url = cluster.create_database(name)
    try:
        yield url
    finally:
        cluster.drop_database(name)


class DeviceClient:
    """A simulated device side: publishes alerts (QoS 1) and collects the listener's acks."""

    def __init__(self, port: int, prefix: str = "safeguard", name: str = "") -> None:
        import threading
        import uuid

        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.prefix = prefix
        self.acks: list[dict[str, object]] = []
        self.cond = threading.Condition()
        self.on_ack: list[object] = []
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=name or f"sim-{uuid.uuid4().hex[:10]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        result = self.client.subscribe(f"{prefix}/+/ack", qos=1)
        assert result[0] == 0
        time.sleep(0.1)  # the SUBACK; acks published before it would be missed

    def _on_message(self, _c: object, _u: object, msg: object) -> None:
        import json

        ack = json.loads(msg.payload)  # type: ignore[attr-defined]
        ack["_topic"] = msg.topic  # type: ignore[attr-defined]
        for hook in self.on_ack:
            hook(ack)  # type: ignore[operator]
        with self.cond:
            self.acks.append(ack)
            self.cond.notify_all()

    def publish_alert(self, alert: dict[str, object], device: str | None = None) -> None:
        import json

        self.publish_raw(device or str(alert["device_id"]), json.dumps(alert).encode())

    def publish_raw(self, device: str, payload: bytes, suffix: str = "alert") -> None:
        info = self.client.publish(f"{self.prefix}/{device}/{suffix}", payload, qos=1)
        assert info.rc == 0

    def wait_acks(self, count: int, timeout: float = 10.0) -> list[dict[str, object]]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.acks) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(self.acks)} acks after {timeout} s, wanted {count}")
                self.cond.wait(left)
            return list(self.acks)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def fight_with_scream(folder: Path, seconds: float) -> Path:
    """A dev fight clip (looped) whose audio track is a dev scream, `seconds` long (MP4)."""
    video = require_shared(VIDEO_DEV) / "clips" / "fi001.mp4"
    audio = require_shared(AUDIO_DEV)
    scream = next(
        audio / line.split(",")[0]
        for line in (audio / "labels.csv").read_text().splitlines()
        if line.split(",")[1] == "scream"
    )
    muxed = folder / "fight_scream.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-stream_loop", "-1", "-i", str(video), "-i", str(scream),
         "-map", "0:v", "-map", "1:a", "-af", "apad", "-c:v", "copy", "-c:a", "aac",
         "-t", f"{seconds:g}", str(muxed)],
        check=True, timeout=60,
    )  # fmt: skip
    return muxed


def retained(port: int, topic: str, timeout: float = 10.0) -> str:
    """The retained message on `topic` (fails the test when there is none)."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    got: list[str] = []
    client = paho.Client(CallbackAPIVersion.VERSION2)
    client.on_message = lambda _c, _u, msg: got.append(msg.payload.decode())
    client.connect("127.0.0.1", port)
    client.subscribe(topic, qos=1)
    client.loop_start()
    deadline = time.monotonic() + timeout
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    client.loop_stop()
    client.disconnect()
    assert got, f"no retained message on {topic}"
    return got[-1]


class FreezableProxy:
    """A TCP proxy on a loopback port in front of `upstream_port` that can be frozen: while
    frozen it accepts connections and holds every socket open but passes no byte either way,
    like a database server that was stopped (SIGSTOP) or sits behind a network partition."""

    def __init__(self, upstream_port: int, port: int = 0) -> None:
        import threading

        self.upstream_port = upstream_port
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", port))
        self.server.listen(64)
        self.port = int(self.server.getsockname()[1])
        self.thawed = threading.Event()
        self.thawed.set()
        self.closed = threading.Event()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        self.thawed.clear()

    def thaw(self) -> None:
        self.thawed.set()

    def _accept(self) -> None:
        import threading

        while not self.closed.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self.sockets.append(client)
            self.thawed.wait()  # frozen: the connection is accepted, then nothing
            if self.closed.is_set():
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self.sockets.append(upstream)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        import contextlib

        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                self.thawed.wait()
                if self.closed.is_set():
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.closed.set()
        self.thawed.set()
        self.server.close()
        for sock in self.sockets:
            sock.close()


def run_beside_shadows(python: str, args: Sequence[str], folder: Path) -> tuple[int, str, bool]:
    """Run `python ARGS` in `folder`, which holds a package `edge` and an `argparse.py` that
    would leave a marker if imported (as a writable working directory could hold them):
    (exit code, stderr, whether any of them was imported)."""
    shadow = folder / "edge"
    shadow.mkdir()
    marker = folder / "imported"
    code = f"open({str(marker)!r}, 'w').close()\n"
    for path in (shadow / "__init__.py", shadow / "health.py", folder / "argparse.py"):
        path.write_text(code)
    out = subprocess.run(
        [python, *args], cwd=folder, capture_output=True, text=True, timeout=120, check=False
    )
    return out.returncode, out.stderr, marker.exists()


def spawn_listener(
    folder: Path, name: str, broker: int, url: str, token: str
) -> tuple[subprocess.Popen[bytes], int, Path]:
    """`safeguard-listener` as a process on a free loopback port, its config and log in
    `folder` as NAME.yaml / NAME.log: (process, port, log)."""
    port = free_port()
    config = folder / f"{name}.yaml"
    config.write_text(
        f"mqtt: {{port: {broker}}}\ndatabase: {{url: '{url}'}}\n"
        f"http: {{host: 127.0.0.1, port: {port}}}\n"
    )
    log = folder / f"{name}.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "listener.cli", "--config", str(config)],
            cwd=ROOT,
            env={**os.environ, "SAFEGUARD_API_TOKEN": token},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return process, port, log

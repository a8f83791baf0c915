"""sd_notify: the real daemon under a fake `$NOTIFY_SOCKET` (a datagram socket this test binds)
records from a real PulseAudio server. READY comes once the models are loaded, WATCHDOG pings
while the pipeline runs or capture retries a missing device, the pings stop when the audio
server hangs (SIGSTOP), and STOPPING on SIGTERM.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.config import load_config
from edge.daemon import Daemon
from edge.events import Event
from edge.notify import Notifier, PipelineWatch, Progress
from edge.video import U8
from tests.helpers import ROOT, fight_with_scream, free_port, require_models
from tests.test_capture_pulse import Pulse

pytestmark = pytest.mark.slow


class NotifySocket:
    """A bound AF_UNIX datagram socket that collects what the daemon sends, with times."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.messages: list[tuple[float, str]] = []

    def collect(self, seconds: float) -> list[str]:
        """Everything received in the next `seconds`."""
        got: list[str] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                break
            self.messages.append((time.monotonic(), data))
            got.extend(data.split("\n"))
        return got

    def wait_for(self, prefix: str, timeout: float) -> list[str]:
        """Lines received up to and including the first that starts with `prefix`."""
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.collect(min(0.5, deadline - time.monotonic()))
            seen.extend(lines)
            if any(line.startswith(prefix) for line in lines):
                return seen
        raise AssertionError(f"no {prefix!r} within {timeout} s; got {seen[-10:]}")

    def close(self) -> None:
        self.sock.close()


def test_notifier_sends_to_an_abstract_socket() -> None:
    address = f"@safeguard-test-{os.getpid()}"
    sink = NotifySocket(address)
    try:
        assert Notifier(address, use_systemd_python=False).send("READY=1", "STATUS=ok")
        assert sink.collect(1.0) == ["READY=1", "STATUS=ok"]
    finally:
        sink.close()


def test_no_socket_means_no_notifications() -> None:
    assert not Notifier(None).send("READY=1")


class _Sent(Notifier):
    def __init__(self) -> None:
        super().__init__(None)
        self.sent: list[str] = []

    def send(self, *lines: str) -> bool:
        self.sent.extend(lines)
        return True


def test_watch_is_ready_at_once_and_pings_only_while_progressing() -> None:
    """READY comes when the loop starts (models are loaded before it), not when the first
    samples come: a missing microphone kept the service "activating" until systemd's start
    timeout killed it, every 3 minutes. While capture retries a missing device, pings go on."""
    now = [100.0]
    state = [Progress(0, 0.0, 0.0, waiting=True)]
    sent = _Sent()
    watch = PipelineWatch(
        sent, lambda: state[0], lambda: "ok", stall_s=5.0, ping_every_s=1.0, clock=lambda: now[0]
    )
    watch.tick()
    assert sent.sent == ["READY=1", "STATUS=ok"]
    now[0] += 20.0  # no samples for 20 s, but the microphone is being retried: no stall
    watch.tick()
    assert sent.sent.count("WATCHDOG=1") == 1
    sent.sent.clear()
    state[0] = Progress(1600, now[0], now[0])
    for _ in range(4):
        now[0] += 1.0
        state[0] = Progress(state[0].samples + 16000, now[0], now[0])
        watch.tick()
    assert sent.sent.count("WATCHDOG=1") == 4
    now[0] += 6.0  # capture and inference both idle past stall_s
    watch.tick()
    watch.tick()
    assert sent.sent.count("WATCHDOG=1") == 4
    assert "STATUS=stalled: capture idle 6.0 s, inference idle 6.0 s" in sent.sent
    state[0] = Progress(state[0].samples + 1600, now[0], now[0] - 5.5)  # inference still idle
    now[0] += 1.0
    watch.tick()
    assert sent.sent.count("WATCHDOG=1") == 4
    state[0] = Progress(state[0].samples + 1600, now[0], now[0])
    watch.tick()
    assert sent.sent.count("WATCHDOG=1") == 5
    watch.stopping()
    assert sent.sent[-2:] == ["STOPPING=1", "STATUS=stopping"]


def test_a_dead_or_stuck_video_thread_stops_the_pings_even_without_audio() -> None:
    """On a camera-only device (no audio source) the watch looked at nothing: a video thread
    that died or hung left systemd pinging a blind daemon forever."""
    now = [100.0]
    state = [Progress(-1, 0.0, 0.0)]
    sent = _Sent()
    watch = PipelineWatch(
        sent, lambda: state[0], lambda: "ok", stall_s=5.0, ping_every_s=1.0, clock=lambda: now[0]
    )
    watch.tick()
    now[0] += 1.0
    watch.tick()
    assert sent.sent.count("WATCHDOG=1") == 1
    state[0] = Progress(-1, 0.0, 0.0, video="video analysis idle 6.0 s")
    now[0] += 1.0
    watch.tick()
    assert sent.sent.count("WATCHDOG=1") == 1
    assert sent.sent[-1] == "STATUS=stalled: video analysis idle 6.0 s"
    # with audio too, both reasons are given
    state[0] = Progress(1600, now[0] - 6.0, now[0] - 6.0, video="video analysis idle 6.0 s")
    assert watch.stall(now[0]) == (
        "capture idle 6.0 s, inference idle 6.0 s; video analysis idle 6.0 s"
    )


def test_the_daemon_stops_pinging_when_its_video_analysis_dies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real daemon, camera only (a `file:` camera on a looped dev fight, no audio), in this
    process so that its analysis can be made to fail: READY and pings, then the thread dies,
    STATUS says why and the pings stop, so systemd restarts the service."""
    video = fight_with_scream(tmp_path, 12)
    config = tmp_path / "config.yaml"
    config.write_text(
        f"""
audio: {{source: none}}
video: {{source: "file:{video}"}}
mqtt: {{host: 127.0.0.1, port: {free_port()}}}
storage: {{dir: {tmp_path / "state"}}}
models: {{dir: {require_models()}}}
system: {{stall_s: 2}}
"""
    )
    sink = NotifySocket(str(tmp_path / "notify.sock"))
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "600000")  # a ping every 0.3 s
    daemon = Daemon(load_config(config))
    assert daemon.video is not None
    process, calls = daemon.video.analyzer.process, [0]

    def failing(frame: U8, t: float) -> list[Event]:
        calls[0] += 1
        if calls[0] > 12:  # 1.5 s of analysis at 8 frames/s, then an unexpected error
            raise RuntimeError("invoke failed")
        return process(frame, t)

    daemon.video.analyzer.process = failing  # type: ignore[method-assign]
    stopper = threading.Timer(6.0, daemon.stop_event.set)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    stopper.start()
    try:
        assert daemon.run() == 0
    finally:
        stopper.cancel()
        for sig, handler in handlers.items():  # run() installs its own
            signal.signal(sig, handler)
    lines = sink.collect(0.5)
    sink.close()
    assert "READY=1" in lines
    stalled = next(i for i, line in enumerate(lines) if line.startswith("STATUS=stalled"))
    assert lines[stalled] == "STATUS=stalled: video analysis failed (RuntimeError: invoke failed)"
    assert lines[:stalled].count("WATCHDOG=1") >= 3, lines  # pinged while it analysed
    assert "WATCHDOG=1" not in lines[stalled:], lines
    assert daemon.video.health()["video_analysis"] == "failed"


@pytest.fixture
def pulse(tmp_path: Path) -> Iterator[Pulse]:
    server = Pulse(tmp_path / "pulse")
    server.start()
    yield server
    if server.proc is not None:
        server.proc.send_signal(signal.SIGCONT)
    server.stop()


def test_daemon_ready_watchdog_stall_and_stopping(tmp_path: Path, pulse: Pulse) -> None:
    models = require_models()
    config = tmp_path / "config.yaml"
    config.write_text(
        f"""
audio: {{source: "pulse:virtmic", hop_s: 0.5, retry_max_s: 1}}
mqtt: {{host: 127.0.0.1, port: {free_port()}}}
storage: {{dir: {tmp_path / "state"}}}
models: {{dir: {models}}}
logging: {{health_every_s: 2}}
system: {{stall_s: 2}}
"""
    )
    sink = NotifySocket(str(tmp_path / "notify.sock"))
    env = {
        **os.environ,
        "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
        "WATCHDOG_USEC": "600000",  # a ping every 0.3 s
        "PULSE_SERVER": pulse.server,
    }
    log = (tmp_path / "daemon.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "run", "--config", str(config)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    assert pulse.proc is not None
    try:
        seen = sink.wait_for("READY=1", timeout=60)
        assert "WATCHDOG=1" not in seen[: seen.index("READY=1")]  # no pings before READY
        ready = next(line for line in seen[seen.index("READY=1") :] if line.startswith("STATUS="))
        assert "capture running" in ready, ready

        running = sink.collect(3.0)
        assert running.count("WATCHDOG=1") >= 5, running

        pulse.proc.send_signal(signal.SIGSTOP)  # the audio server hangs: no more blocks
        stalled = sink.wait_for("STATUS=stalled", timeout=15)
        reason = next(line for line in stalled if line.startswith("STATUS=stalled"))
        capture_idle = float(reason.split("capture idle ")[1].split(" s")[0])
        inference_idle = float(reason.split("inference idle ")[1].split(" s")[0])
        # stall_s is 2 s: either one idle that long is a stall (the status rounds to 0.1 s;
        # with a 0.5 s hop inference can be idle longer than capture, which still had a block
        # in flight when the server stopped)
        assert max(capture_idle, inference_idle) >= 2.0, reason
        # capture reopens the stalled stream (3 s) and counts as waiting for its device while
        # that goes on, at most retry_max_s + stall_s = 3 s; a hung server stops it for good
        sink.collect(5.0)
        silent = sink.collect(3.0)
        assert "WATCHDOG=1" not in silent, silent
        pulse.proc.send_signal(signal.SIGCONT)

        proc.send_signal(signal.SIGTERM)
        sink.wait_for("STOPPING=1", timeout=15)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
        sink.close()
    text = (tmp_path / "daemon.log").read_text()
    assert "pipeline stalled (capture idle" in text, text[-2000:]
    for key in ("cpu_temp_c=", "disk_free_mb=", "capture_rate_hz=", "infer_p95_ms="):
        assert key in text, key


def test_a_missing_microphone_is_ready_and_pinged_while_it_is_retried(tmp_path: Path) -> None:
    """Without its microphone the daemon never sent READY, so systemd killed and restarted it
    every 3 minutes (camera and outbox with it); it now says why in STATUS and keeps pinging
    while capture retries the device in-process."""
    config = tmp_path / "config.yaml"
    config.write_text(
        f"""
audio: {{source: "alsa:no-such-microphone", retry_max_s: 1}}
mqtt: {{host: 127.0.0.1, port: {free_port()}}}
storage: {{dir: {tmp_path / "state"}}}
models: {{dir: {require_models()}}}
system: {{stall_s: 2}}
"""
    )
    sink = NotifySocket(str(tmp_path / "notify.sock"))
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "600000"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "run", "--config", str(config)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        sink.wait_for("READY=1", timeout=60)
        later = sink.collect(6.0)  # past stall_s: still pinged
        assert later.count("WATCHDOG=1") >= 10, later
        assert any("capture retrying" in line for line in later if line.startswith("STATUS=")), (
            later
        )
        assert not any(line.startswith("STATUS=stalled") for line in later), later
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        sink.close()

"""A loopback RTSP camera: ffmpeg pushes a dev clip (H.264 over RTP) to a local RTSP server
(GStreamer's gst-rtsp-server, Debian's `gir1.2-gst-rtsp-server-1.0` with `python3-gi`,
run by Debian's /usr/bin/python3), and `CameraSource` pulls it over RTSP/TCP as the daemon
does. The stream is dropped twice: the pusher stops and comes back (the server stays), and
the whole server goes away and comes back on the same port. Capture must resume each time.

ffmpeg alone cannot be the server: `-rtsp_flags listen` only accepts a pushing client, it
does not serve a player.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge.camera import CameraSource, FrameRing
from edge.events import Event
from edge.fusion import FusionSink
from edge.videoconfig import VideoConfig
from edge.videopipe import VideoWorker
from tests.helpers import ROOT, VIDEO_DEV, free_port, require_models, require_shared, wait_port

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER = """
import signal, sys
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer

port, rtp_port = sys.argv[1], int(sys.argv[2])
Gst.init(None)
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(port)
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(
    f"( udpsrc address=127.0.0.1 port={rtp_port} caps=\\"application/x-rtp,media=video,"
    "clock-rate=90000,encoding-name=H264,payload=96\\" ! rtpjitterbuffer latency=100 "
    "! rtph264depay ! h264parse config-interval=-1 ! rtph264pay name=pay0 pt=96 )"
)
factory.set_shared(True)
server.get_mount_points().add_factory("/cam", factory)
server.attach(None)
loop = GLib.MainLoop()
GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
print("ready", flush=True)
loop.run()
"""


class Collected:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def submit(self, event: Event) -> None:
        self.events.append(event)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


class Loopback:
    """The RTSP server and the ffmpeg pusher, each of which a test may stop and restart."""

    def __init__(self, workdir: Path, clip: Path) -> None:
        self.script = workdir / "rtsp_server.py"
        self.script.write_text(SERVER)
        self.clip = clip
        self.port, self.rtp_port = free_port(), free_port()
        self.url = f"rtsp://127.0.0.1:{self.port}/cam"
        self.server: subprocess.Popen[bytes] | None = None
        self.pusher: subprocess.Popen[bytes] | None = None

    def start_server(self) -> None:
        self.server = subprocess.Popen(
            [SYSTEM_PYTHON, str(self.script), str(self.port), str(self.rtp_port)],
            stdout=subprocess.DEVNULL,
        )
        wait_port(self.port, timeout=15)

    def start_pusher(self) -> None:
        self.pusher = subprocess.Popen(
            ["ffmpeg", "-v", "error", "-re", "-stream_loop", "-1", "-i", str(self.clip), "-an",
             "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency",
             "-x264-params", "keyint=10:repeat-headers=1", "-f", "rtp",
             f"rtp://127.0.0.1:{self.rtp_port}?pkt_size=1200"],
            stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def stop_server(self) -> None:
        if self.server is not None:
            stop(self.server)
            self.server = None

    def stop_pusher(self) -> None:
        if self.pusher is not None:
            stop(self.pusher)
            self.pusher = None


@pytest.fixture
def loopback(tmp_path: Path) -> Iterator[Loopback]:
    if not Path(SYSTEM_PYTHON).is_file():
        pytest.fail(f"{SYSTEM_PYTHON} is missing: install python3-gi (scripts/apt-packages.txt)")
    check = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0')"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if check.returncode != 0:
        pytest.fail(
            "GStreamer's RTSP server is missing: install gir1.2-gst-rtsp-server-1.0 and the "
            f"GStreamer plugins listed in scripts/apt-packages.txt ({check.stderr.strip()})",
            pytrace=False,
        )
    clip = require_shared(VIDEO_DEV) / "clips" / "fi001.mp4"
    rig = Loopback(tmp_path, clip)
    rig.start_server()
    rig.start_pusher()
    yield rig
    rig.stop_pusher()
    rig.stop_server()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    began = time.monotonic()
    while not predicate():
        if time.monotonic() - began > timeout:
            raise TimeoutError(f"{what} after {timeout} s")
        time.sleep(0.1)
    return time.monotonic() - began


def test_rtsp_camera_reconnects_and_resumes(loopback: Loopback) -> None:
    ring = FrameRing(60, (240, 320, 3))
    camera = CameraSource(loopback.url, ring, 320, max_fps=15, transport="tcp", retry_max_s=2)
    stats = camera.stats
    camera.start()
    try:
        wait_until(lambda: stats.frames >= 20, 30, "no frames over RTSP")
        assert stats.state == "running"
        latest = ring.latest()
        assert latest is not None
        assert latest[2].shape == (240, 320, 3)
        assert latest[2].std() > 5  # a picture, not a blank frame

        # 1. the camera's encoder goes away for 3 s; the RTSP server stays up
        loopback.stop_pusher()
        time.sleep(3)
        frames = stats.frames
        loopback.start_pusher()
        wait_until(lambda: stats.frames >= frames + 20, 40, "frames did not resume")

        # 2. the whole RTSP server goes away (the connection drops) and comes back
        reopens = stats.reopens
        loopback.stop_server()
        wait_until(lambda: stats.state == "retrying", 20, "the drop was not noticed")
        time.sleep(2)  # reconnect attempts fail while it is away
        frames = stats.frames
        loopback.stop_pusher()
        loopback.start_server()
        loopback.start_pusher()
        waited = wait_until(lambda: stats.frames >= frames + 20, 40, "no reconnect")
        assert stats.reopens > reopens
        assert stats.state == "running"
        assert waited < 40
    finally:
        camera.stop(timeout=10)
    assert camera.ended.is_set()
    assert stats.state == "stopped"


def test_a_violence_event_ends_when_the_camera_stops_delivering(
    loopback: Loopback, tmp_path: Path
) -> None:
    """A fight is seen over RTSP, then the camera's encoder goes away (the RTSP session stays
    open, so the capture still says `running`): the event ends within the hold instead of
    staying open until the camera is back, and a scream after that is not fused with it."""
    models = require_models()
    out = Collected()
    fusion = FusionSink(out, window_s=3.0, severity="critical")
    video = VideoConfig(source=loopback.url, retry_max_s=2)
    worker = VideoWorker(video, models, fusion, origin_wall=time.time())
    worker.start()
    try:
        wait_until(lambda: any(e.phase == "start" for e in out.events), 60, "no violence")
        loopback.stop_pusher()
        gone = time.monotonic()
        waited = wait_until(lambda: out.events[-1].phase == "end", 15, "the event stayed open")
        assert waited < video.smoothing.hold_s + 2.5
        time.sleep(video.smoothing.hold_s + 3.5)  # the fusion window after the end
        now = time.time()
        scream = Event(
            phase="start", key="a", category="scream", severity="warning", score=0.9,
            peak_score=0.9, start_s=0.0, at_s=0.5, end_s=0.5, wall_start=now - 0.5, wall_at=now,
            modalities=("audio",),
        )  # fmt: skip
        fusion.submit(scream)
    finally:
        worker.stop(10)
    assert out.events[-1].severity == "warning"
    assert out.events[-1].modalities == ("audio",)
    assert fusion.fused == 0
    assert worker.health()["video_capture"] == "stopped"
    assert time.monotonic() - gone < 30


CAMERA = """
import logging, sys, time
logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")
from edge.camera import CameraSource, FrameRing
cam = CameraSource(sys.argv[1], FrameRing(4, (240, 320, 3)), 320, retry_max_s=1)
cam.start()
cam.ended.wait(float(sys.argv[2]))
print("STATE", cam.stats.state, cam.stats.error, flush=True)
cam.stop()
"""


def camera_run(tmp_path: Path, source: str, seconds: float) -> tuple[str, str]:
    """(state and error, stderr) of a CameraSource on `source` run for `seconds`."""
    script = tmp_path / "camera.py"
    script.write_text(CAMERA)
    run = subprocess.run(
        [str(ROOT / ".venv/bin/python"), str(script), source, str(seconds)],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout, run.stderr


def test_camera_failures_are_one_redacted_line_with_the_reason(
    loopback: Loopback, tmp_path: Path
) -> None:
    """No OpenCV/FFmpeg lines on every attempt, no password in the log, and the reason (404,
    connection refused) in the daemon's one warning and in the camera's error (health)."""
    secret = "Hunter2pass"
    wrong_path = f"rtsp://admin:{secret}@127.0.0.1:{loopback.port}/nothing"
    refused = f"rtsp://admin:{secret}@127.0.0.1:{free_port()}/cam"
    for url, reason in ((wrong_path, "404"), (refused, "connection refused")):
        state, log = camera_run(tmp_path, url, 4)
        assert secret not in state + log, log
        assert reason in state, state
        native = [line for line in log.splitlines() if not line.startswith(("DEBUG", "WARNING"))]
        assert native == [], log
        warnings = [line for line in log.splitlines() if line.startswith("WARNING")]
        assert len(warnings) == 1, log
        assert reason in warnings[0]
        assert "rtsp://***@127.0.0.1" in warnings[0]


def test_sources_that_can_never_open_fail_once_and_stop(tmp_path: Path) -> None:
    """A `file:` camera that is not there, or a gst pipeline that does not parse, is one ERROR
    line and the capture ends (`failed`), instead of being retried forever."""
    cases = (
        ("file:/nonexistent/clip.mp4", "no such file"),
        ('gst:videotestsrc ! capsfilter caps="video/x-raw', "No closing quotation"),
    )
    for source, reason in cases:
        began = time.monotonic()
        state, log = camera_run(tmp_path, source, 20)
        assert time.monotonic() - began < 15
        assert state.startswith("STATE failed"), state
        assert reason in state
        assert [line for line in log.splitlines() if line.startswith("ERROR")] != [], log
        assert "WARNING" not in log, log


def test_check_fails_for_camera_sources_that_cannot_work(tmp_path: Path) -> None:
    """`check` said ok to each of these; `run` then retried them forever."""
    cases = {
        f"rtsp://127.0.0.1:{free_port()}/nothing": "connection refused",
        "gst:videotestsrc ! nosuchelement": "no element 'nosuchelement'",
        'gst:videotestsrc ! capsfilter caps=\\"video/x-raw': "No closing quotation",
        "/dev/video97": "no such device",
    }
    for source, reason in cases.items():
        config = tmp_path / "config.yaml"
        config.write_text(
            f"models: {{dir: {require_models()}}}\nstorage: {{dir: {tmp_path}}}\n"
            f'audio: {{source: none}}\nvideo: {{source: "{source}"}}\n'
            "mqtt: {host: 127.0.0.1, port: 9}\n"
        )
        run = subprocess.run(
            [str(ROOT / ".venv/bin/safeguard"), "check", "--config", str(config)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert run.returncode == 1, (source, run.stdout, run.stderr)
        assert reason in run.stderr, (source, run.stderr)
        assert "broker" not in run.stdout


def test_a_stalled_rtsp_stream_is_noticed_within_seconds(loopback: Loopback) -> None:
    """The camera's encoder goes away but the RTSP server keeps the session open: no frame, no
    end of stream. The capture leaves `running` within the stall timeout (it took OpenCV's 30 s
    read timeout, with health saying `running` all along), and resumes when frames return."""
    ring = FrameRing(60, (240, 320, 3))
    camera = CameraSource(loopback.url, ring, 320, max_fps=15, transport="tcp", retry_max_s=2)
    stats = camera.stats
    camera.start()
    try:
        wait_until(lambda: stats.frames >= 20, 30, "no frames over RTSP")
        loopback.stop_pusher()
        waited = wait_until(lambda: stats.state != "running", 20, "the stall was not noticed")
        assert waited < 8.0
        assert "no frame" in stats.error, stats.error
        frames = stats.frames
        loopback.start_pusher()
        wait_until(lambda: stats.frames >= frames + 20, 40, "frames did not resume")
        assert stats.state == "running"
    finally:
        camera.stop(timeout=10)

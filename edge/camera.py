"""Camera capture into a preallocated ring of downscaled frames.

Sources (`video.source`): `/dev/videoN`, `file:/path` (replayed at real-time speed), `rtsp://`
(reconnect with jittered backoff, transport configurable) and `gst:PIPELINE` (GStreamer,
e.g. a Jetson CSI camera: through OpenCV when it is built with GStreamer, otherwise as a
`gst-launch-1.0` subprocess whose YUV4MPEG2 output is parsed here). Capture runs in its own
thread and never waits for the model: it overwrites the oldest frame; readers that fall
behind skip and count.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import select
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

# OpenCV's and FFmpeg's own log lines bypass logging and repeat on every reconnect: quiet them
# (set before cv2 loads); the reason of a failure is told in the daemon's own warning instead.
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET

import cv2
import numpy as np
import numpy.typing as npt

from edge.errors import CaptureError
from edge.retry import Streak, backoff
from edge.video import downscale

log = logging.getLogger(__name__)
U8 = npt.NDArray[np.uint8]
STALL_S = 5.0  # a live stream that delivers nothing for this long is reopened
OPEN_TIMEOUT_S = 15.0  # an RTSP camera or a gst-launch-1.0 pipeline must open within this
SHORT_RUN_S = 10.0  # a stream that ends sooner than this counts as a failed attempt (backoff)
GST_TAIL = "videoconvert ! video/x-raw,format=I420 ! y4menc ! fdsink fd=1"


class SourceError(CaptureError):
    """A camera source that can never open as written (retrying would not help)."""


def redact(text: str) -> str:
    """`text` with the user and password of every URL in it replaced by `***` (logs, health)."""
    return re.sub(r"(\w+://)[^/@\s]+@", r"\1***@", text)


def why_unopened(source: str, timeout: float = 3.0) -> str:
    """Why OpenCV could not open `source`, as far as can be found out cheaply."""
    if source.startswith("file:"):
        path = Path(source[5:])
        if not path.exists():
            return "no such file"
        return "not a video OpenCV can open" if path.is_file() else "not a file"
    if source.startswith("/dev/video"):
        return "" if Path(source).exists() else "no such device"
    if not source.startswith(("rtsp://", "rtsps://")):
        return ""
    url = urlsplit(source)
    try:
        with socket.create_connection(
            (url.hostname or "", url.port or (322 if url.scheme == "rtsps" else 554)), timeout
        ) as conn:
            if url.scheme == "rtsps":
                return ""
            plain = url._replace(netloc=url.netloc.rpartition("@")[2]).geturl()
            conn.sendall(f"DESCRIBE {plain} RTSP/1.0\r\nCSeq: 1\r\n\r\n".encode())
            status = conn.recv(256).split(b"\r\n", 1)[0].decode("latin-1")
    except OSError as exc:
        return str(exc.strerror or exc).lower()
    code, _, text = status.partition(" ")[2].partition(" ")
    if not code.isdigit() or code == "200":
        return ""
    hint = " (check the user name and password)" if code == "401" else ""
    return f"the camera answered {code} {text}{hint}"


def frame_time(cap: Any, last_t: float, rate: float) -> float:
    """The stream time of the frame just read from a file: its own timestamp, so a
    variable-frame-rate recording (phones, NVR exports) is timed right; one average frame
    period after the last when the container gives no usable timestamp."""
    t = float(cap.get(cv2.CAP_PROP_POS_MSEC)) / 1000.0
    if last_t < 0:
        return t if math.isfinite(t) and t >= 0 else 0.0
    return t if math.isfinite(t) and t > last_t else last_t + 1.0 / rate


class Thinning:
    """At most `max_fps` frames a second, on a schedule (not a minimum gap, so that a 25 fps
    camera is kept at 15, not 12.5); after a pause it starts afresh, without a burst. A frame
    kept by `force` (one the analysis samples) counts in the schedule."""

    def __init__(self, max_fps: float) -> None:
        self._gap = 1.0 / max_fps
        self._due = -math.inf

    def keep(self, t: float, force: bool = False) -> bool:
        if t < self._due - 1e-6 and not force:
            return False
        self._due = max(self._due, t - self._gap / 2) + self._gap
        return True


class Sampler:
    """The frames analysed at `fps`: the first whose stream time reaches each due time (the
    first at `offset_s`); a due time no frame came for is passed over."""

    def __init__(self, fps: float, offset_s: float = 0.0) -> None:
        self.fps = fps
        self.due = offset_s

    def take(self, t: float) -> bool:
        if t + 1e-6 < self.due:
            return False
        self.due += 1.0 / self.fps * max(1, int((t - self.due) * self.fps) + 1)
        return True


def file_frames(
    path: Path, fps: float, width: int, offset_s: float = 0.0
) -> Iterator[tuple[float, U8]]:
    """Frames of a video file sampled at `fps` (the first at `offset_s`), downscaled.

    A frame is taken when its timestamp first reaches the next due time (`Sampler`), as the
    live worker takes them from the ring (where the camera keeps these frames however it thins).
    """
    if not path.is_file():
        raise CaptureError(f"{path}: no such file")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise CaptureError(f"{path}: OpenCV cannot open it as a video")
    rate = cap.get(cv2.CAP_PROP_FPS) or 25.0
    sampler, t = Sampler(fps, offset_s), -1.0
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                return
            t = frame_time(cap, t, rate)
            if sampler.take(t):
                yield t, downscale(np.asarray(frame, np.uint8), width)
    finally:
        cap.release()


def letterbox(frame: U8, shape: tuple[int, ...]) -> U8:
    """`frame` fitted into `shape` (height, width, 3), its aspect kept, with black bars."""
    height, width = shape[:2]
    h, w = frame.shape[:2]
    scale = min(width / w, height / h)
    fw, fh = max(1, min(width, round(w * scale))), max(1, min(height, round(h * scale)))
    out = np.zeros(shape, np.uint8)
    top, left = (height - fh) // 2, (width - fw) // 2
    out[top : top + fh, left : left + fw] = cv2.resize(
        frame, (fw, fh), interpolation=cv2.INTER_AREA
    )
    return out


class FrameRing:
    """Frames addressed by absolute index; one writer that never waits.

    The frames take the shape of the first one written (the camera's aspect, downscaled), when
    the memory is allocated once; a later frame of another shape is letterboxed into it.
    """

    def __init__(self, capacity: int, shape: tuple[int, int, int] | None = None) -> None:
        self.capacity = capacity
        self._frames = np.zeros((capacity, *shape) if shape else (0, 0, 0, 3), np.uint8)
        self._times = np.zeros(capacity, np.float64)
        self.head = 0  # absolute index one past the newest frame

    def write(self, frame: U8, t: float) -> None:
        slot = self.head % self.capacity
        if not len(self._frames):
            self._frames = np.zeros((self.capacity, *frame.shape), np.uint8)
        if frame.shape != self._frames.shape[1:]:
            frame = letterbox(frame, self._frames.shape[1:])
        self._frames[slot] = frame
        self._times[slot] = t
        self.head += 1

    def latest(self) -> tuple[int, float, U8] | None:
        """(index, stream time, copy) of the newest frame, or None before the first."""
        index = self.head - 1
        if index < 0:
            return None
        slot = index % self.capacity
        return index, float(self._times[slot]), self._frames[slot].copy()

    def times_after(self, index: int) -> list[tuple[int, float]]:
        """(index, stream time) of the frames held after absolute `index`, oldest first."""
        head = self.head
        first = max(index + 1, head - self.capacity + 1)  # the oldest slot may be rewritten
        return [(i, float(self._times[i % self.capacity])) for i in range(first, head)]

    def get(self, index: int) -> U8 | None:
        """A copy of the frame at absolute `index`, or None once it has been overwritten."""
        if not 0 <= index < self.head:
            return None
        frame = self._frames[index % self.capacity].copy()
        return frame if index > self.head - self.capacity else None

    def since(self, t0: float) -> list[tuple[float, U8]]:
        """Copies of the frames held with stream time >= t0, oldest first (clips)."""
        first = max(0, self.head - self.capacity)
        out = []
        for index in range(first, self.head):
            slot = index % self.capacity
            if self._times[slot] >= t0:
                out.append((float(self._times[slot]), self._frames[slot].copy()))
        return out


@dataclass
class CameraStats:
    state: str = "starting"  # starting | running | retrying | ended | stopped
    error: str = ""
    frames: int = 0  # frames written to the ring
    thinned: int = 0  # frames read but not kept (above max_fps); capture never drops
    reopens: int = 0
    last_frame: float = field(default_factory=time.monotonic)


@functools.cache
def opencv_has_gstreamer() -> bool:
    """Whether this OpenCV build can open GStreamer pipelines (`GStreamer: YES ...`)."""
    found = re.search(r"^\s*GStreamer:\s*(\S+)", cv2.getBuildInformation(), re.MULTILINE)
    return found is not None and found.group(1).upper() != "NO"


def _without_appsink(pipeline: str) -> str:
    """The pipeline without a trailing `! appsink ...` (written for OpenCV's backend)."""
    return re.sub(r"\s*!\s*appsink\b[^!]*$", "", pipeline.strip())


class GstLaunchCapture:
    """A `gst:` pipeline run by `gst-launch-1.0`, read as YUV4MPEG2 (I420) from its stdout.

    Offers what CameraSource uses of cv2.VideoCapture: isOpened, read, get, release. Every
    wait polls `stop` and has a deadline, so a pipeline that fails, hangs or ends never blocks
    shutdown; release terminates and reaps the process.
    """

    def __init__(self, pipeline: str, stop: threading.Event | None = None) -> None:
        exe = shutil.which("gst-launch-1.0")
        if exe is None:
            raise SourceError(
                "gst: needs gst-launch-1.0 (Debian/Ubuntu package gstreamer1.0-tools): "
                "this OpenCV has no GStreamer support"
            )
        try:
            args = shlex.split(_without_appsink(pipeline))
        except ValueError as exc:
            raise SourceError(f"gst:{redact(pipeline)}: {exc}") from None
        self.error = ""
        self.width = self.height = 0
        self.fps = 0.0
        self._stop = stop or threading.Event()
        self._buf = bytearray()
        self._lock = threading.Lock()
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in release)
        self._proc = subprocess.Popen(
            [exe, "-q", *args, "!", *GST_TAIL.split()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        assert self._proc.stdout is not None
        self._fd = self._proc.stdout.fileno()
        try:
            self._open()
        except CaptureError:
            self.release()
            raise

    def _open(self) -> None:
        header = self._line(OPEN_TIMEOUT_S)
        if header is None or not header.startswith(b"YUV4MPEG2 "):
            raise CaptureError(self.error or "gst: the pipeline output is not YUV4MPEG2")
        fields = {f[:1]: f[1:] for f in header.decode("ascii", "replace").split()[1:]}
        self.width, self.height = int(fields.get("W", "0")), int(fields.get("H", "0"))
        num, _, den = fields.get("F", "0:0").partition(":")
        self.fps = float(num) / float(den) if num.isdigit() and den.isdigit() and int(den) else 0.0
        if not fields.get("C", "420").startswith("420"):
            raise CaptureError(f"gst: unexpected YUV4MPEG2 colour space C{fields['C']}")
        if self.width <= 0 or self.height <= 0 or self.width % 2 or self.height % 2:
            raise CaptureError(
                f"gst: the pipeline delivers {self.width}x{self.height}; use an even size "
                "(videoscale ! video/x-raw,width=W,height=H)"
            )

    def _fill(self, size: int, timeout: float) -> bool:
        """Buffer at least `size` bytes; False (and `error` set) on end, stall or stop."""
        deadline = time.monotonic() + timeout
        while len(self._buf) < size:
            left = deadline - time.monotonic()
            if self._stop.is_set() or left <= 0:
                stalled = f"gst: no frame from the pipeline for {timeout:g} s"
                self.error = "gst: stopped" if self._stop.is_set() else stalled
                return False
            ready, _, _ = select.select([self._fd], [], [], min(0.2, left))
            if not ready:
                continue
            chunk = os.read(self._fd, max(1 << 16, size - len(self._buf)))
            if not chunk:
                self.error = self._exit_reason()
                return False
            self._buf += chunk
        return True

    def _line(self, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        while (end := self._buf.find(b"\n")) < 0:
            if len(self._buf) > 4096:
                self.error = "gst: the pipeline output is not YUV4MPEG2"
                return None
            if not self._fill(len(self._buf) + 1, deadline - time.monotonic()):
                return None
        line = bytes(self._buf[:end])
        del self._buf[: end + 1]
        return line

    def _exit_reason(self) -> str:
        """Why the pipeline's output ended: its exit status and the tail of its stderr."""
        try:
            code = self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "gst: gst-launch-1.0 closed its output"
        self._stderr.seek(0)
        text = self._stderr.read()[-2000:].decode("utf-8", "replace")
        lines = (line.strip().removeprefix("WARNING: ") for line in text.splitlines())
        detail = "; ".join(line for line in lines if line)
        if code == 0:
            return "gst: the pipeline ended" + (f": {detail}" if detail else "")
        return f"gst: gst-launch-1.0 failed (exit {code}): {detail or 'no message'}"

    def isOpened(self) -> bool:  # noqa: N802 (cv2.VideoCapture's name)
        return self.width > 0 and self._proc.returncode is None

    def read(self) -> tuple[bool, U8 | None]:
        size = self.width * self.height * 3 // 2
        marker = self._line(STALL_S)
        if marker is None:
            return False, None
        if not marker.startswith(b"FRAME"):
            self.error = "gst: lost sync in the YUV4MPEG2 stream"
            return False, None
        if not self._fill(size, STALL_S):
            return False, None
        yuv = np.frombuffer(bytes(self._buf[:size]), np.uint8).reshape(-1, self.width)
        del self._buf[:size]
        if self._stderr.tell() > 1 << 16:  # warnings of a long run: keep the file bounded
            self._stderr.truncate(0)  # the offset is shared with the child: it writes from 0
            self._stderr.seek(0)
        return True, np.asarray(cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR_I420), np.uint8)

    def get(self, prop: int) -> float:
        if prop == cv2.CAP_PROP_FPS:
            return self.fps
        if prop == cv2.CAP_PROP_FRAME_WIDTH:
            return float(self.width)
        if prop == cv2.CAP_PROP_FRAME_HEIGHT:
            return float(self.height)
        return 0.0

    def release(self) -> None:
        """Terminate and reap gst-launch-1.0 (idempotent, from any thread)."""
        with self._lock:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            assert self._proc.stdout is not None
            self._proc.stdout.close()
            self._stderr.close()


def open_capture(source: str, transport: str = "tcp", stop: threading.Event | None = None) -> Any:
    """A VideoCapture (or GstLaunchCapture) for `video.source` (CaptureError if it cannot open).

    `stop` ends waits that may take long (a `gst:` pipeline's first frame).
    """
    if source.startswith("gst:") and not opencv_has_gstreamer():
        return GstLaunchCapture(source[4:], stop)
    if source.startswith("file:"):
        cap = cv2.VideoCapture(source[5:])
    elif source.startswith("gst:"):
        pipeline = source[4:]
        if "appsink" not in pipeline:
            pipeline += " ! videoconvert ! video/x-raw,format=BGR ! appsink drop=true max-buffers=2"
        cap = cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)
    elif source.startswith(("rtsp://", "rtsps://")):
        os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = f"rtsp_transport;{transport}|timeout;5000000"
        # a session kept open without frames blocks a read for OpenCV's default 30 s
        timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(OPEN_TIMEOUT_S * 1000),
                    cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(STALL_S * 1000)]  # fmt: skip
        cap = cv2.VideoCapture(source, cv2.CAP_FFMPEG, timeouts)
    else:
        cap = cv2.VideoCapture(int(source.removeprefix("/dev/video")), cv2.CAP_V4L2)
    if not cap.isOpened():
        cap.release()
        reason = why_unopened(source)
        message = f"cannot open the camera {redact(source)}" + (f": {reason}" if reason else "")
        raise (SourceError if source.startswith("file:") else CaptureError)(message)
    return cap


def check_source(source: str, transport: str = "tcp") -> str:
    """What `check` can say about a camera source without holding it (the running daemon may
    have it): CaptureError if it cannot work, else how it was checked."""
    if source.startswith("gst:"):
        try:
            args = shlex.split(_without_appsink(source[4:]))
        except ValueError as exc:
            raise SourceError(f"video.source: {redact(source)}: {exc}") from None
        if not opencv_has_gstreamer() and shutil.which("gst-launch-1.0") is None:
            raise SourceError("video.source gst: needs gst-launch-1.0 (gstreamer1.0-tools)")
        inspect = shutil.which("gst-inspect-1.0")
        segments = " ".join(args).split("!")
        names = [seg.split()[0] for seg in segments if seg.split()]
        for name in names:
            if inspect and re.fullmatch(r"[a-z0-9_-]+", name) and subprocess.run(
                [inspect, "--exists", name], capture_output=True, timeout=30, check=False
            ).returncode:  # fmt: skip
                raise SourceError(f"video.source: GStreamer has no element {name!r}")
        return "the pipeline parses, its elements exist"
    if source.startswith("/dev/video"):
        if not Path(source).exists():
            raise CaptureError(f"video.source: {source}: no such device")
        return "the device exists"
    if source.startswith(("rtsp://", "rtsps://")):
        open_capture(source, transport).release()
        return "it opens"
    open_capture(source).release()
    return "it opens"


class CameraSource:
    """Reads frames in its own thread into the ring; reopens live sources with backoff.

    Stream time `t` is seconds since start (a `file:` source uses its own timestamps and is
    paced to real time).
    """

    def __init__(  # noqa: PLR0917
        self,
        source: str,
        ring: FrameRing,
        width: int,
        max_fps: float = 15.0,
        transport: str = "tcp",
        retry_max_s: float = 30.0,
        analysis_fps: float | None = None,
    ) -> None:
        self.source = source
        self.ring = ring
        self.width = width
        self.stats = CameraStats()
        self.ended = threading.Event()
        self._max_fps = max_fps
        self._analysis_fps = analysis_fps
        self._transport = transport
        self._retry_max_s = retry_max_s
        self._is_file = source.startswith("file:")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capture-camera", daemon=True)
        self.began = 0.0  # monotonic time of stream time 0

    def start(self) -> None:
        self.began = time.monotonic()
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _read_loop(self, cap: Any) -> str:
        """Frames into the ring until the stream ends or stalls (the reason) or stop."""
        fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
        t, thinning = -1.0, Thinning(self._max_fps)
        # the frames the analysis samples are always kept: the worker takes from the ring the
        # frames `file_frames` takes from the whole file (analyze), whatever max_fps drops
        sampler = Sampler(self._analysis_fps) if self._analysis_fps else None
        while not self._stop.is_set():
            before = time.monotonic()
            ok, frame = cap.read()
            now = time.monotonic()
            # after its read timeout OpenCV's FFmpeg backend still returns the frames the
            # decoder held, one per timeout: a read that blocked that long is a stall
            if not self._is_file and now - before >= STALL_S * 0.9:
                return f"no frame from the camera for {STALL_S:g} s"
            if not ok:
                return "the stream ended"
            if self._is_file:
                t = frame_time(cap, t, fps)
                if self._stop.wait(max(0.0, self.began + t - now)):
                    break
            else:
                t = now - self.began
            self.stats.last_frame = time.monotonic()
            if not thinning.keep(t, sampler is not None and sampler.take(t)):
                self.stats.thinned += 1
                continue
            self.ring.write(downscale(np.asarray(frame, np.uint8), self.width), t)
            self.stats.frames += 1
        return "stopped"

    def _run(self) -> None:
        attempt = 0
        unavailable = Streak(log, "camera %s unavailable (%s); retrying in %.1f s")
        ended = Streak(log, "camera %s stopped delivering frames (%s); reopening")
        while not self._stop.is_set():
            try:
                cap = open_capture(self.source, self._transport, self._stop)
            except SourceError as exc:  # it can never open as written: said once, no retry
                self.stats.state, self.stats.error = "failed", str(exc)
                log.error("%s", exc)
                break
            except CaptureError as exc:
                if self._stop.is_set():
                    break
                attempt += 1
                wait = backoff(attempt, self._retry_max_s)
                self.stats.state, self.stats.error = "retrying", str(exc)
                unavailable.say(redact(self.source), exc, wait)
                if self._stop.wait(wait):
                    break
                continue
            unavailable.reset()
            self.stats.state, self.stats.error = "running", ""
            log.info("capturing video from %s", redact(self.source))
            opened = self.stats.last_frame = time.monotonic()
            try:
                reason = self._read_loop(cap)
            finally:
                cap.release()
            if self._is_file or self._stop.is_set():
                break
            # a stream that ends soon after opening (a failing pipeline) is retried with backoff
            attempt = attempt + 1 if time.monotonic() - opened < SHORT_RUN_S else 0
            if not attempt:  # it ran a while: a new streak
                ended.reset()
            wait = backoff(attempt, self._retry_max_s) if attempt else 0.0
            reason = getattr(cap, "error", "") or reason
            self.stats.reopens += 1
            self.stats.state, self.stats.error = "retrying", reason
            ended.say(redact(self.source), reason)
            if self._stop.wait(wait):
                break
        if self.stats.state != "failed":
            self.stats.state = "stopped" if self._stop.is_set() else "ended"
        self.ended.set()

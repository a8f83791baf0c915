"""Camera capture into a preallocated ring of downscaled frames.

Sources (`video.source`): `/dev/videoN`, `file:/path` (replayed at real-time speed), `rtsp://`
(reconnect with jittered backoff, transport configurable) and `gst:PIPELINE` (GStreamer,
e.g. a Jetson CSI camera). Capture runs in its own thread and never waits for the model:
it overwrites the oldest frame; readers that fall behind skip and count.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from edge.capture import backoff
from edge.errors import CaptureError
from edge.video import downscale

log = logging.getLogger(__name__)
U8 = npt.NDArray[np.uint8]
STALL_S = 5.0  # a live stream that delivers nothing for this long is reopened


def file_frames(
    path: Path, fps: float, width: int, offset_s: float = 0.0
) -> Iterator[tuple[float, U8]]:
    """Frames of a video file sampled at `fps` (the first at `offset_s`), downscaled.

    A frame is taken when its timestamp first reaches the next due time, as the live
    sampler does with the ring.
    """
    if not path.is_file():
        raise CaptureError(f"{path}: no such file")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise CaptureError(f"{path}: OpenCV cannot open it as a video")
    rate = cap.get(cv2.CAP_PROP_FPS) or 25.0
    due, index = offset_s, 0
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                return
            t = index / rate
            index += 1
            if t + 1e-6 >= due:
                due += 1.0 / fps * max(1, int((t - due) * fps) + 1)
                yield t, downscale(np.asarray(frame, np.uint8), width)
    finally:
        cap.release()


class FrameRing:
    """Preallocated frames addressed by absolute index; one writer that never waits."""

    def __init__(self, capacity: int, shape: tuple[int, int, int]) -> None:
        self.capacity = capacity
        self._frames = np.zeros((capacity, *shape), np.uint8)
        self._times = np.zeros(capacity, np.float64)
        self.head = 0  # absolute index one past the newest frame

    def write(self, frame: U8, t: float) -> None:
        slot = self.head % self.capacity
        if frame.shape != self._frames.shape[1:]:
            frame = np.asarray(cv2.resize(frame, self._frames.shape[2:0:-1]), np.uint8)
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
    dropped: int = 0  # frames read but not kept (above max_fps)
    reopens: int = 0
    last_frame: float = field(default_factory=time.monotonic)


def open_capture(source: str, transport: str = "tcp") -> Any:
    """An OpenCV VideoCapture for `video.source` (CaptureError if it cannot be opened)."""
    if source.startswith("file:"):
        cap = cv2.VideoCapture(source[5:])
    elif source.startswith("gst:"):
        cap = cv2.VideoCapture(source[4:], cv2.CAP_GSTREAMER)
    elif source.startswith(("rtsp://", "rtsps://")):
        os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = f"rtsp_transport;{transport}|timeout;5000000"
        cap = cv2.VideoCapture(source, cv2.CAP_FFMPEG)
    else:
        cap = cv2.VideoCapture(int(source.removeprefix("/dev/video")), cv2.CAP_V4L2)
    if not cap.isOpened():
        cap.release()
        raise CaptureError(f"cannot open the camera {source}")
    return cap


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
    ) -> None:
        self.source = source
        self.ring = ring
        self.width = width
        self.stats = CameraStats()
        self.ended = threading.Event()
        self._min_gap = 1.0 / max_fps
        self._transport = transport
        self._retry_max_s = retry_max_s
        self._is_file = source.startswith("file:")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capture-camera", daemon=True)
        self._began = 0.0

    def start(self) -> None:
        self._began = time.monotonic()
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _read_loop(self, cap: Any) -> None:
        fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
        index, last_kept = 0, -1.0
        while not self._stop.is_set():
            ok, frame = cap.read()
            if not ok:
                return
            now = time.monotonic()
            if self._is_file:
                t = index / fps
                index += 1
                if self._stop.wait(max(0.0, self._began + t - now)):
                    return
            else:
                t = now - self._began
            self.stats.last_frame = time.monotonic()
            if last_kept >= 0 and t - last_kept < self._min_gap * 0.9:
                self.stats.dropped += 1
                continue
            last_kept = t
            self.ring.write(downscale(np.asarray(frame, np.uint8), self.width), t)
            self.stats.frames += 1

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                cap = open_capture(self.source, self._transport)
            except CaptureError as exc:
                attempt += 1
                wait = backoff(attempt, self._retry_max_s)
                self.stats.state, self.stats.error = "retrying", str(exc)
                log.warning("camera %s unavailable; retrying in %.1f s", self.source, wait)
                if self._stop.wait(wait):
                    break
                continue
            attempt = 0
            self.stats.state, self.stats.error = "running", ""
            log.info("capturing video from %s", self.source)
            try:
                self._read_loop(cap)
            finally:
                cap.release()
            if self._is_file or self._stop.is_set():
                break
            self.stats.reopens += 1
            self.stats.state, self.stats.error = "retrying", "the stream ended or stalled"
            log.warning("camera %s stopped delivering frames; reopening", self.source)
        self.stats.state = "stopped" if self._stop.is_set() else "ended"
        self.ended.set()

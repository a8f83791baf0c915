"""Camera capture into a preallocated ring of downscaled frames.

Sources (`video.source`): `/dev/videoN`, `file:/path` (replayed at real-time speed), `rtsp://`
(reconnect with jittered backoff, transport configurable) and `gst:PIPELINE` (GStreamer,
e.g. a Jetson CSI camera). Capture runs in its own thread and never waits for the model:
it overwrites the oldest frame; readers that fall behind skip and count.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

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

"""`video.source: "gst:PIPELINE"` with the real GStreamer, through the real CameraSource.

The project's OpenCV wheels have no GStreamer, so the pipeline runs as a `gst-launch-1.0`
subprocess whose YUV4MPEG2 output is parsed (these tests force that path even where OpenCV
has GStreamer). `videotestsrc pattern=ball` is the camera: a white ball moving over black.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge import camera as camera_mod
from edge.camera import CameraSource, FrameRing, GstLaunchCapture, open_capture
from edge.errors import CaptureError

BALL = "gst:videotestsrc is-live=true pattern=ball num-buffers={n} ! video/x-raw,width=320,height=240,framerate=10/1"  # noqa: E501


@pytest.fixture(autouse=True)
def gst_launch(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for tool in ("gst-launch-1.0", "gst-inspect-1.0"):
        if shutil.which(tool) is None:
            pytest.fail(
                f"{tool} is missing: run scripts/system-deps.sh (it installs gstreamer1.0-tools "
                "and the GStreamer plugins listed in scripts/apt-packages.txt)",
                pytrace=False,
            )
    monkeypatch.setattr(camera_mod, "opencv_has_gstreamer", lambda: False)
    yield
    assert gst_children() == [], "a gst-launch-1.0 process outlived the test"


def gst_children() -> list[str]:
    """gst-launch-1.0 processes whose parent is this one (running or zombie), as 'pid state'."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name, rest = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :]
        state, ppid = rest.split()[:2]
        if name.startswith("gst-launch") and int(ppid) == os.getpid():
            found.append(f"{stat.parent.name} {state}")
    return found


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    began = time.monotonic()
    while not predicate():
        if time.monotonic() - began > timeout:
            raise TimeoutError(f"{what} after {timeout} s")
        time.sleep(0.05)


def ball_centre(frame: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(frame.max(axis=2) > 128)
    assert len(xs) > 50, "no ball in the frame"
    return float(xs.mean()), float(ys.mean())


def test_ball_pipeline_fills_the_ring_and_is_reopened_when_it_ends() -> None:
    ring = FrameRing(100, (240, 320, 3))
    cam = CameraSource(BALL.format(n=30), ring, 320, max_fps=15, retry_max_s=1)
    stats = cam.stats
    cam.start()
    try:
        wait_until(lambda: stats.reopens >= 1, 20, "the 30-frame pipeline did not end")
        assert stats.error == "gst: the pipeline ended"
        # every frame of the first run was read: kept (at most 15 fps of a 10 fps source) or counted
        assert stats.frames + stats.thinned == 30
        assert stats.frames >= 25
        frames = ring.since(0.0)
        assert len(frames) >= 25
        assert all(f.shape == (240, 320, 3) for _, f in frames)
        assert max(f.max() for _, f in frames) == 255  # a white ball ...
        assert frames[0][1][0, 0].tolist() == [0, 0, 0]  # ... on black
        times = [t for t, _ in frames]
        assert 2.0 < times[-1] - times[0] < 4.5  # real-time: 30 frames at 10 fps
        centres = {ball_centre(f) for _, f in frames}
        assert len(centres) > 10  # the ball moves
        # reopened with backoff (a short run counts as a failed attempt), frames resume
        wait_until(lambda: stats.frames >= 45, 20, "no frames after the reopen")
        assert stats.state == "running"
        assert stats.error == ""
    finally:
        cam.stop(timeout=5)
    assert stats.state == "stopped"


def test_a_pipeline_that_keeps_ending_is_one_warning_per_streak(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="edge.camera")
    cam = CameraSource(BALL.format(n=3), FrameRing(10, (240, 320, 3)), 320, retry_max_s=1)
    cam.start()
    try:
        wait_until(lambda: cam.stats.reopens >= 3, 30, "the 3-frame pipeline was not reopened")
    finally:
        cam.stop(timeout=5)
    said = [r.levelno for r in caplog.records if "stopped delivering" in r.getMessage()]
    assert said[0] == logging.WARNING  # each run is short: one streak
    assert set(said[1:]) == {logging.DEBUG}, said


def test_unknown_element_is_reported_and_retried(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="edge.camera")
    with pytest.raises(CaptureError, match=r'no element "nosuchelement"'):
        open_capture("gst:nosuchelement")
    ring = FrameRing(10, (240, 320, 3))
    cam = CameraSource("gst:nosuchelement", ring, 320, retry_max_s=1)
    cam.start()
    try:
        wait_until(
            lambda: sum("unavailable" in r.getMessage() for r in caplog.records) >= 3,
            15,
            "the bad pipeline was not retried",
        )
        assert cam.stats.state == "retrying"
        assert 'no element "nosuchelement"' in cam.stats.error
        assert cam._thread.is_alive()
        assert cam.stats.frames == 0
    finally:
        cam.stop(timeout=5)
    assert cam.stats.state == "stopped"
    messages = [r.getMessage() for r in caplog.records]
    assert any('no element "nosuchelement"' in m for m in messages), messages
    said = [r.levelno for r in caplog.records if "unavailable" in r.getMessage()]
    assert said[0] == logging.WARNING  # once per streak of failed attempts, then DEBUG
    assert set(said[1:]) == {logging.DEBUG}, said


def test_stop_is_prompt_and_leaves_no_process() -> None:
    ring = FrameRing(50, (240, 320, 3))
    cam = CameraSource(BALL.format(n=-1), ring, 320, max_fps=15)
    cam.start()
    try:
        wait_until(lambda: cam.stats.frames >= 5, 20, "no frames")
        assert len(gst_children()) == 1
    finally:
        began = time.monotonic()
        cam.stop(timeout=5)
        took = time.monotonic() - began
    assert not cam._thread.is_alive()
    assert took < 1.5
    assert cam.ended.is_set()
    assert cam.stats.state == "stopped"
    assert gst_children() == []


def test_stop_interrupts_a_pipeline_that_never_delivers() -> None:
    # appsrc with nothing pushed: gst-launch runs but no frame ever comes
    ring = FrameRing(10, (240, 320, 3))
    cam = CameraSource("gst:appsrc ! video/x-raw,width=320,height=240,format=I420", ring, 320)
    cam.start()
    wait_until(lambda: len(gst_children()) == 1, 10, "gst-launch-1.0 did not start")
    began = time.monotonic()
    cam.stop(timeout=5)
    assert time.monotonic() - began < 1.5
    assert not cam._thread.is_alive()
    assert gst_children() == []


def test_capture_surface_odd_size_and_appsink() -> None:
    cap = GstLaunchCapture(
        "videotestsrc num-buffers=2 ! video/x-raw,width=64,height=48,framerate=25/2 "
        "! videoconvert ! appsink drop=true"  # written for OpenCV's backend: appsink is dropped
    )
    try:
        assert cap.isOpened()
        assert cap.get(cv2.CAP_PROP_FPS) == 12.5
        assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (64, 48)
        ok, frame = cap.read()
        assert ok
        assert frame is not None
        assert frame.shape == (48, 64, 3)
        # videotestsrc's first bar is white (BT.601 limited range: Y 235 -> about 255)
        assert frame[24, 2].min() > 230
        assert cap.read()[0]
        assert cap.read() == (False, None)
        assert cap.error == "gst: the pipeline ended"
    finally:
        cap.release()
        cap.release()
    assert not cap.isOpened()
    with pytest.raises(CaptureError, match="321x240; use an even size"):
        open_capture("gst:videotestsrc ! video/x-raw,width=321,height=240")

"""The daemon with a `file:` camera: capture ring, analysis, fusion with a scream in the
same file's audio track, into the outbox. Fusion logic on its own with synthetic events."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from edge.camera import FrameRing, file_frames
from edge.events import Event
from edge.flow import U8
from edge.fusion import FusionSink
from edge.videoconfig import VideoConfig
from edge.videopipe import VideoWorker
from tests.helpers import (
    ROOT,
    VIDEO_DEV,
    Mosquitto,
    fight_with_scream,
    require_models,
    require_shared,
    retained,
)


class Collect:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def submit(self, event: Event) -> None:
        self.events.append(event)


def event(phase: str, key: str, modality: str, start: float, at: float) -> Event:
    return Event(
        phase=phase,  # type: ignore[arg-type]
        key=key,
        category="scream" if modality == "audio" else "violence",
        severity="warning",
        score=0.9,
        peak_score=0.9,
        start_s=start,
        at_s=at,
        end_s=at,
        wall_start=1000 + start,
        wall_at=1000 + at,
        modalities=(modality,),
    )


def test_fusion_raises_severity_only_when_modalities_overlap() -> None:
    out = Collect()
    sink = FusionSink(out, window_s=3.0, severity="critical")
    sink.submit(event("start", "a", "audio", 10, 10.5))
    sink.submit(event("start", "v", "video", 12, 12.5))  # within the window: fused
    sink.submit(event("end", "v", "video", 12, 14))
    sink.submit(event("end", "a", "audio", 10, 15))
    sink.submit(event("start", "v2", "video", 40, 40.5))  # alone: its own severity
    kinds = [(e.key, e.phase, e.severity, e.modalities) for e in out.events]
    assert kinds == [
        ("a", "start", "warning", ("audio",)),
        ("v", "start", "critical", ("audio", "video")),
        ("v", "end", "critical", ("audio", "video")),
        ("a", "end", "warning", ("audio",)),
        ("v2", "start", "warning", ("video",)),
    ]
    assert out.events[1].evidence["audio:scream"] == 0.9
    assert sink.fused == 1


def test_daemon_fuses_a_fight_with_a_scream_from_one_file(tmp_path: Path) -> None:
    models = require_models()
    muxed = fight_with_scream(tmp_path, 6)
    config = tmp_path / "config.yaml"
    config.write_text(
        f"models: {{dir: {models}}}\nstorage: {{dir: {tmp_path}}}\n"
        f"audio: {{source: 'file:{muxed}'}}\n"
        f"video: {{source: 'file:{muxed}', fusion: {{window_s: 10}}}}\n"
        "mqtt: {host: 127.0.0.1, port: 9}\n"
    )
    run = subprocess.run(
        [str(ROOT / ".venv/bin/safeguard"), "run", "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    with sqlite3.connect(tmp_path / "outbox.db") as db:
        alerts = [json.loads(p) for (p,) in db.execute("SELECT payload FROM outbox ORDER BY id")]
    starts = [a for a in alerts if a["event"] == "start"]
    assert {a["category"] for a in starts} >= {"scream", "violence"}, starts
    fused = [a for a in starts if a["modalities"] == ["audio", "video"]]
    assert fused, starts
    assert fused[0]["severity"] == "critical"


def test_video_worker_counts_and_reports_slots_it_cannot_keep_up_with(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An analysis slower than video.fps (as on a slow CPU) skips slots: counted in health and
    said in the log once, not once per slot; the camera keeps filling the ring meanwhile."""
    models = require_models()
    clip = require_shared(VIDEO_DEV / "clips" / "fi001.mp4")
    video = VideoConfig(source=f"file:{clip}", fps=8.0)
    worker = VideoWorker(video, models, Collect(), origin_wall=time.time())
    process = worker.analyzer.process

    def slow(frame: U8, t: float) -> list[Event]:
        time.sleep(0.4)  # three analysis periods and more
        return process(frame, t)

    worker.analyzer.process = slow  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="edge.videopipe"):
        worker.start()
        time.sleep(2.0)
        worker.stop(2.0)
    health = worker.health()
    assert health["video_skipped"] >= 6, health  # type: ignore[operator]
    assert health["video_frames"] > health["video_analysed"], health  # type: ignore[operator]
    warnings = [r.getMessage() for r in caplog.records if "fell behind" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "video.fps=8.0" in warnings[0]


def test_the_daemon_clears_a_violence_state_left_on_by_a_crash(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """A retained `ON` for violence (the daemon died during a fight) is set `OFF` at start, and
    Home Assistant learns of the violence sensor before any fight."""
    models = require_models()
    calm = require_shared(VIDEO_DEV / "clips" / "nofi002.mp4")
    topic = "safeguard/cam-1/state/violence"
    subprocess.run(
        ["mosquitto_pub", "-p", str(mosquitto.port), "-t", topic, "-m", "ON", "-r", "-q", "1"],
        check=True, timeout=10,
    )  # fmt: skip
    assert retained(mosquitto.port, topic) == "ON"
    config = tmp_path / "config.yaml"
    config.write_text(
        f"device: {{id: cam-1}}\nmodels: {{dir: {models}}}\nstorage: {{dir: {tmp_path}}}\n"
        f"audio: {{source: none}}\nvideo: {{source: 'file:{calm}'}}\n"
        f"mqtt: {{host: 127.0.0.1, port: {mosquitto.port}}}\n"
    )
    run = subprocess.run(
        [str(ROOT / ".venv/bin/safeguard"), "run", "--config", str(config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert retained(mosquitto.port, topic) == "OFF"
    discovery = retained(mosquitto.port, "homeassistant/binary_sensor/cam_1/violence/config")
    assert json.loads(discovery)["state_topic"] == topic


def test_a_wide_camera_keeps_its_shape_and_live_frames_equal_analyze_frames(
    tmp_path: Path,
) -> None:
    """A 16:9 camera was squashed into a 4:3 ring (320x240): distorted clips and preview, and
    the live analysis saw other pixels than `safeguard analyze`. The ring takes the camera's
    shape from its first frame: the live frame is the one analyze reads at that time."""
    wide, fight = tmp_path / "wide.mp4", require_shared(VIDEO_DEV / "clips" / "fi001.mp4")
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-i", str(fight),
         "-vf", "scale=480:360,pad=640:360:80:0", "-an", "-c:v", "libx264", "-preset",
         "ultrafast", "-pix_fmt", "yuv420p", str(wide)],
        check=True, timeout=60,
    )  # fmt: skip
    video = VideoConfig(source=f"file:{wide}")
    worker = VideoWorker(video, require_models(), Collect(), origin_wall=time.time())
    worker.start()
    try:
        deadline = time.monotonic() + 20
        while worker.camera.stats.frames < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        worker.stop(5.0)
    latest = worker.ring.latest()
    assert latest is not None
    _, t, live = latest
    assert live.shape == (180, 320, 3)
    offline = {round(ft, 3): frame for ft, frame in file_frames(wide, 1000.0, video.width)}
    np.testing.assert_array_equal(live, offline[round(t, 3)])


def test_frames_of_another_shape_are_letterboxed_not_stretched() -> None:
    """The ring's shape is its first frame's; a later frame of another shape (a camera that
    came back at another resolution) is fitted with black bars, its aspect kept."""
    ring = FrameRing(4)
    assert ring.latest() is None
    assert ring.since(0.0) == []
    ring.write(np.full((180, 320, 3), 50, np.uint8), 0.0)
    ring.write(np.full((240, 320, 3), 200, np.uint8), 0.1)  # 4:3 into 16:9: bars left and right
    latest = ring.latest()
    assert latest is not None
    frame = latest[2]
    assert frame.shape == (180, 320, 3)
    assert (frame[:, 160] == 200).all()
    assert (frame[:, :20] == 0).all()
    assert (frame[:, -20:] == 0).all()
    assert (frame[:, 41:279] == 200).all()


def test_video_counters_count_events_and_thinned_frames(tmp_path: Path) -> None:
    """`video_events` counts events (it counted start, update and end messages), and frames
    over video.max_fps are `video_thinned` (they were `video_dropped`, which read like loss);
    a 25 fps camera is kept at max_fps 15 (the 0.9 * gap rule kept 12.5, so one clip frame in
    six was a duplicate)."""
    fight = tmp_path / "fight.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-stream_loop", "2", "-i",
         str(require_shared(VIDEO_DEV / "clips" / "fi001.mp4")), "-an", "-c:v", "copy",
         str(fight)],
        check=True, timeout=60,
    )  # fmt: skip
    out = Collect()
    worker = VideoWorker(
        VideoConfig(source=f"file:{fight}", max_fps=15), require_models(), out, time.time()
    )
    worker.start()
    try:
        assert worker.camera.ended.wait(20)
        time.sleep(2.5)  # the hold after the last frame ends the event
    finally:
        worker.stop(5.0)
    health = worker.health()
    starts = [e for e in out.events if e.phase == "start"]
    assert starts, out.events
    assert len(out.events) > len(starts)
    assert health["video_events"] == len(starts), health
    assert "video_dropped" not in health
    kept, thinned = health["video_frames"], health["video_thinned"]
    assert isinstance(kept, int)
    assert isinstance(thinned, int)
    seconds = (kept + thinned) / 25
    assert abs(kept / seconds - 15) < 0.6, health

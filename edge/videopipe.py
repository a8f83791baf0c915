"""Building the video pipeline from the config, and offline analysis of a video file's frames
(what `safeguard analyze` reports for the picture; the audio track goes through the audio
path). Frames are sampled as the live sampler takes them, so `alert_at_s` matches the daemon.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

from edge.analyze import EventRecord
from edge.camera import file_frames
from edge.events import Event
from edge.models import load_manifest, verify
from edge.video import Backbone, VideoAnalyzer, load_video_head
from edge.videoconfig import VideoConfig
from models_tflite import HEADS

log = logging.getLogger(__name__)
VIDEO_SUFFIXES = {".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v"}


def load_backbone(models_dir: Path, threads: int = 1) -> Backbone:
    path = verify(load_manifest()["mobilenet_v1_embedding"], models_dir)
    return Backbone(path, threads)


def build_analyzer(
    video: VideoConfig, backbone: Backbone, origin_wall: float = 0.0
) -> VideoAnalyzer:
    return VideoAnalyzer(
        backbone,
        load_video_head(video.head or HEADS / "violence.npz"),
        video.smoothing,
        motion_threshold=video.motion_threshold,
        severity=video.severity,
        origin_wall=origin_wall,
    )


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def analyze_video(
    path: Path, analyzer: VideoAnalyzer, video: VideoConfig, name: str
) -> list[EventRecord]:
    """Violence events in the frames of `path`."""
    records: list[EventRecord] = []
    open_events: dict[str, Event] = {}
    last_t = 0.0

    def take(events: list[Event]) -> None:
        for event in events:
            if event.phase == "start":
                open_events[event.key] = event
            elif event.phase == "end":
                began = open_events.pop(event.key)
                records.append(
                    EventRecord(
                        file=name,
                        category=event.category,
                        start_s=round(began.start_s, 3),
                        end_s=round(min(event.end_s, last_t), 3),
                        peak_score=round(event.peak_score, 4),
                        alert_at_s=round(began.at_s, 3),
                        severity=began.severity,
                    )
                )

    for t, frame in file_frames(path, video.fps, video.width):
        last_t = t
        take(analyzer.process(frame, t))
    take(analyzer.flush(last_t))
    return records


def has_audio(path: Path) -> bool:
    """Whether `path` has an audio track (non-video files are assumed to be audio)."""
    if not is_video(path):
        return True
    exe = shutil.which("ffprobe")
    if exe is None:
        return True  # let the audio decoder say what is wrong
    out = subprocess.run(
        [exe, "-v", "error", "-select_streams", "a", "-show_entries", "stream=index", "-of",
         "csv=p=0", str(path)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return bool(out.stdout.strip())

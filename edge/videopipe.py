"""Building the video pipeline from the config, and offline analysis of a video file's frames
(what `safeguard analyze` reports for the picture; the audio track goes through the audio
path). Frames are sampled as the live sampler takes them, so `alert_at_s` matches the daemon.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from edge.analyze import EventRecord
from edge.camera import CameraSource, FrameRing, Sampler, file_frames
from edge.events import Event, EventSink, deliver
from edge.models import load_manifest, verify
from edge.video import Backbone, VideoAnalyzer, load_video_head
from edge.videoconfig import VideoConfig
from models_tflite import HEADS

log = logging.getLogger(__name__)


def load_backbone(models_dir: Path, threads: int = 1) -> Backbone:
    path = verify(load_manifest()["mobilenet_v1_embedding"], models_dir)
    return Backbone(path, threads)


def build_analyzer(
    video: VideoConfig, backbone: Backbone, origin_wall: float = 0.0
) -> VideoAnalyzer:
    head = load_video_head(HEADS / (video.head or "violence.npz"))  # an absolute path stays
    trained = head.metadata.get("params", {})
    for key in ("fps", "width"):
        if key in trained and trained[key] != getattr(video, key):
            log.warning(
                "video.%s is %s but the violence head was trained at %s: its scores are not "
                "calibrated for it; retrain with `safeguard-convert train-head --kind video --data "
                "DIR --%s %s --out FILE` and set video.head",
                key, getattr(video, key), trained[key], key, getattr(video, key),
            )  # fmt: skip
    return VideoAnalyzer(
        backbone,
        head,
        video.smoothing,
        motion_threshold=video.motion_threshold,
        severity=video.severity,
        origin_wall=origin_wall,
    )


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


class VideoWorker:
    """The camera thread fills the ring; this thread analyses, every 1/fps of stream time, the
    first frame captured at or after that time, as `file_frames` samples a file for `analyze`
    (so that a `file:` camera gives analyze's events). It never makes capture wait: more than
    `BACKLOG_S` behind, it goes on to the newest frame due; the frames passed over are counted
    as skipped and reported in the log at most once every `WARN_EVERY_S`."""

    WARN_EVERY_S = 60.0
    BACKLOG_S = 1.0
    POLL_S = 0.01

    def __init__(
        self,
        video: VideoConfig,
        models_dir: Path,
        sink: EventSink,
        origin_wall: float,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        self.video = video
        self.sink = sink
        self.on_event = on_event
        # the frames keep the camera's aspect: the ring takes the first frame's shape
        self.ring = FrameRing(max(2, int(video.ring_s * video.max_fps)))
        self.camera = CameraSource(
            video.source, self.ring, video.width, video.max_fps, video.rtsp_transport,
            video.retry_max_s, video.fps,
        )  # fmt: skip
        self.analyzer = build_analyzer(video, load_backbone(models_dir, video.threads), origin_wall)
        self.events = 0  # events started (not their start/update/end messages)
        # the analysis loop's heartbeat, for the systemd watchdog (`alive`)
        self.beat = time.monotonic()
        self.done = False  # ended as it should: stopped, or its `file:` camera ended
        self.failed = ""  # the error that ended the analysis thread
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="video", daemon=True)

    def start(self) -> None:
        self.camera.start()
        self._thread.start()

    def stop(self, timeout: float) -> None:
        self.camera.stop(timeout)
        self._stop.set()
        self._thread.join(timeout)

    def _deliver(self, events: list[Event]) -> None:
        self.events += sum(event.phase == "start" for event in events)
        deliver(events, self.sink, self.on_event)

    def alive(self, now: float, stall_s: float) -> str:
        """Why video analysis counts as stalled or dead at `now`, or "" when it goes on (or
        ended as it should)."""
        if self.done:
            return ""
        if self.failed:
            return f"video analysis failed ({self.failed})"
        idle = now - self.beat
        return f"video analysis idle {idle:.1f} s" if idle > stall_s else ""

    def _run(self) -> None:
        try:
            self._analyse()
            self.done = True
        except Exception as exc:  # the watchdog pings stop: systemd restarts the daemon
            self.failed = f"{type(exc).__name__}: {exc}"
            log.exception("video analysis stopped by an error")

    def _analyse(self) -> None:
        period = 1.0 / self.video.fps
        stale_s = max(self.video.smoothing.hold_s, 2 * period)
        stats, ring, camera = self.analyzer.stats, self.ring, self.camera
        sampler = Sampler(self.video.fps)  # by stream time, as file_frames samples a file
        backlog = max(2, round(self.BACKLOG_S * self.video.fps))
        pending: deque[tuple[int, float]] = deque()  # frames due for analysis, oldest first
        scanned, last_t, wait = -1, 0.0, 0.0
        fresh_at, away = time.monotonic(), False
        warned_at, skipped_then = -self.WARN_EVERY_S, 0
        while True:
            stopping = self._stop.wait(wait)
            self.beat = time.monotonic()
            state = camera.stats.state  # before the scan: once ended, every frame is in it
            if stopping and state != "ended":
                break
            for index, t in ring.times_after(scanned):
                scanned = index
                if sampler.take(t):
                    pending.append((index, t))
            if len(pending) > backlog:  # behind: on to the newest frame, the others skipped
                stats.skipped += len(pending) - 1
                while len(pending) > 1:
                    pending.popleft()
                now = time.monotonic()
                if now - warned_at >= self.WARN_EVERY_S:
                    self._warn_behind(stats.skipped - skipped_then, stats.infer_ms)
                    warned_at, skipped_then = now, stats.skipped
            frame = None
            while pending and frame is None:
                index, t = pending.popleft()
                frame = ring.get(index)
                stats.skipped += frame is None  # overwritten meanwhile (far behind)
            if frame is None:
                if stopping:  # a file that ended: all of it analysed
                    break
                # no new frame: the camera is away (stalled, reconnecting, ended). Time goes on
                # for the event: it ends once no frame came for the hold (or the camera left
                # `running`), so that it is not kept open, nor fused, with nothing seen.
                gone = time.monotonic() - fresh_at
                if ring.head and not away and (gone >= stale_s or state != "running"):
                    away = True
                    at = last_t if state == "ended" else last_t + gone
                    self._deliver(self.analyzer.gap(at))
                # the next frame due is captured at stream time `sampler.due` at the earliest
                wake = camera.began + sampler.due + self.POLL_S - time.monotonic()
                wait = min(period, max(self.POLL_S, wake))
                continue
            fresh_at, away, last_t, wait = time.monotonic(), False, t, 0.0
            began = time.perf_counter()
            events = self.analyzer.process(frame, t)
            ms = (time.perf_counter() - began) * 1000
            stats.infer_ms = [*stats.infer_ms[-199:], ms]
            self._deliver(events)
        self._deliver(self.analyzer.flush(last_t))

    def _warn_behind(self, skipped: int, infer_ms: list[float]) -> None:
        ms = sum(infer_ms[-20:]) / max(1, len(infer_ms[-20:]))
        log.warning(
            "video analysis fell behind video.fps=%s: %d analysis slots skipped (%.0f ms per "
            "analysed frame, so about %.1f frames/s); the violence head's window then spans "
            "more time than it was trained on. Lower video.fps and retrain the head for it "
            "(safeguard-convert train-head --kind video --fps N)",
            self.video.fps, skipped, ms, 1000.0 / max(ms, 1e-3),
        )  # fmt: skip

    def health(self) -> dict[str, object]:
        s, cam = self.analyzer.stats, self.camera.stats
        return {
            "video_capture": cam.state,
            "video_error": cam.error,
            "video_frames": cam.frames,
            "video_thinned": cam.thinned,
            "video_reopens": cam.reopens,
            "video_analysed": s.offered,
            "video_motion": s.motion,
            "video_still": s.still,
            "video_skipped": s.skipped,
            "video_events": self.events,
            "video_analysis": "failed" if self.failed else "stopped" if self.done else "running",
        }

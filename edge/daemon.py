"""`safeguard run`: capture -> inference -> detection -> events -> the durable outbox.

Threads: the capture source writes into the ring (its own thread or PortAudio's callback);
one inference worker reads windows from the ring; the main thread waits for the stop event
and logs health. SIGTERM and SIGINT set the stop event; every thread is joined with a timeout.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from types import FrameType
from typing import TYPE_CHECKING

import numpy as np

from edge.capture import AudioSource, FileSource, open_source
from edge.categories import DEFAULT_CATEGORIES
from edge.clips import Clip, ClipSink, ClipWriter
from edge.config import Config
from edge.delivery import DeliveryService
from edge.detector import RATE, Detector
from edge.errors import DeliveryError, SafeguardError
from edge.events import Event, EventSink, deliver
from edge.frontend import PATCH_SAMPLES
from edge.health import DeviceHealth
from edge.notify import Notifier, PipelineWatch, Progress
from edge.outbox import Outbox
from edge.pipeline import build_detector, hop_samples
from edge.ring import AudioRing, Overrun
from edge.upload import Uploader

if TYPE_CHECKING:
    from edge.preview import PreviewServer
    from edge.videopipe import VideoWorker

log = logging.getLogger(__name__)
DRAIN_S = 10.0  # after a file source ends: how long to wait for outstanding acks


class InferenceWorker:
    """Reads windows from the ring every hop, runs the detector, hands events to the sink.

    `on_event` (optional) hears of every event after it is stored, e.g. to publish state.
    Once `ended()` says the source will write no more (a file), the samples after the last
    full window are analysed in one more window padded with silence, as `safeguard analyze`
    pads a file; the ring itself keeps only real audio (clips are cut from it).
    """

    def __init__(
        self,
        ring: AudioRing,
        detector: Detector,
        hop: int,
        sink: EventSink,
        *,
        on_event: Callable[[Event], None] | None = None,
        ended: Callable[[], bool] = lambda: False,
    ) -> None:
        self.ring = ring
        self.detector = detector
        self.hop = hop
        self.sink = sink
        self.on_event = on_event
        self.ended = ended
        self.analysed_to = 0  # where the last analysed window ended
        self.next_end = PATCH_SAMPLES
        self.last_progress = time.monotonic()
        self.events = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _deliver(self, events: list[Event]) -> None:
        self.events += sum(event.phase == "start" for event in events)  # events, not messages
        self.errors += deliver(events, self.sink, self.on_event)

    def _run(self) -> None:
        stats = self.detector.stats
        while not self._stop.is_set():
            ended = self.ended()  # before the head: once ended, the head is final
            head = self.ring.head
            missing = self.next_end - head
            tail = ended and missing > 0 and head > self.analysed_to
            if missing > 0 and not tail:
                self._stop.wait(max(0.005, missing / RATE))
                continue
            try:
                if tail:  # the end of a file: what is left, padded with silence
                    start = max(0, self.next_end - PATCH_SAMPLES)
                    window = np.zeros(PATCH_SAMPLES, np.float32)
                    window[: head - start] = self.ring.read(start, head - start)
                else:
                    window = self.ring.read(self.next_end - PATCH_SAMPLES, PATCH_SAMPLES)
            except Overrun as exc:
                behind = exc.oldest + PATCH_SAMPLES
                lost = (behind - self.next_end + self.hop - 1) // self.hop
                stats.skipped += lost
                self.next_end += lost * self.hop
                log.warning("inference fell behind: skipped %d windows", lost)
                continue
            began = time.perf_counter()
            events = self.detector.process(window, self.next_end)
            stats.infer_ms = [*stats.infer_ms[-199:], (time.perf_counter() - began) * 1000]
            self.last_progress = time.monotonic()
            self.analysed_to = self.next_end
            self.next_end += self.hop
            self._deliver(events)
        self._deliver(self.detector.flush(self.next_end / RATE))


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.stop_event = threading.Event()
        origin = time.time()
        self.detector = build_detector(config, origin_wall=origin)
        self.ring = AudioRing(int(config.audio.ring_s * RATE))
        location = config.device.location.model_dump() if config.device.location else None
        self.outbox = Outbox(config.storage.dir / "outbox.db", config.device.id, location)
        self.sink: EventSink = self.outbox
        clips = config.video.clips  # audio-only devices too (video.source: none)
        self.clips: ClipWriter | None = None
        self.uploads: Uploader | None = None
        if config.listener.enabled:  # clip files to the listener's API (and what is pending)
            self.uploads = Uploader(config.listener, config.storage.dir / "uploads.db")
        if clips.enabled:
            self.clips = ClipWriter(clips, config.storage.dir / "clips", self._on_clip)
            self.sink = ClipSink(self.outbox, self.clips)
        self.video: VideoWorker | None = None
        self.preview: PreviewServer | None = None
        if config.video.source != "none":  # the camera half, fused with audio before the outbox
            from edge.fusion import FusionSink
            from edge.videopipe import VideoWorker

            fusion = config.video.fusion
            self.sink = FusionSink(self.sink, fusion.window_s, fusion.severity)
            self.video = VideoWorker(
                config.video, config.models_dir, self.sink, origin, self._on_event
            )
            if config.video.preview.enabled:  # off by default; needs its password secret
                from edge.preview import PreviewServer

                self.preview = PreviewServer(config.video.preview, self.video.ring)
        elif config.video.preview.enabled:
            log.warning("video.preview is on but video.source is none: there is no preview")
        audio = config.audio
        self.source: AudioSource | None = open_source(audio, self.ring)
        if self.clips is not None:
            self.clips.audio = self.ring if self.source is not None else None
            if self.video is not None:
                self.clips.frames, self.clips.fps = self.video.ring, config.video.max_fps
        self.delivery = DeliveryService(config.mqtt, config.alerts, self.outbox, config.device.id)
        self.worker = InferenceWorker(
            self.ring,
            self.detector,
            hop_samples(config),
            self.sink,
            on_event=self._on_event,
            ended=self._file_ended,
        )
        self.device_health = DeviceHealth(config.storage.dir)
        self.watch = PipelineWatch(
            Notifier.from_env(), self._progress, self._status, config.system.stall_s
        )

    def _progress(self) -> Progress:
        capture = self.source.stats if self.source else None
        samples = capture.samples if capture else -1
        last_block = capture.last_block if capture else 0.0
        # retrying a missing or unplugged microphone is not a stall while the retries go on
        patience = self.config.audio.retry_max_s + self.config.system.stall_s
        waiting = bool(
            capture
            and capture.state == "retrying"
            and time.monotonic() - capture.last_attempt <= patience
        )
        now = time.monotonic()
        stall_s = self.config.system.stall_s
        video = self.video.alive(now, stall_s) if self.video is not None else ""
        return Progress(samples, last_block, self.worker.last_progress, waiting, video)

    def _status(self) -> str:
        capture = self.source.stats if self.source else None
        stats = self.detector.stats
        waiting = f" ({capture.error})" if capture and capture.state == "retrying" else ""
        camera = f"camera {self.video.camera.stats.state}, " if self.video is not None else ""
        return (
            f"capture {capture.state if capture else 'none'}{waiting}, {camera}"
            f"{stats.windows} windows, {self.worker.events} events, outbox {self.outbox.depth()}"
        )

    def _on_event(self, event: Event) -> None:
        if event.phase != "update":
            self.delivery.publish_state(event.category, event.phase == "start")

    def _on_clip(self, event: Event, clip: Clip) -> None:
        """A written clip is announced as one more `update` of its (possibly ended) event."""
        now = time.time()
        at_s = event.at_s + (now - event.wall_at)
        update = replace(event, phase="update", at_s=at_s, wall_at=now)
        alert = self.outbox.alert_for(update, {"clip": clip})
        if self.uploads is not None:  # queued first: its upload waits for the alert if need be
            try:
                self.uploads.add(alert["id"], clip)
            except DeliveryError as exc:  # the alert itself still goes out
                log.error("clip of alert %s not queued for upload: %s", alert["id"], exc)
        self.outbox.submit_alert(alert, event.key)
        log.info("alert %s stored: %s clip update", alert["id"], event.category)

    def _signal(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.stop_event.is_set():
            log.info("received %s again: already stopping", name)
        else:
            log.info("received %s: stopping", name)
        self.stop_event.set()

    def health(self) -> dict[str, object]:
        stats = self.detector.stats
        times = np.array(stats.infer_ms or [0.0])
        capture = self.source.stats if self.source else None
        return {
            "capture": capture.state if capture else "none",
            "capture_error": capture.error if capture else "",
            "samples": capture.samples if capture else 0,
            "overflows": capture.overflows if capture else 0,
            "windows": stats.windows,
            "silent_windows": stats.silent,
            "skipped_windows": stats.skipped,
            "infer_p50_ms": round(float(np.percentile(times, 50)), 2),
            "infer_p95_ms": round(float(np.percentile(times, 95)), 2),
            "events": self.worker.events,
            "outbox_depth": self.outbox.depth(),
            "inference_backlog_samples": max(0, self.ring.head - self.worker.next_end),
            **self.device_health.sample(capture.samples if capture else 0),
            **(self.video.health() if self.video else {}),
            **(self.clips.health() if self.clips else {}),
            **(self.uploads.health() if self.uploads else {}),
            "delivery": self.delivery.stats(),
        }

    def _file_ended(self) -> bool:
        return isinstance(self.source, FileSource) and self.source.ended.is_set()

    def _source_done(self) -> bool:
        """A file source has ended and every window of it has been analysed (with
        `audio: none`, the `file:` camera has ended)."""
        if self.source is None:
            camera = self.video.camera if self.video is not None else None
            return (
                camera is not None and camera.source.startswith("file:") and (camera.ended.is_set())
            )
        return self._file_ended() and self.worker.analysed_to >= self.ring.head

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._signal)
        signal.signal(signal.SIGINT, self._signal)
        # no event is open at start: clear what a crash may have left retained as ON (this
        # also announces every category to Home Assistant before its first event)
        categories = list(self.detector.categories) if self.source is not None else []
        if self.video is not None:
            categories.append(self.video.analyzer.category)
        for category in categories:
            self.delivery.publish_state(category, on=False)
        known = [*DEFAULT_CATEGORIES, "violence", *self.config.detection.categories]
        self.delivery.retire(sorted({c for c in known if c not in categories}))
        self.delivery.start()
        self.detector.origin_wall = time.time()  # stream time 0 is when capture starts
        if self.source is not None:
            self.source.start()
        self.worker.start()
        if self.video is not None:
            self.video.analyzer.origin_wall = self.detector.origin_wall
            self.video.start()
        if self.clips is not None:
            self.clips.start()
        if self.uploads is not None:
            self.uploads.start()
        if self.preview is not None:
            self.preview.start()
        log.info(
            "safeguard running: device=%s source=%s model=%s hop=%.2fs",
            self.config.device.id,
            self.config.audio.source,
            self.config.audio.model,
            self.config.audio.hop_s,
        )
        every = self.config.logging.health_every_s
        next_health = time.monotonic() + every
        while not self.stop_event.wait(0.2):
            self.watch.tick()
            if self._source_done():
                log.info("file source ended: stopping once its alerts are delivered")
                failed = isinstance(self.source, FileSource) and bool(self.source.stats.error)
                camera = self.video.camera if self.video is not None else None
                failed |= (
                    self.source is None and camera is not None and (camera.stats.state == "failed")
                )
                return self.shutdown(drain_s=DRAIN_S) or int(failed)
            if time.monotonic() >= next_health:
                next_health += every
                health = self.health()
                self.delivery.publish_health(health)
                log.info("health %s", " ".join(f"{k}={v}" for k, v in health.items()))
        return self.shutdown()

    def _undelivered(self) -> bool:
        """Alerts without an ack, or clip uploads not done yet."""
        return bool(self.outbox.depth() or (self.uploads is not None and self.uploads.pending()))

    def shutdown(self, drain_s: float = 0.0) -> int:
        """Stop everything; with `drain_s`, first wait that long at most for pending acks (a
        signal ends the wait: what is not acked stays in the outbox for the next start)."""
        began = time.monotonic()
        self.watch.stopping()
        if self.preview is not None:
            self.preview.stop(timeout=1.0)
        if self.source is not None:
            self.source.stop(timeout=1.0)
        self.worker.stop(timeout=1.0)  # ends active events into the outbox
        if self.video is not None:
            self.video.stop(timeout=1.0)
        if self.clips is not None:
            self.clips.stop(timeout=30.0)  # finishes the clips under way with the data held
        while self._undelivered() and time.monotonic() - began < drain_s:
            if self.stop_event.wait(0.05):  # SIGTERM or SIGINT cuts the wait short
                log.info("stopping with %d alerts not acked yet", self.outbox.depth())
                break
        try:
            self.delivery.publish_health(self.health())  # retained: says capture stopped
        except SafeguardError as exc:
            log.warning("no last health message: %s", exc)
        if self.uploads is not None:
            self.uploads.stop(timeout=2.0)  # what is pending stays queued for the next start
        self.delivery.stop(timeout=1.0)
        self.outbox.close()
        log.info("stopped in %.2f s", time.monotonic() - began)
        return 0

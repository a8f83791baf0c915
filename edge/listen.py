"""`safeguard listen`: what the microphone hears, live: top YAMNet classes and category scores."""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from types import FrameType

from edge.capture import FileSource, open_source
from edge.config import Config
from edge.detector import RATE
from edge.errors import CaptureError
from edge.frontend import PATCH_SAMPLES
from edge.pipeline import build_detector, hop_samples
from edge.ring import AudioRing, Overrun


def listen(config: Config, seconds: float, top: int) -> int:
    detector = build_detector(config)
    ring = AudioRing(int(config.audio.ring_s * RATE))
    audio = config.audio
    source = open_source(audio, ring)
    if source is None:
        raise CaptureError('audio.source is "none": nothing to listen to')
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    source.start()
    hop, next_end = hop_samples(config), PATCH_SAMPLES
    deadline = time.monotonic() + seconds if seconds > 0 else float("inf")
    labels = detector.model.labels
    shown_error = ""
    while not stop.is_set() and time.monotonic() < deadline:
        if source.stats.error != shown_error:
            shown_error = source.stats.error
            print(f"[{source.stats.state}] {shown_error}", file=sys.stderr, flush=True)
        if ring.head < next_end:
            if isinstance(source, FileSource) and source.ended.is_set():
                break  # a file source has ended and every window of it has been shown
            stop.wait(0.02)
            continue
        try:
            window = ring.read(next_end - PATCH_SAMPLES, PATCH_SAMPLES)
        except Overrun as exc:
            next_end = exc.oldest + PATCH_SAMPLES
            continue
        detector.process(window, next_end)
        result = detector.last_window
        assert result is not None
        best = result.scores.argsort()[::-1][:top]
        classes = "  ".join(f"{labels[i]} {result.scores[i]:.2f}" for i in best)
        categories = "  ".join(f"{n}={s:.2f}" for n, s in detector.last_scores.items())
        level = 20 * math.log10(max(float(abs(window).max()), 1e-6))
        print(f"{next_end / RATE:8.2f}s {level:6.1f} dBFS | {categories} | {classes}", flush=True)
        next_end += hop
    source.stop()
    if source.stats.error != shown_error:
        print(f"[{source.stats.state}] {source.stats.error}", file=sys.stderr, flush=True)
    return 1 if isinstance(source, FileSource) and source.stats.error else 0

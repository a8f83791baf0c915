"""Offline analysis: a file through the live detector as fast as possible.

Windows are taken exactly as the daemon takes them from its ring (every `hop_s`, the first
ending at 0.975 s), so `alert_at_s` is the stream time at which the daemon would alert. A file
shorter than one window is padded with silence to one window (a microphone goes on after the
sound), so its events end no earlier than their alert.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge import decode
from edge.detector import RATE, Detector
from edge.frontend import HOP, PATCH_FRAMES, PATCH_SAMPLES, covered_length
from edge.yamnet import Window, silent_window

F32 = npt.NDArray[np.float32]
BLOCK = 16  # windows classified before their category scores are computed at once


@dataclass(frozen=True)
class EventRecord:
    """One detected event, as `safeguard analyze --json` prints it."""

    file: str
    category: str
    start_s: float
    end_s: float
    peak_score: float
    alert_at_s: float
    severity: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def window_ends(length: int, hop: int) -> list[int]:
    """Absolute end indices of the windows over `length` samples (at least one window)."""
    return list(range(PATCH_SAMPLES, covered_length(length, hop) + 1, hop))


def analyze_audio(
    audio: F32,
    detector: Detector,
    hop: int,
    name: str = "",
    progress: Callable[[float], None] | None = None,
) -> list[EventRecord]:
    """Events in 16 kHz mono `audio`; `progress` gets the fraction done now and then."""
    ends = window_ends(len(audio), hop)
    padded = np.zeros(ends[-1], np.float32)
    padded[: len(audio)] = audio
    open_events: dict[str, dict[str, Any]] = {}
    records: list[EventRecord] = []

    def take(events: list[Any]) -> None:
        for event in events:
            if event.phase == "start":
                open_events[event.key] = {
                    "category": event.category,
                    "start_s": event.start_s,
                    "alert_at_s": event.at_s,
                    "severity": event.severity,
                }
            elif event.phase == "end":
                began = open_events.pop(event.key)
                duration = max(len(audio) / RATE, began["alert_at_s"])
                records.append(
                    EventRecord(
                        file=name,
                        category=began["category"],
                        start_s=round(began["start_s"], 3),
                        end_s=round(min(event.end_s, duration), 3),
                        peak_score=round(event.peak_score, 4),
                        alert_at_s=round(began["alert_at_s"], 3),
                        severity=began["severity"],
                    )
                )

    model = detector.model
    # Coral's model: the log-mel frames of the whole file at once, then one slice per window
    # (a window starts on a frame boundary, so its frames are exactly these).
    frames = model.frontend.frames(padded) if model.frontend is not None else None
    step = max(1, len(ends) // 100)
    for first_window in range(0, len(ends), BLOCK):
        block: list[Window] = []
        for end in ends[first_window : first_window + BLOCK]:
            audio_window = padded[end - PATCH_SAMPLES : end]
            if frames is None:
                block.append(model.classify(audio_window, end))
            elif not np.any(audio_window):
                block.append(silent_window(end))
            else:
                first = (end - PATCH_SAMPLES) // HOP
                block.append(model.classify_patch(frames[first : first + PATCH_FRAMES], end))
        # the block's category scores at once; smoothing then goes window by window
        for i, (window, scores) in enumerate(
            zip(block, detector.scorer.score_many(block), strict=True), first_window
        ):
            take(detector.process_window(window, scores))
            if progress is not None and i % step == 0:
                progress(i / len(ends))
    take(detector.flush(ends[-1] / RATE))
    if progress is not None:
        progress(1.0)
    return sorted(records, key=lambda r: (r.alert_at_s, r.category))


def analyze_file(
    path: Path,
    detector: Detector,
    hop: int,
    name: str,
    progress: Callable[[float], None] | None = None,
) -> list[EventRecord]:
    return analyze_audio(decode.read_all(path), detector, hop, name, progress)

"""Windows -> category scores -> smoothed events. The same code serves the live daemon and
`safeguard analyze`, so `alert_at_s` in an analysis is when the daemon would have alerted."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from edge.categories import CategoryConfig, CategoryScorer
from edge.events import Event
from edge.frontend import PATCH_SAMPLES
from edge.smoothing import Smoother, Transition
from edge.yamnet import Window, Yamnet

RATE = 16000
WINDOW_S = PATCH_SAMPLES / RATE


@dataclass
class DetectorStats:
    windows: int = 0
    silent: int = 0  # windows of digital silence, not sent to the model
    skipped: int = 0  # windows lost because inference fell behind the ring
    infer_ms: list[float] = field(default_factory=list)  # recent inference times


class Detector:
    """Feeds windows through the model, the category mapping and one smoother per category."""

    def __init__(
        self,
        model: Yamnet,
        categories: Mapping[str, CategoryConfig],
        origin_wall: float = 0.0,
    ) -> None:
        self.model = model
        self.categories = {n: c for n, c in categories.items() if c.enabled}
        self.scorer = CategoryScorer(self.categories, model.labels, variant=model.variant)
        if self.scorer.patch_features:  # a head reads the log-mel patch: have windows keep it
            model.keep_patch = True
        self.smoothers = {n: Smoother(c.smoothing, WINDOW_S) for n, c in self.categories.items()}
        self.origin_wall = origin_wall
        self.stats = DetectorStats()
        self._keys: dict[str, str] = {}
        self._evidence: dict[str, dict[str, float]] = {}
        self.last_scores: dict[str, float] = {}
        self.last_window: Window | None = None

    def process(self, audio: np.ndarray, end: int) -> list[Event]:
        """Classify the window of 15600 samples ending at absolute sample `end`."""
        return self.process_window(self.model.classify(audio, end))

    def process_window(self, window: Window, scores: dict[str, float] | None = None) -> list[Event]:
        """Score, smooth and turn into events a window the model has classified; `scores`
        are its category scores when they were computed already (`CategoryScorer.score_many`)."""
        self.stats.windows += 1
        self.stats.silent += window.silent
        self.last_window = window
        if scores is None:
            scores = self.scorer.score(window)
        self.last_scores = scores
        end_s = window.end / RATE
        events: list[Event] = []
        for name, smoother in self.smoothers.items():
            transition = smoother.step(end_s, scores.get(name, 0.0))
            if transition is None:
                continue
            if transition.phase == "start":
                self._keys[name] = uuid.uuid4().hex
                self._evidence[name] = self.scorer.evidence(window)
            events.append(self._event(name, transition))
        return events

    def flush(self, at_s: float) -> list[Event]:
        """End every active event (at the end of a stream or on shutdown)."""
        events = []
        for name, smoother in self.smoothers.items():
            transition = smoother.finish(at_s)
            if transition is not None:
                events.append(self._event(name, transition))
        return events

    def _event(self, name: str, tr: Transition) -> Event:
        key = self._keys[name] if tr.phase != "end" else self._keys.pop(name)
        return Event(
            phase=tr.phase,
            key=key,
            category=name,
            severity=self.categories[name].severity,
            score=float(min(1.0, max(0.0, tr.score))),
            peak_score=float(tr.peak),
            start_s=tr.start_s,
            at_s=tr.at_s,
            end_s=tr.end_s,
            wall_start=self.origin_wall + tr.start_s,
            wall_at=self.origin_wall + tr.at_s,
            evidence=self._evidence.get(name, {}),
        )

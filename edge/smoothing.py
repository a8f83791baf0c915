"""Turns a category's per-window scores into events: pure, driven by stream time.

Start: k of the last n windows at or above `on` (sustained for `min_duration_s`), or one
window at or above `fast` (impulsive sounds: a gunshot is one window long).
Stay on while windows reach `off` (hysteresis); end after `hold_s` below it, or at
`max_duration_s` at the latest, so an event never sticks on. After an end, no new start
for `refractory_s`; windows keep being fed meanwhile so the k-of-n state stays right.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SmoothingConfig(BaseModel):
    """How one category's window scores become events."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    on: float = Field(0.5, gt=0, le=1, description="A window at or above this score is a hit.")
    off: float = Field(
        0.3, ge=0, le=1, description="An active event stays on while windows reach this score."
    )
    k: int = Field(2, ge=1, le=20, description="Hits needed among the last n windows to start.")
    n: int = Field(3, ge=1, le=20, description="How many recent windows k-of-n looks at.")
    min_duration_s: float = Field(
        0.0, ge=0, le=10, description="Time from the first hit to a k-of-n start, at least."
    )
    fast: float | None = Field(
        0.9,
        gt=0,
        le=1,
        description="One window at or above this starts an event at once (null: off).",
    )
    hold_s: float = Field(
        1.0, ge=0, le=60, description="An event ends once no window reached `off` for this long."
    )
    refractory_s: float = Field(
        5.0, ge=0, le=3600, description="After an event ends, no new one starts for this long."
    )
    update_s: float = Field(
        10.0, gt=0, le=3600, description="While on, an update is sent at most this often."
    )
    max_duration_s: float = Field(
        300.0, gt=0, le=86400, description="An event ends after this long whatever the scores."
    )

    @model_validator(mode="after")
    def _consistent(self) -> SmoothingConfig:
        if self.off > self.on:
            raise ValueError(f"off ({self.off}) must not be above on ({self.on})")
        if self.k > self.n:
            raise ValueError(f"k ({self.k}) must not be above n ({self.n})")
        if self.fast is not None and self.fast < self.on:
            raise ValueError(f"fast ({self.fast}) must not be below on ({self.on})")
        return self


@dataclass(frozen=True)
class Transition:
    """A phase decided at stream time `at_s` for the event that started at `start_s`."""

    phase: Literal["start", "update", "end"]
    start_s: float
    at_s: float
    end_s: float  # end of the last window that reached `off` (so far)
    score: float
    peak: float


class Smoother:
    """One category's event state. Feed windows in time order with `step`."""

    def __init__(self, config: SmoothingConfig, window_s: float) -> None:
        self.config = config
        self._window_s = window_s
        self._recent: deque[tuple[float, float]] = deque(maxlen=config.n)  # (end_s, score)
        self._active = False
        self._start_s = 0.0
        self._last_on_s = 0.0
        self._last_sent_s = 0.0
        self._peak = 0.0
        self._refractory_until = float("-inf")

    @property
    def active(self) -> bool:
        return self._active

    def step(self, end_s: float, score: float) -> Transition | None:
        """Take the score of the window ending at `end_s`; a transition if one happened."""
        cfg = self.config
        self._recent.append((end_s, score))
        if self._active:
            return self._step_active(end_s, score)
        if end_s < self._refractory_until:
            return None
        hits = [t for t, s in self._recent if s >= cfg.on]
        fast = cfg.fast is not None and score >= cfg.fast
        sustained = len(hits) >= cfg.k and end_s - hits[0] >= cfg.min_duration_s
        if not (fast or sustained):
            return None
        first = end_s if fast and not sustained else hits[0]
        self._active = True
        self._start_s = max(0.0, first - self._window_s)
        self._last_on_s = self._last_sent_s = end_s
        self._peak = max(s for _, s in self._recent)
        return Transition("start", self._start_s, end_s, end_s, score, self._peak)

    def _step_active(self, end_s: float, score: float) -> Transition | None:
        cfg = self.config
        if score >= cfg.off:
            self._last_on_s = end_s
            self._peak = max(self._peak, score)
        quiet = end_s - self._last_on_s >= cfg.hold_s and score < cfg.off
        if quiet or end_s - self._start_s >= cfg.max_duration_s:
            return self.finish(end_s, score)
        if end_s - self._last_sent_s >= cfg.update_s:
            self._last_sent_s = end_s
            return Transition("update", self._start_s, end_s, self._last_on_s, score, self._peak)
        return None

    def finish(self, at_s: float, score: float = 0.0) -> Transition | None:
        """End an active event now (also used at the end of a stream); None if idle."""
        if not self._active:
            return None
        self._active = False
        self._refractory_until = at_s + self.config.refractory_s
        self._recent.clear()
        return Transition("end", self._start_s, at_s, self._last_on_s, score, self._peak)

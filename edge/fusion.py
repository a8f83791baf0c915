"""Audio + video fusion as an `EventSink` in front of the outbox.

An event of one modality whose time span comes within `window_s` of an event of the other
modality (active now, or ended less than `window_s` ago) is sent as one alert carrying both
modalities at the fused severity; its updates and end keep that. Each modality alone still
alerts at its own severity. Times are wall-clock (`wall_start`, `wall_at`).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace

from edge.events import Event, EventSink, Severity

log = logging.getLogger(__name__)
RANK = {"info": 0, "warning": 1, "critical": 2}


class FusionSink:
    def __init__(self, inner: EventSink, window_s: float, severity: Severity) -> None:
        self.inner = inner
        self.window_s = window_s
        self.severity: Severity = severity
        self.fused = 0  # alerts sent with both modalities
        self._lock = threading.Lock()
        # key -> (modality, category, wall start, wall end or None while active, peak)
        self._spans: dict[str, tuple[str, str, float, float | None, float]] = {}
        self._fused_keys: dict[str, tuple[str, float]] = {}  # key -> (other category, score)

    def _partner(self, event: Event, modality: str) -> tuple[str, float] | None:
        for mod, category, start, end, peak in self._spans.values():
            if mod == modality:
                continue
            last = event.wall_at if end is None else end
            if start - self.window_s <= event.wall_at and event.wall_start <= last + self.window_s:
                return category, peak
        return None

    def submit(self, event: Event) -> None:
        modality = event.modalities[0] if event.modalities else "audio"
        with self._lock:
            now = event.wall_at
            self._spans = {
                k: v for k, v in self._spans.items() if v[3] is None or now - v[3] <= self.window_s
            }
            if event.phase == "start":
                self._spans[event.key] = (modality, event.category, event.wall_start, None, 0.0)
                partner = self._partner(event, modality)
                if partner is not None:
                    self._fused_keys[event.key] = partner
                    self.fused += 1
                    log.info("fused %s with %s", event.category, partner[0])
            span = self._spans.get(event.key)
            if span is not None:
                end = event.wall_at if event.phase == "end" else None
                self._spans[event.key] = (*span[:3], end, max(span[4], event.peak_score))
            partner = self._fused_keys.get(event.key)
            if event.phase == "end":
                self._fused_keys.pop(event.key, None)
        if partner is not None:
            other = "video" if modality == "audio" else "audio"
            severity = max(self.severity, event.severity, key=RANK.__getitem__)
            evidence = {**event.evidence, f"{other}:{partner[0]}": partner[1]}
            event = replace(
                event,
                severity=severity,
                modalities=tuple(sorted({modality, other})),
                evidence=evidence,
            )
        self.inner.submit(event)

"""Threat events as the detectors emit them, and the sink they go to.

An event has a start, any number of updates and an end. The sink turns each into an
alert and makes it durable before `submit` returns (see `edge.outbox`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal, Protocol

log = logging.getLogger(__name__)

Phase = Literal["start", "update", "end"]
Severity = Literal["info", "warning", "critical"]


@dataclass(frozen=True)
class Event:
    """One phase of a threat event. Times are stream seconds; `wall_*` are Unix times."""

    phase: Phase
    key: str  # stable for the whole event: start, updates and end share it
    category: str
    severity: Severity
    score: float  # the smoothed score that decided this phase (0..1)
    peak_score: float  # the highest window score so far in this event
    start_s: float  # stream time of the first window over the on-threshold
    at_s: float  # stream time at which this phase was decided
    end_s: float  # stream time at which the sound was last heard (so far)
    wall_start: float
    wall_at: float
    modalities: tuple[str, ...] = ("audio",)
    evidence: dict[str, float] = field(default_factory=dict)  # top classes -> score


class EventSink(Protocol):
    """Where detectors put events. `submit` must be quick and durable."""

    def submit(self, event: Event) -> None: ...


def deliver(
    events: Iterable[Event], sink: EventSink, on_event: Callable[[Event], None] | None = None
) -> int:
    """Hand each event to the sink, then to `on_event`; returns how many the sink refused.

    A refused event is logged with its traceback; the pipeline that calls this goes on.
    """
    refused = 0
    for event in events:
        try:
            sink.submit(event)
        except Exception:  # the sink says what failed; capture and inference must go on
            refused += 1
            log.exception("could not store a %s %s event", event.category, event.phase)
        if on_event is not None:
            on_event(event)
    return refused

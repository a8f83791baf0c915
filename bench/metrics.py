"""Quality metrics shared by the quality harness and the peer approaches.

Clip metrics: per category, the recall on that category's clips and the fraction of `none`
clips flagged with that category. A clip is flagged with category C when the approach found
any detection of C in it.

Stream metrics: long recordings with threat events mixed in at known times. An event is
found when a detection of its category overlaps [start_s - 0.5, end_s + 2.0]; a detection
that matches no event (of its own category) is a false alarm; latency is the earliest
`alert_at_s` among an event's matching detections minus the event's `start_s`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import NamedTuple

NONE = "none"
EARLY_TOLERANCE_S = 0.5  # a detection may begin this much before the event's onset
LATE_TOLERANCE_S = 2.0  # ... and this much after its end

Event = tuple[str, float, float]  # (category, start_s, end_s)


class Detection(NamedTuple):
    """One detected event of one approach on one input."""

    category: str  # "scream" | "gunshot" | "glass_break"
    start_s: float
    end_s: float
    alert_at_s: float  # stream time at which the approach would have raised the alert
    peak_score: float


def clip_metrics(
    truth: list[str], predicted: list[set[str]], categories: Sequence[str]
) -> dict[str, dict[str, float]]:
    """`{category: {"recall": r, "none_flagged": f, "n": n}}` over clips.

    `truth[i]` is clip i's category (or "none"), `predicted[i]` the set of categories the
    approach flagged in it. `n` is the number of clips of that category; a ratio without
    any clip to count is NaN.
    """
    if len(truth) != len(predicted):
        raise ValueError(f"{len(truth)} truths but {len(predicted)} predictions")
    negatives = [flags for label, flags in zip(truth, predicted, strict=True) if label == NONE]
    result: dict[str, dict[str, float]] = {}
    for category in categories:
        positives = [
            flags for label, flags in zip(truth, predicted, strict=True) if label == category
        ]
        result[category] = {
            "recall": _ratio(sum(category in flags for flags in positives), len(positives)),
            "none_flagged": _ratio(sum(category in flags for flags in negatives), len(negatives)),
            "n": float(len(positives)),
        }
    return result


class _Matching(NamedTuple):
    found: int
    total: int
    false_alarms: int
    latencies: list[float]


def _overlaps(event: Event, detection: Detection) -> bool:
    category, start_s, end_s = event
    return (
        detection.category == category
        and detection.start_s < end_s + LATE_TOLERANCE_S
        and detection.end_s > start_s - EARLY_TOLERANCE_S
    )


def _match(events: Sequence[Event], detections: Sequence[Detection]) -> _Matching:
    found = 0
    latencies: list[float] = []
    for event in events:
        hits = [d for d in detections if _overlaps(event, d)]
        if hits:
            found += 1
            latencies.append(min(d.alert_at_s for d in hits) - event[1])
    false_alarms = sum(not any(_overlaps(e, d) for e in events) for d in detections)
    return _Matching(found, len(events), false_alarms, latencies)


def _summary(matching: _Matching, duration_s: float) -> dict[str, float]:
    hours = duration_s / 3600.0
    return {
        "found": float(matching.found),
        "total": float(matching.total),
        "recall": _ratio(matching.found, matching.total),
        "false_alarms": float(matching.false_alarms),
        "fa_per_hour": matching.false_alarms / hours if hours > 0 else math.nan,
        "median_latency_s": (
            statistics.median(matching.latencies) if matching.latencies else math.nan
        ),
    }


def stream_metrics(
    events: list[tuple[str, float, float]], detections: list[Detection], duration_s: float
) -> dict[str, float]:
    """found, total, recall, false_alarms, fa_per_hour, median_latency_s on one stream.

    For one category's figures pass only that category's events and detections.
    """
    return _summary(_match(events, detections), duration_s)


def pooled_stream_metrics(
    runs: Sequence[tuple[list[Event], list[Detection], float]],
) -> dict[str, float]:
    """`stream_metrics` over several streams at once: counts add up, the duration adds up,
    and the median latency is taken over the events of all streams."""
    found = total = false_alarms = 0
    latencies: list[float] = []
    duration_s = 0.0
    for events, detections, duration in runs:
        matching = _match(events, detections)
        found += matching.found
        total += matching.total
        false_alarms += matching.false_alarms
        latencies += matching.latencies
        duration_s += duration
    return _summary(_Matching(found, total, false_alarms, latencies), duration_s)


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else math.nan

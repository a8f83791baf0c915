"""Smoothing on synthetic score sequences: start, extend, end, hysteresis, refractory, fast path."""

from __future__ import annotations

import pydantic
import pytest

from edge.smoothing import Smoother, SmoothingConfig, Transition

HOP = 0.25


def run(config: SmoothingConfig, scores: list[float]) -> list[Transition]:
    smoother = Smoother(config, window_s=0.975)
    out = []
    for i, score in enumerate(scores):
        transition = smoother.step(0.975 + i * HOP, score)
        if transition:
            out.append(transition)
    return out


def phases(transitions: list[Transition]) -> list[str]:
    return [t.phase for t in transitions]


def test_k_of_n_start_needs_k_hits() -> None:
    cfg = SmoothingConfig(on=0.5, off=0.3, k=2, n=3, fast=None, hold_s=0.5)
    assert run(cfg, [0.6, 0.1, 0.1, 0.6, 0.1, 0.1]) == []  # isolated hits: nothing
    out = run(cfg, [0.1, 0.6, 0.1, 0.7, 0.1, 0.1, 0.1])
    assert phases(out) == ["start", "end"]
    assert out[0].at_s == pytest.approx(0.975 + 3 * HOP)  # decided on the second hit
    assert out[0].start_s == pytest.approx(0.975 + HOP - 0.975)  # the first hit's window start


def test_hysteresis_keeps_the_event_on_between_off_and_on() -> None:
    cfg = SmoothingConfig(on=0.5, off=0.2, k=1, n=1, fast=None, hold_s=0.5, update_s=100)
    out = run(cfg, [0.6, 0.3, 0.3, 0.3, 0.3, 0.1, 0.1, 0.1])
    assert phases(out) == ["start", "end"]
    assert out[1].end_s == pytest.approx(0.975 + 4 * HOP)  # last window at or above off
    assert out[1].at_s == pytest.approx(0.975 + 6 * HOP)  # after hold_s below off


def test_updates_while_on_and_max_duration_ends_it() -> None:
    cfg = SmoothingConfig(
        on=0.5, off=0.3, k=1, n=1, fast=None, update_s=1.0, max_duration_s=3.0, refractory_s=100
    )
    out = run(cfg, [0.9] * 40)
    assert phases(out) == ["start", "update", "update", "end"]  # never sticks on
    assert out[-1].peak == pytest.approx(0.9)


def test_refractory_blocks_a_new_start_but_state_keeps_feeding() -> None:
    cfg = SmoothingConfig(on=0.5, off=0.3, k=2, n=2, fast=None, hold_s=0.25, refractory_s=2.0)
    blocked = run(cfg, [0.9, 0.9, 0.1, 0.1] + [0.9] * 4 + [0.1] * 8 + [0.9] * 2)
    assert phases(blocked) == ["start", "end", "start"]  # the middle burst fell in refractory
    assert blocked[2].at_s == pytest.approx(0.975 + 17 * HOP)
    # a sound that goes on through the refractory period starts again the moment it ends,
    # because the k-of-n history kept being fed meanwhile
    out = run(cfg, [0.9, 0.9, 0.1] + [0.9] * 12)
    assert phases(out) == ["start", "end", "start"]
    assert out[2].at_s == pytest.approx(out[1].at_s + 2.0)


def test_fast_path_starts_on_one_very_high_window() -> None:
    cfg = SmoothingConfig(on=0.5, off=0.3, k=3, n=4, fast=0.85, hold_s=0.25)
    assert phases(run(cfg, [0.1, 0.95, 0.1, 0.1, 0.1])) == ["start", "end"]
    assert run(cfg, [0.1, 0.8, 0.1, 0.1]) == []


def test_min_duration() -> None:
    cfg = SmoothingConfig(on=0.5, off=0.3, k=2, n=10, fast=None, min_duration_s=1.0)
    out = run(cfg, [0.6] * 6)
    assert out[0].at_s - (0.975) >= 1.0


def test_finish_ends_an_active_event_once() -> None:
    smoother = Smoother(SmoothingConfig(k=1, n=1), 0.975)
    assert smoother.step(1.0, 0.95) is not None
    end = smoother.finish(2.0)
    assert end is not None
    assert end.phase == "end"
    assert smoother.finish(3.0) is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"on": 0.3, "off": 0.5}, "off"),
        ({"k": 4, "n": 3}, "k"),
        ({"on": 0.6, "fast": 0.5}, "fast"),
        ({"hold": 1}, "Extra inputs"),
    ],
)
def test_inconsistent_settings_are_rejected(fields: dict[str, float], message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        SmoothingConfig.model_validate(fields)

"""The peer approaches of bench/peers.py on real dev clips, and the metrics on known answers."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from bench.metrics import Detection, clip_metrics, pooled_stream_metrics, stream_metrics
from bench.peers import (
    ClassicForest,
    FrigateRule,
    classic_cross_validated_clip_predictions,
    load_audio,
    recording_group,
)
from tests.helpers import AUDIO_DEV, SHARED_MODELS, require_shared

GUNSHOT = "clips/gunshots__AK-47__1_34_.flac"  # scores >= 0.98 in both windows


def _labels() -> list[dict[str, str]]:
    with (require_shared(AUDIO_DEV) / "labels.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _clip(file: str) -> npt.NDArray[np.float32]:
    return load_audio(require_shared(AUDIO_DEV / file))


def _rms(audio: npt.NDArray[np.float32]) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))


@pytest.fixture(scope="module")
def frigate() -> FrigateRule:
    return FrigateRule(require_shared(SHARED_MODELS / "yamnet.tflite"))


# --- metrics on hand-made inputs -----------------------------------------------------------


def test_clip_metrics_known_answer() -> None:
    truth = ["scream", "scream", "gunshot", "none", "none", "none", "none"]
    predicted: list[set[str]] = [{"scream"}, set(), {"scream"}, {"scream"}, set(), set(), set()]
    result = clip_metrics(truth, predicted, ["scream", "gunshot", "glass_break"])
    assert result["scream"] == {"recall": 0.5, "none_flagged": 0.25, "n": 2.0}
    assert result["gunshot"] == {"recall": 0.0, "none_flagged": 0.0, "n": 1.0}
    assert math.isnan(result["glass_break"]["recall"])
    assert result["glass_break"]["n"] == 0.0


def test_clip_metrics_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="2 truths but 1 predictions"):
        clip_metrics(["none", "none"], [set()], ["scream"])


def test_stream_metrics_known_answer() -> None:
    events = [("scream", 10.0, 12.0), ("gunshot", 50.0, 51.0), ("glass_break", 100.0, 101.0)]
    detections = [
        Detection("scream", 9.6, 11.0, 10.8, 0.9),  # starts inside the 0.5 s early tolerance
        Detection("scream", 13.5, 14.0, 14.0, 0.9),  # inside the 2 s late tolerance: same event
        Detection("gunshot", 53.1, 54.0, 54.0, 0.9),  # after 51 + 2.0: a false alarm
        Detection("scream", 50.0, 51.0, 51.0, 0.9),  # wrong category on the gunshot: false alarm
        Detection("glass_break", 99.0, 100.2, 100.6, 0.9),  # found, latency 0.6
        Detection("glass_break", 300.0, 301.0, 301.0, 0.9),  # nowhere near: false alarm
    ]
    result = stream_metrics(events, detections, duration_s=1800.0)
    assert result["found"] == 2.0
    assert result["total"] == 3.0
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["false_alarms"] == 3.0
    assert result["fa_per_hour"] == pytest.approx(6.0)
    assert result["median_latency_s"] == pytest.approx((0.8 + 0.6) / 2)


def test_stream_metrics_edges_of_the_tolerance_do_not_match() -> None:
    events = [("gunshot", 10.0, 11.0)]
    touching = [
        Detection("gunshot", 8.0, 9.5, 9.5, 0.9),  # ends exactly at start - 0.5
        Detection("gunshot", 13.0, 14.0, 14.0, 0.9),  # begins exactly at end + 2.0
    ]
    result = stream_metrics(events, touching, duration_s=3600.0)
    assert result["found"] == 0.0
    assert result["false_alarms"] == 2.0
    assert math.isnan(result["median_latency_s"])


def test_pooled_stream_metrics_adds_up_and_pools_latencies() -> None:
    first = ([("scream", 0.0, 1.0)], [Detection("scream", 0.0, 1.0, 1.0, 0.9)], 1800.0)
    second = (
        [("scream", 0.0, 1.0), ("scream", 10.0, 11.0)],
        [Detection("scream", 0.0, 1.0, 3.0, 0.9), Detection("scream", 10.0, 11.0, 12.0, 0.9)],
        1800.0,
    )
    empty: tuple[list[tuple[str, float, float]], list[Detection], float] = ([], [], 0.0)
    result = pooled_stream_metrics([first, second, empty])
    assert (result["found"], result["total"], result["false_alarms"]) == (3.0, 3.0, 0.0)
    assert result["median_latency_s"] == pytest.approx(2.0)
    assert result["fa_per_hour"] == 0.0


# --- grouping ------------------------------------------------------------------------------


def test_recording_group_keeps_chunks_of_one_recording_together() -> None:
    assert recording_group("clips/esc50_subset__audio__2-103426-A-3.flac") == "esc50:103426"
    assert recording_group("clips/esc50_subset__audio__2-103426-B-3.flac") == "esc50:103426"
    chunk = (
        "clips/glass_break_1s__glass_break__Glass_Breaking.glass.cbor.5s48f1sm"
        ".ingestion-6d4bc445b6-rr4b8_chunk{}.wa.flac"
    )
    assert recording_group(chunk.format(1)) == recording_group(chunk.format(2))
    assert recording_group("clips/screams__positive__damm_0.flac") == recording_group(
        "clips/screams__positive__damm_7.flac"
    )
    assert recording_group("clips/screams__positive__maleScream-038.flac") != recording_group(
        "clips/screams__positive__maleScream-037.flac"
    )
    assert recording_group("clips/gunshots__M4__4_46_.flac") == "gunshots:M4"


# --- Frigate's rule on real clips --------------------------------------------------------------


def test_frigate_flags_a_loud_gunshot(frigate: FrigateRule) -> None:
    detections = frigate.detect(_clip(GUNSHOT))
    assert [d.category for d in detections] == ["gunshot"]
    (shot,) = detections
    assert (shot.start_s, shot.end_s) == pytest.approx((0.0, 1.95))  # two windows, one event
    assert shot.alert_at_s == pytest.approx(0.975)
    assert shot.peak_score >= 0.8


def test_frigate_stays_quiet_on_a_quiet_none_clip(frigate: FrigateRule) -> None:
    quiet = min(
        (r["file"] for r in _labels() if r["category"] == "none"), key=lambda f: _rms(_clip(f))
    )
    audio = _clip(quiet)
    assert _rms(audio) < 500 / 32768  # below Frigate's default volume gate
    assert frigate.detect(audio) == []
    assert FrigateRule(SHARED_MODELS / "yamnet.tflite", min_volume=0.0).detect(audio) == []


def test_frigate_merges_consecutive_windows_and_gates_on_volume(frigate: FrigateRule) -> None:
    shot = _clip(GUNSHOT)[:15600]
    gap = np.zeros(15600 * 3, np.float32)
    faint = (shot * 0.002).astype(np.float32)  # the same shot far below Frigate's volume gate
    stream = np.concatenate([gap, shot, gap, shot, shot, faint])
    detections = frigate.detect(stream)
    spans = [t for d in detections for t in (d.start_s, d.end_s)]
    assert spans == pytest.approx([2.925, 3.9, 6.825, 8.775])
    assert [d.alert_at_s for d in detections] == pytest.approx([3.9, 7.8])
    ungated = FrigateRule(SHARED_MODELS / "yamnet.tflite", min_volume=0.0)
    assert frigate.detect(faint) == []
    assert len(ungated.detect(faint)) <= 1  # without the gate the model decides


# --- the classic forest ------------------------------------------------------------------------


def _small_balanced_subset(
    per_category: int,
) -> tuple[list[npt.NDArray[np.float32]], list[str], list[str]]:
    picked: dict[str, list[str]] = {}
    for row in _labels():
        if float(row["seconds"]) <= 5.0:
            files = picked.setdefault(row["category"], [])
            if len(files) < per_category:
                files.append(row["file"])
    files = [f for category in sorted(picked) for f in picked[category]]
    categories = [c for c in sorted(picked) for _ in picked[c]]
    return [_clip(f) for f in files], categories, [recording_group(f) for f in files]


def test_classic_forest_runs_end_to_end() -> None:
    audios, categories, groups = _small_balanced_subset(per_category=6)
    assert sorted(set(categories)) == ["glass_break", "gunshot", "none", "scream"]
    forest = ClassicForest(trees=25).fit(audios, categories)
    gunshot = audios[categories.index("gunshot")]
    stream = np.concatenate([np.zeros(16000 * 3, np.float32), gunshot, np.zeros(16000, np.float32)])
    detections = forest.detect(stream)
    for d in detections:
        assert d.category in {"scream", "gunshot", "glass_break"}
        assert 0.0 <= d.start_s < d.end_s <= len(stream) / 16000 + 1.0
        assert d.start_s < d.alert_at_s <= len(stream) / 16000
        assert 0.0 < d.peak_score <= 1.0
    assert any(d.category == "gunshot" for d in forest.detect(gunshot))  # seen in training

    predictions = classic_cross_validated_clip_predictions(
        audios, categories, groups, folds=2, seed=0
    )
    assert len(predictions) == len(audios)
    assert set(predictions) <= {"scream", "gunshot", "glass_break", "none"}


def test_classic_forest_needs_fit() -> None:
    with pytest.raises(RuntimeError, match="before fit"):
        ClassicForest().detect(np.zeros(16000, np.float32))


def test_load_audio_resamples_to_16k_mono(tmp_path: Path) -> None:
    import soundfile as sf

    t = np.arange(44100) / 44100
    stereo = np.stack([np.sin(2 * np.pi * 440 * t)] * 2, axis=1) * 0.5
    sf.write(tmp_path / "tone.wav", stereo, 44100)
    audio = load_audio(tmp_path / "tone.wav")
    assert audio.dtype == np.float32
    assert audio.shape == (16000,)
    assert _rms(audio) == pytest.approx(0.5 / math.sqrt(2), rel=0.02)

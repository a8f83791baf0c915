"""The real TFLite model, the default categories and the shipped heads on real dev clips,
through the detector and `analyze_audio` (the code path of `safeguard analyze`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import soundfile as sf

from edge.analyze import analyze_audio
from edge.categories import DEFAULT_CATEGORIES
from edge.detector import Detector
from edge.yamnet import Yamnet, labels_from_class_map, labels_from_model
from tests.helpers import AUDIO_DEV, require_models, require_shared

HOP = 4000  # 0.25 s, the default

THREATS = {
    "scream": [
        "screams__positive__femaleScream-061.flac",
        "screams__positive__319258__ramston__woman-screaming-of-fear.flac",
        "screams__positive__maleScream-064.flac",
    ],
    "gunshot": [
        "gunshots__AK-47__1_36_.flac",
        "gunshots__MP5__8_64_.flac",
        "gunshots__M16__5_15_.flac",
    ],
    "glass_break": [
        "glass_break_1s__glass_break__Glass_Breaking.glass.cbor.5s4a65n3."
        "ingestion-6d4bc445b6-dzrkj_chunk3.wa.flac",
        "glass_break_1s__glass_break__Glass_Breaking.glass.cbor.5sce5ta1."
        "ingestion-746595cf47-7bncz_chunk2.wa.flac",
        "glass_break_1s__glass_break__Glass_Breaking.glass.cbor.5s4picj9."
        "ingestion-6d4bc445b6-f9kz2_chunk1.wa.flac",
    ],
}
HARD_NEGATIVES = [
    "esc50_subset__audio__4-119647-A-48.flac",  # fireworks
    "esc50_subset__audio__4-182039-A-30.flac",  # door knock
    "esc50_subset__audio__4-133674-A-26.flac",  # laughing
    "esc50_subset__audio__4-167077-A-20.flac",  # crying baby
    "esc50_subset__audio__4-175025-A-34.flac",  # can opening
    "esc50_subset__audio__4-189828-A-22.flac",  # clapping
    "screams__negative__clnsp10.flac",  # speech
]


@pytest.fixture(scope="module", params=["yamnet_spectra_in", "yamnet"])
def model(request: pytest.FixtureRequest) -> Yamnet:
    """The default model, whose embeddings trained the shipped heads, and the waveform model,
    on which the same heads must still work (its embeddings are close)."""
    models = require_models()
    if request.param == "yamnet":
        return Yamnet(
            models / "yamnet.tflite", "yamnet", labels_from_model(models / "yamnet.tflite")
        )
    labels = labels_from_class_map(models / "yamnet_class_map.csv")
    return Yamnet(models / "yamnet_spectra_in.tflite", "yamnet_spectra_in", labels)


def detected(model: Yamnet, clip: str) -> set[str]:
    path = require_shared(AUDIO_DEV / "clips" / clip)
    audio, rate = sf.read(str(path), dtype="float32")
    assert rate == 16000
    records = analyze_audio(audio, Detector(model, DEFAULT_CATEGORIES), HOP, Path(clip).name)
    return {r.category for r in records}


@pytest.mark.parametrize(
    ("category", "clip"), [(c, clip) for c, clips in THREATS.items() for clip in clips]
)
def test_threat_clips_are_detected(model: Yamnet, category: str, clip: str) -> None:
    assert detected(model, clip) == {category}


@pytest.mark.parametrize("clip", HARD_NEGATIVES)
def test_hard_negative_clips_raise_nothing(model: Yamnet, clip: str) -> None:
    assert detected(model, clip) == set()

"""`analyze` and the live daemon take the same windows and reach the same events, for both
model variants (Coral's model takes the whole file's frames at once in `analyze`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile
import soxr

from edge import decode
from edge.analyze import analyze_audio, window_ends
from edge.config import parse_config
from edge.detector import RATE
from edge.errors import CaptureError
from edge.frontend import PATCH_SAMPLES
from edge.pipeline import build_detector, hop_samples
from edge.ring import AudioRing
from tests.helpers import AUDIO_DEV, require_models, require_shared


@pytest.mark.parametrize("variant", ["yamnet", "yamnet_spectra_in"])
def test_analyze_equals_the_live_path(variant: str) -> None:
    models = require_models()
    config = parse_config(f"models: {{dir: {models}}}\naudio: {{model: {variant}}}\n")
    stream = require_shared(AUDIO_DEV / "streams" / "stream_00.flac")
    audio = decode.read_all(stream)[: RATE * 60]
    hop = hop_samples(config)

    offline = analyze_audio(audio, build_detector(config), hop)

    # the daemon's way: blocks into the ring, one window per hop read back from it
    live = build_detector(config)
    ring = AudioRing(RATE * 30)
    ends = window_ends(len(audio), hop)
    padded = np.zeros(ends[-1], np.float32)
    padded[: len(audio)] = audio
    starts, scores_live = [], []
    for end in ends:
        while ring.head < end:
            ring.write(padded[ring.head : ring.head + 800])
        events = live.process(ring.read(end - PATCH_SAMPLES, PATCH_SAMPLES), end)
        starts += [e.at_s for e in events if e.phase == "start"]
        scores_live.append(live.last_scores)
    assert [r.alert_at_s for r in offline] == pytest.approx(starts)
    assert len(scores_live) == len(ends)


def test_whole_file_frames_give_the_same_scores_as_per_window_frames() -> None:
    models = require_models()
    config = parse_config(f"models: {{dir: {models}}}\naudio: {{model: yamnet_spectra_in}}\n")
    model = build_detector(config).model
    assert model.frontend is not None
    audio = decode.read_all(require_shared(AUDIO_DEV / "streams" / "stream_01.flac"))[: RATE * 30]
    frames = model.frontend.frames(audio)
    hop = hop_samples(config)
    compared = 0
    for end in range(PATCH_SAMPLES, len(audio) + 1, hop * 7):
        start = end - PATCH_SAMPLES
        per_window = model.classify(audio[start:end], end)
        if per_window.silent:  # digital silence never reaches the model on either path
            continue
        sliced = model.classify_patch(frames[start // 160 : start // 160 + 96], end)
        np.testing.assert_allclose(sliced.scores, per_window.scores, atol=1 / 256 + 1e-6)
        np.testing.assert_allclose(sliced.embedding, per_window.embedding, atol=0.03)
        compared += 1
    assert compared >= 15


def test_whole_file_read_resamples_like_the_block_reader(tmp_path: Path) -> None:
    """`analyze` reads a file in one go, the daemon's `file:` source block by block: a 44.1 kHz
    stereo recording comes out of both as the same 16 kHz mono audio, and as the original."""
    original = decode.read_all(require_shared(AUDIO_DEV / "streams" / "stream_01.flac"))
    original = original[: RATE * 20]
    stereo = soxr.resample(np.stack([original, 0.5 * original], axis=1), RATE, 44100)
    path = tmp_path / "scene_44k_stereo.flac"
    soundfile.write(path, stereo, 44100, subtype="PCM_24")

    whole = decode.read_all(path)
    blocks = np.concatenate(list(decode.blocks(path)))
    assert whole.dtype == np.float32
    assert abs(len(whole) - len(original)) <= 2
    assert abs(len(blocks) - len(whole)) <= 2
    n = min(len(whole), len(blocks), len(original))
    assert np.corrcoef(whole[:n], blocks[:n])[0, 1] > 0.999
    assert np.corrcoef(whole[:n], 0.75 * original[:n])[0, 1] > 0.999  # downmixed, in step


def test_float_samples_beyond_full_scale_are_clipped_as_a_microphone_would(
    tmp_path: Path,
) -> None:
    loud = np.array([0.5, -3.0, 40.0, -0.25], np.float32).repeat(4000)
    path = tmp_path / "loud.wav"
    soundfile.write(path, loud, RATE, subtype="FLOAT")
    expected = np.clip(loud, -1.0, 1.0)
    np.testing.assert_array_equal(decode.read_all(path), expected)
    np.testing.assert_array_equal(np.concatenate(list(decode.blocks(path))), expected)


def test_sound_files_are_known_without_ffprobe_and_others_still_ask_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A WAV or FLAC libsndfile reads holds only sound (no ffprobe process for it); a file
    with such a suffix that it cannot read, and every other format, still go to ffprobe."""
    tone = np.sin(np.arange(16000, dtype=np.float32) / 5).astype(np.float32)
    wav, flac = tmp_path / "a.wav", tmp_path / "a.flac"
    soundfile.write(wav, tone, RATE)
    soundfile.write(flac, tone, RATE)
    mp4, fake = tmp_path / "a.mp4", tmp_path / "b.wav"
    mp4.write_bytes(b"\0" * 64)
    fake.write_bytes(b"not a sound file at all")
    bare = tmp_path / "bin"  # a PATH without ffprobe: any answer below came without it
    bare.mkdir()
    monkeypatch.setenv("PATH", str(bare))
    assert decode.stream_kinds(wav) == {"audio"}
    assert decode.stream_kinds(flac) == {"audio"}
    assert decode.stream_kinds(mp4) is None  # would have asked ffprobe
    assert decode.stream_kinds(fake) is None
    monkeypatch.undo()
    with pytest.raises(CaptureError, match="damaged or not a media file"):
        decode.stream_kinds(fake)

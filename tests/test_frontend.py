"""The numpy log-mel front end against Coral's published test vectors."""

from __future__ import annotations

import numpy as np

from edge.frontend import HOP, PATCH_SAMPLES, LogMel, PatchStream, mel_matrix
from tests.helpers import SHARED_MODELS, require_shared


def load_vectors() -> tuple[np.ndarray, np.ndarray]:
    folder = require_shared(SHARED_MODELS / "testvectors")
    audio = np.fromfile(folder / "yamnet_test_audio.bin", dtype="<i2").astype(np.float32) / 32768
    spectra = np.fromfile(folder / "yamnet_test_spectra.bin", dtype="<f4").reshape(96, 64)
    return audio, spectra


def test_matches_corals_test_vectors() -> None:
    audio, expected = load_vectors()
    assert audio.shape == (PATCH_SAMPLES,)
    patch = LogMel(log_offset=0.01, peak_normalize=True).patch(audio)
    assert patch.shape == (96, 64)
    np.testing.assert_allclose(patch, expected, atol=2e-4)


def test_yamnet_features_differ_from_corals_only_by_normalisation() -> None:
    audio, _ = load_vectors()
    plain = LogMel().patch(audio)
    scaled = LogMel().patch((audio / np.abs(audio).max()).astype(np.float32))
    # peak normalisation is a gain: it shifts loud bins by log(gain) and leaves shape alone
    loud = plain > 0
    shift = scaled[loud] - plain[loud]
    np.testing.assert_allclose(shift, np.log(1 / np.abs(audio).max()), atol=0.05)


def test_mel_matrix_shape_and_band_edges() -> None:
    weights = mel_matrix()
    assert weights.shape == (257, 64)
    assert np.all(weights[0] == 0)  # no DC
    hz = np.linspace(0, 8000, 257)
    used = hz[weights.sum(axis=1) > 0]
    assert used.min() > 125
    assert used.max() < 7500


def test_frames_are_framed_every_10_ms() -> None:
    frontend = LogMel()
    audio = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    frames = frontend.frames(audio)
    assert frames.shape == (1 + (16000 - 400) // 160, 64)
    np.testing.assert_allclose(frames[10], frontend.frames(audio[1600:2000])[0], atol=1e-5)
    assert frontend.frames(audio[:399]).shape == (0, 64)


class CountingLogMel(LogMel):
    """Counts the frames it computes."""

    computed = 0

    def frames(self, audio: np.ndarray) -> np.ndarray:
        out = super().frames(audio)
        self.computed += len(out)
        return out


def test_a_stream_of_overlapping_windows_gives_the_same_patches_computing_each_frame_once() -> None:
    audio = np.random.default_rng(1).standard_normal(16000 * 6).astype(np.float32) * 0.1
    reference, counting = LogMel(), CountingLogMel()
    stream = PatchStream(counting)
    hop = 25 * HOP  # 0.25 s
    # the daemon's windows, then a skip (inference fell behind), a start that is not on a
    # frame boundary of the last one, a repeat of the same window, and a step back
    starts = [*range(0, 8 * hop, hop), 12 * hop, 12 * hop + 80, 12 * hop + 80, 3 * hop]
    for start in starts:
        window = audio[start : start + PATCH_SAMPLES]
        np.testing.assert_allclose(stream.patch(window, start), reference.patch(window), atol=1e-5)
    whole = 96 * 4  # the first window, the skip, the off-boundary start, the step back
    assert counting.computed == whole + 7 * 25  # the other seven windows: their 25 new frames


def test_a_window_whose_overlap_differs_is_computed_whole() -> None:
    rng = np.random.default_rng(2)
    first, other = (rng.standard_normal(PATCH_SAMPLES + 4000).astype(np.float32) for _ in "ab")
    stream = PatchStream(LogMel())
    stream.patch(first[:PATCH_SAMPLES], 0)
    # another source's audio at the next hop (a test, or a restarted capture): not reused
    window = other[4000:]
    np.testing.assert_allclose(stream.patch(window, 4000), LogMel().patch(window), atol=1e-5)
    # the same start with different audio is not the cached patch either
    np.testing.assert_allclose(
        stream.patch(first[4000:], 4000), LogMel().patch(first[4000:]), atol=1e-5
    )

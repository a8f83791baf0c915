"""Heads with a second part on log-mel patch statistics (`edge.frontend.patch_stats`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from edge.categories import DEFAULT_CATEGORIES, CategoryConfig, CategoryScorer
from edge.errors import ConfigError
from edge.frontend import PATCH_SAMPLES, PATCH_STATS, PATCH_STATS_SIZE, LogMel, patch_stats
from edge.heads import EMBEDDING_SIZE, KEYS, Head, load_head, save_head
from edge.yamnet import Window
from tests.helpers import require_models

LABELS = [f"Class {i}" for i in range(521)]
INPUTS = EMBEDDING_SIZE + PATCH_STATS_SIZE


def _patch(seed: int = 0) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    return rng.normal(-4.0, 2.0, (96, 64)).astype(np.float32)


def _sigmoid(z: float) -> float:
    return float(1 / (1 + np.exp(-z)))


def _head(seed: int = 0) -> Head:
    rng = np.random.default_rng(seed)
    return Head.from_arrays(
        rng.normal(0, 0.05, INPUTS).astype(np.float32),
        -0.3,
        rng.normal(0, 1, INPUTS).astype(np.float32),
        rng.uniform(0.5, 2, INPUTS).astype(np.float32),
        np.zeros(0, np.intp),
        metadata={"category": "glass_break"},
        patch_features=PATCH_STATS,
        patch_bias=0.2,
    )


def test_patch_stats_have_a_fixed_size_and_ignore_the_input_gain() -> None:
    patch = _patch()
    stats = patch_stats(patch)
    assert stats.shape == (PATCH_STATS_SIZE,)
    assert stats.dtype == np.float32
    assert np.all(np.isfinite(stats))
    # a gain is a constant added to every log-mel value: the statistics do not move
    np.testing.assert_allclose(patch_stats(patch + 3.0), stats, atol=1e-3)
    assert not np.allclose(patch_stats(_patch(1)), stats, atol=1e-3)


def _reference_stats(p: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """The statistics as `patch_stats` documents them, written plainly (float64)."""
    x = p.astype(np.float64)
    bands = np.arange(64)
    dct = np.cos(np.pi / 64 * (bands[None, :] + 0.5) * np.arange(20)[:, None])
    cep = x @ dct.T
    mean = x.mean(axis=0)
    power = np.exp(x)
    total = power.sum(axis=1)
    flux = np.maximum(np.diff(x, axis=0), 0).sum(axis=1)
    high = power[:, 40:].sum(axis=1) / total
    level = np.log(total)
    centroid = (power @ bands) / total
    scalars = [flux.mean(), flux.max(), high.mean(), high.max(), level.std(),
               level.max() - level.mean(), centroid.mean(), centroid.std()]  # fmt: skip
    return np.concatenate([
        mean - mean.mean(), x.std(axis=0), np.diff(x, axis=0).std(axis=0), scalars,
        cep.std(axis=0), np.diff(cep, axis=0).std(axis=0),
    ])  # fmt: skip


def test_patch_stats_are_what_they_say_on_real_audio() -> None:
    """The fast form (column statistics as BLAS products) against the plain definition."""
    rng = np.random.default_rng(3)
    audio = (0.2 * rng.normal(size=PATCH_SAMPLES)).astype(np.float32)
    audio[6000:7000] += np.sin(np.arange(1000) * 1.3).astype(np.float32)  # a burst
    for patch in (LogMel().patch(audio), _patch(4)):
        np.testing.assert_allclose(
            patch_stats(patch), _reference_stats(patch), rtol=1e-3, atol=2e-3
        )


def test_patch_stats_of_real_audio_are_nearly_gain_invariant() -> None:
    rng = np.random.default_rng(2)
    t = np.arange(PATCH_SAMPLES) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 3000 * t) + 0.05 * rng.normal(size=t.size)).astype(np.float32)
    frontend = LogMel()
    loud, quiet = (patch_stats(frontend.patch(g * audio)) for g in (1.0, 0.25))
    # only the log offset of 0.001 breaks exact invariance, at the quietest bands
    assert np.median(np.abs(loud - quiet)) < 0.05


def test_a_patch_head_averages_its_two_parts_and_survives_saving(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    weights = rng.normal(0, 0.05, INPUTS).astype(np.float32)
    mean = rng.normal(0, 1, INPUTS).astype(np.float32)
    scale = rng.uniform(0.5, 2, INPUTS).astype(np.float32)
    head = Head.from_arrays(
        weights, -0.3, mean, scale, np.zeros(0, np.intp),
        patch_features=PATCH_STATS, patch_bias=0.2,
    )  # fmt: skip
    assert head.inputs == INPUTS
    assert head.patch_features == PATCH_STATS
    emb = rng.normal(0, 1, EMBEDDING_SIZE).astype(np.float32)
    scores = np.zeros(521, np.float32)
    stats = patch_stats(_patch())
    n = EMBEDDING_SIZE
    part_emb = _sigmoid(float(weights[:n] @ ((emb - mean[:n]) / scale[:n])) - 0.3)
    part_patch = _sigmoid(float(weights[n:] @ ((stats - mean[n:]) / scale[n:])) + 0.2)
    expected = 0.5 * (part_emb + part_patch)
    assert head.apply(emb, scores, stats) == pytest.approx(expected, rel=1e-4)
    # a window without a patch: the embedding part alone
    assert head.apply(emb, scores) == pytest.approx(part_emb, rel=1e-4)
    assert float(head.apply_many(emb[None], scores[None])[0]) == pytest.approx(part_emb, rel=1e-4)
    many = head.apply_many(emb[None], scores[None], stats[None])
    assert float(many[0]) == pytest.approx(expected, rel=1e-4)
    path = tmp_path / "glass.npz"
    save_head(path, head)
    loaded = load_head(path)
    assert loaded.patch_features == PATCH_STATS
    assert loaded.apply(emb, scores, stats) == pytest.approx(expected, rel=1e-4)
    # rebuilt from its parts and metadata (as `safeguard-convert train-head` does)
    rebuilt = Head(
        head.weights,
        head.bias,
        head.score_classes,
        head.calibration,
        head.threshold,
        json.loads(json.dumps(head.metadata)),
    )
    assert rebuilt.patch_features == PATCH_STATS
    assert rebuilt.apply(emb, scores, stats) == pytest.approx(expected, rel=1e-4)
    save_head(tmp_path / "rebuilt.npz", rebuilt)
    again = load_head(tmp_path / "rebuilt.npz")
    assert again.apply(emb, scores, stats) == pytest.approx(expected, rel=1e-4)


def test_a_head_file_without_patch_features_still_loads(tmp_path: Path) -> None:
    """A head written before patch features existed (no `patch_features` key)."""
    rng = np.random.default_rng(4)
    path = tmp_path / "old.npz"
    weights = rng.normal(0, 0.05, EMBEDDING_SIZE).astype(np.float32)
    np.savez_compressed(
        path,
        weights=weights,
        bias=np.float32(0.1),
        mean=np.zeros(EMBEDDING_SIZE, np.float32),
        scale=np.ones(EMBEDDING_SIZE, np.float32),
        score_classes=np.zeros(0, np.int32),
        calibration=np.array([1.0, 0.0], np.float32),
        threshold=np.float64(0.5),
        metadata=np.array(json.dumps({"category": "scream"})),
    )
    with np.load(path) as data:
        assert set(data.files) == {*KEYS, "metadata"}
    head = load_head(path)
    assert head.patch_features == ""
    assert head.inputs == EMBEDDING_SIZE
    emb = rng.normal(0, 1, EMBEDDING_SIZE).astype(np.float32)
    expected = 1 / (1 + np.exp(-(float(weights @ emb) + 0.1)))
    assert head.apply(emb, np.zeros(521, np.float32)) == pytest.approx(expected, rel=1e-5)
    # a patch passed to such a head is ignored
    stats = patch_stats(_patch())
    assert head.apply(emb, np.zeros(521, np.float32), stats) == pytest.approx(expected, rel=1e-5)


def test_head_files_with_unknown_or_mismatched_patch_features_are_refused(
    tmp_path: Path,
) -> None:
    path = tmp_path / "glass.npz"
    save_head(path, _head())
    with np.load(path) as data:
        assert str(data["patch_features"]) == PATCH_STATS
        arrays = {k: data[k] for k in data.files}
    arrays["patch_features"] = np.array("logmel-stats-99")
    np.savez_compressed(tmp_path / "unknown.npz", **arrays)
    with pytest.raises(ConfigError, match="patch features 'logmel-stats-99'"):
        load_head(tmp_path / "unknown.npz", key="detection.categories.glass_break.head")
    arrays["patch_features"] = np.array(PATCH_STATS)
    arrays["metadata"] = np.array("{}")
    for k in ("weights", "mean", "scale"):
        arrays[k] = arrays[k][:EMBEDDING_SIZE]
    np.savez_compressed(tmp_path / "short.npz", **arrays)
    with pytest.raises(ConfigError, match="has weights for"):
        load_head(tmp_path / "short.npz")


def test_the_scorer_feeds_the_window_patch_to_the_head(tmp_path: Path) -> None:
    head = _head()
    save_head(tmp_path / "glass.npz", head)
    cfg = CategoryConfig.model_validate({"head": "glass.npz", "combine": "head"})
    scorer = CategoryScorer({"glass_break": cfg}, LABELS, heads_dir=tmp_path)
    assert scorer.patch_features == {PATCH_STATS}
    emb = np.random.default_rng(5).normal(0, 1, EMBEDDING_SIZE).astype(np.float32)
    scores = np.zeros(521, np.float32)
    patch = _patch()
    with_patch = scorer.score(Window(15600, scores, emb, patch=patch))["glass_break"]
    assert with_patch == pytest.approx(head.apply(emb, scores, patch_stats(patch)), abs=1e-5)
    without = scorer.score(Window(15600, scores, emb))["glass_break"]
    assert without == pytest.approx(head.apply(emb, scores), abs=1e-5)
    assert CategoryScorer({}, LABELS).patch_features == set()


@pytest.mark.parametrize("variant", ["yamnet", "yamnet_spectra_in"])
def test_windows_carry_their_patch_when_a_head_needs_it(variant: str) -> None:
    from bench.quality import load_model
    from edge.detector import Detector

    model = load_model(require_models(), variant)  # type: ignore[arg-type]
    rng = np.random.default_rng(6)
    audio = (0.1 * rng.normal(size=PATCH_SAMPLES)).astype(np.float32)
    plain = DEFAULT_CATEGORIES["scream"]
    detector = Detector(model, {"scream": plain})
    if variant == "yamnet":
        assert not model.keep_patch
        assert model.classify(audio, PATCH_SAMPLES).patch is None
    detector = Detector(model, DEFAULT_CATEGORIES)  # the shipped glass head reads the patch
    assert detector.scorer.patch_features == {PATCH_STATS}
    window = model.classify(audio, PATCH_SAMPLES)
    assert window.patch is not None
    np.testing.assert_allclose(window.patch, LogMel().patch(audio), atol=1e-4)
    assert set(detector.scorer.score(window)) == {"scream", "gunshot", "glass_break"}


def test_block_scores_are_the_window_scores_on_real_audio() -> None:
    """`safeguard analyze` scores its windows in blocks (`CategoryScorer.score_many`), the
    daemon one at a time (`score`): the same scores on real audio through the real model
    and the shipped heads, silent windows included, and the same patch statistics."""
    from edge import decode
    from edge.analyze import window_ends
    from edge.frontend import patch_stats_many
    from edge.yamnet import Yamnet, labels_from_class_map
    from tests.helpers import AUDIO_DEV, require_shared

    models = require_models()
    labels = labels_from_class_map(models / "yamnet_class_map.csv")
    model = Yamnet(models / "yamnet_spectra_in.tflite", "yamnet_spectra_in", labels)
    scorer = CategoryScorer(DEFAULT_CATEGORIES, labels, variant=model.variant)
    stream = decode.read_all(require_shared(AUDIO_DEV / "streams" / "stream_00.flac"))
    audio = np.concatenate([stream[80 * 16000 : 100 * 16000], np.zeros(3 * 16000, np.float32)])
    windows = [
        model.classify(audio[e - PATCH_SAMPLES : e], e) for e in window_ends(len(audio), 4000)
    ]
    assert any(w.silent for w in windows)
    assert not all(w.silent for w in windows)
    one_by_one = [scorer.score(w) for w in windows]
    in_blocks = [
        s for i in range(0, len(windows), 16) for s in scorer.score_many(windows[i : i + 16])
    ]
    assert max(max(s.values()) for s in one_by_one) > 0.3  # not a stretch of zeros
    for single, block in zip(one_by_one, in_blocks, strict=True):
        assert block == pytest.approx(single, abs=1e-5)
    patches = np.stack([w.patch for w in windows if w.patch is not None])
    assert np.array_equal(patch_stats_many(patches), np.stack([patch_stats(p) for p in patches]))

"""A multinomial head (trained over fine labels) read as one class: its softmax share."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from converter.train_head import ClipWindows, clip_labels, fit_head
from edge.errors import ConfigError
from edge.heads import load_head, save_head


def _clips(rng: np.random.Generator) -> tuple[list[ClipWindows], list[str]]:
    """Four labels with their own embedding directions, a few clips each."""
    centres = rng.normal(0, 1, (4, 1024)).astype(np.float32)
    clips, labels = [], []
    for k, label in enumerate(["gunshot", "dog", "speech", "fireworks"]):
        for _ in range(5):
            emb = (centres[k] + rng.normal(0, 2.0, (6, 1024))).astype(np.float32)
            clips.append(ClipWindows(np.zeros((6, 521), np.float32), emb, np.zeros(6, np.float32)))
            labels.append(label)
    return clips, labels


def test_the_head_gives_the_softmax_share_of_its_class_and_survives_a_round_trip(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(3)
    clips, labels = _clips(rng)
    positive = np.array([lab == "gunshot" for lab in labels])
    head = fit_head(clips, positive, 0.1, labels=labels, category="gunshot")
    assert head.others is not None
    assert head.others.shape == (3, 1024)
    # the same pipeline fitted directly: predict_proba's gunshot column is the head's output
    x = np.concatenate([c.embeddings for c in clips])
    y = np.repeat(labels, 6)
    reference = make_pipeline(
        StandardScaler(), LogisticRegression(C=0.1, class_weight="balanced", max_iter=2000)
    ).fit(x, y)
    probe = (x[::7] + rng.normal(0, 3.0, x[::7].shape)).astype(np.float32)
    expected = reference.predict_proba(probe)[:, list(reference.classes_).index("gunshot")]
    scores = np.zeros((len(probe), 521), np.float32)
    many = head.apply_many(probe, scores)
    np.testing.assert_allclose(many, expected, atol=2e-4)
    one = [head.apply(row, scores[0]) for row in probe]
    np.testing.assert_allclose(one, many, atol=1e-5)
    assert many.min() < 0.5 < many.max()  # both sides, and nowhere saturated (a real test)
    assert np.all((many > 1e-6) & (many < 1 - 1e-6))
    path = tmp_path / "gunshot.npz"
    save_head(path, head)
    again = load_head(path)
    np.testing.assert_allclose(again.apply_many(probe, scores), many, atol=1e-6)
    binary = fit_head(clips, positive, 0.1)
    assert binary.others is None
    save_head(path, binary)
    assert load_head(path).others is None


def test_other_class_weights_of_the_wrong_shape_are_a_clear_error(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    clips, labels = _clips(rng)
    head = fit_head(clips, np.array([lab == "gunshot" for lab in labels]), labels=labels,
                    category="gunshot")  # fmt: skip
    path = tmp_path / "bad.npz"
    save_head(path, head)
    with np.load(path) as data:
        arrays = {k: data[k] for k in data}
    arrays["others"] = arrays["others"][:, :512]
    np.savez(path, **arrays)
    with pytest.raises(ConfigError, match=r"heads.gunshot: .* other-class weights \(3, 512\)"):
        load_head(path, key="heads.gunshot")


def test_a_negative_clip_labelled_as_the_category_stays_apart_from_the_positives() -> None:
    labels = ["gunshot", "gunshot", "cap gun", "dog"]
    positive = np.array([True, False, False, False])  # the second is a `none` clip
    classes = clip_labels(labels, positive, "gunshot")
    assert classes is not None
    assert classes.tolist() == ["gunshot", "not gunshot", "cap gun", "dog"]
    assert clip_labels(None, positive, "gunshot") is None

"""Category scoring on synthetic windows: groups, vetoes, heads, and config errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from edge.categories import DEFAULT_CATEGORIES, CategoryConfig, CategoryScorer
from edge.errors import ConfigError
from edge.heads import Head, load_head, save_head
from edge.yamnet import Window
from tests.helpers import require_models

LABELS = [f"Class {i}" for i in range(521)]
LABELS[11] = "Screaming"
LABELS[9] = "Yell"
LABELS[6] = "Shout"
LABELS[10] = "Children shouting"
LABELS[132] = "Music"
LABELS[421] = "Gunshot, gunfire"


def window(**scores: float) -> Window:
    values = np.zeros(521, np.float32)
    for name, value in scores.items():
        values[LABELS.index(name.replace("_", " "))] = value
    return Window(end=15600, scores=values, embedding=np.zeros(1024, np.float32))


def config(**fields: object) -> CategoryConfig:
    return CategoryConfig.model_validate(fields)


def test_group_score_is_its_strongest_class() -> None:
    scorer = CategoryScorer({"scream": config(classes=["Screaming", "Yell"])}, LABELS)
    assert scorer.score(window(Screaming=0.2, Yell=0.7)) == {"scream": pytest.approx(0.7)}
    assert scorer.score(window(Shout=0.9)) == {"scream": 0.0}


def test_veto_class_silences_a_look_alike_only_when_it_dominates() -> None:
    cfg = config(classes=["Screaming"], veto=["Music"], veto_ratio=2.0)
    scorer = CategoryScorer({"scream": cfg}, LABELS)
    assert scorer.score(window(Screaming=0.6, Music=0.9))["scream"] == pytest.approx(0.6)
    assert scorer.score(window(Screaming=0.3, Music=0.9))["scream"] == 0.0


def test_disabled_categories_are_not_scored_and_silence_scores_zero() -> None:
    cats = {"a": config(classes=["Yell"]), "b": config(classes=["Shout"], enabled=False)}
    scorer = CategoryScorer(cats, LABELS)
    assert scorer.categories == ["a"]
    silent = Window(15600, np.ones(521, np.float32), np.zeros(1024, np.float32), silent=True)
    assert scorer.score(silent) == {"a": 0.0}


def test_evidence_lists_the_top_classes_highest_first() -> None:
    scorer = CategoryScorer({"scream": config(classes=["Screaming"])}, LABELS)
    evidence = scorer.evidence(window(Screaming=0.9, Music=0.5, Yell=0.7), top=2)
    assert list(evidence) == ["Screaming", "Yell"]


def test_unknown_class_names_the_key_path_and_a_suggestion() -> None:
    cfg = config(classes=["Screaming", "Yell", "Screem"])
    with pytest.raises(ConfigError) as info:
        CategoryScorer({"scream": cfg}, LABELS)
    message = str(info.value)
    assert message.startswith("detection.categories.scream.classes[2]: 'Screem'")
    assert "did you mean 'Screaming'?" in message
    with pytest.raises(ConfigError, match=r"gunshot\.veto\[0\]: 'fireworks'"):
        CategoryScorer({"gunshot": config(classes=["Yell"], veto=["fireworks"])}, LABELS)


def test_config_rejects_unknown_keys_and_a_combine_without_head() -> None:
    with pytest.raises(ValidationError):
        config(classes=["Yell"], treshold=0.5)
    with pytest.raises(ValidationError, match="needs a `head`"):
        config(classes=["Yell"], combine="max")


def _head(path: Path, weight: float) -> Path:
    weights = np.zeros(1024, np.float32)
    weights[0] = weight
    head = Head.from_arrays(
        weights, 0.0, np.zeros(1024, np.float32), np.ones(1024, np.float32), np.zeros(0, np.intp)
    )
    save_head(path, head)
    return path


def test_head_scores_the_embedding_and_combines_with_the_rule(tmp_path: Path) -> None:
    _head(tmp_path / "glass.npz", 4.0)
    win = window(Screaming=0.2)
    win.embedding[0] = 1.0  # logit 4 -> sigmoid 0.982
    for combine, expected in (("head", 0.982), ("max", 0.982), ("mean", 0.591), ("rule", 0.2)):
        cfg = config(classes=["Screaming"], head="glass.npz", combine=combine)
        scorer = CategoryScorer({"x": cfg}, LABELS, heads_dir=tmp_path)
        assert scorer.score(win)["x"] == pytest.approx(expected, abs=1e-3)


def test_bad_head_files_raise_config_errors_naming_the_key(tmp_path: Path) -> None:
    cfg = config(classes=["Yell"], head="missing.npz", combine="max")
    with pytest.raises(ConfigError, match=r"detection\.categories\.x\.head: cannot read"):
        CategoryScorer({"x": cfg}, LABELS, heads_dir=tmp_path)
    np.savez(tmp_path / "junk.npz", weights=np.zeros(3))
    with pytest.raises(ConfigError, match="not a head file"):
        load_head(tmp_path / "junk.npz")
    (tmp_path / "text.npz").write_text("not an archive\n")
    with pytest.raises(ConfigError, match=r"not a head file \(not an \.npz archive\)"):
        load_head(tmp_path / "text.npz")


def test_default_categories_name_real_yamnet_classes() -> None:
    from edge.yamnet import labels_from_model

    labels = labels_from_model(require_models() / "yamnet.tflite")
    scorer = CategoryScorer(DEFAULT_CATEGORIES, labels)
    assert set(scorer.categories) == {"scream", "gunshot", "glass_break"}


def test_a_head_of_the_other_model_variant_is_named_in_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The shipped heads are trained on the default model's embeddings; the waveform model's
    are close enough to use them (test_detection_clips), but the user is told to retrain."""
    from edge.yamnet import labels_from_model

    labels = labels_from_model(require_models() / "yamnet.tflite")
    CategoryScorer(DEFAULT_CATEGORIES, labels, variant="yamnet_spectra_in")
    assert "trained on" not in caplog.text
    CategoryScorer(DEFAULT_CATEGORIES, labels, variant="yamnet")
    assert "detection.categories.glass_break.head was trained on yamnet_spectra_in" in caplog.text
    assert "train-head --variant yamnet" in caplog.text

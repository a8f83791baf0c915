"""Head training on a small slice of the real dev clips, through the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from converter.cli import main
from converter.train_head import TrainError, find_examples, recording_group
from edge.heads import load_head
from tests.helpers import AUDIO_DEV, require_models, require_shared


def _slice(tmp_path: Path, per_category: int) -> Path:
    """A labels.csv pointing at `per_category` clips of each category of audio-dev."""
    labels = require_shared(AUDIO_DEV / "labels.csv")
    with labels.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    picked: list[dict[str, str]] = []
    for category in ("glass_break", "none", "gunshot"):
        of_category = [r for r in rows if r["category"] == category]
        step = max(1, len(of_category) // per_category)  # spread over recordings
        picked += of_category[::step][:per_category]
    out = tmp_path / "labels.csv"
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["file", "category"])
        writer.writeheader()
        for row in picked:
            writer.writerow({"file": str(AUDIO_DEV / row["file"]), "category": row["category"]})
    return out


def test_train_head_cli_writes_a_head_that_loads_and_separates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = require_models()
    data = _slice(tmp_path, 16)
    out = tmp_path / "heads" / "glass_break.npz"
    code = main(
        [
            "train-head", "--kind", "audio", "--data", str(data), "--category", "glass_break",
            "--out", str(out), "--models", str(models), "--hop", "0.5", "--folds", "3",
        ]
    )  # fmt: skip
    assert code == 0
    head = load_head(out)
    report = head.metadata
    assert report["category"] == "glass_break"
    assert report["folds"] == 3
    assert report["cv"]["auc"] >= 0.8, report  # out-of-fold, grouped by recording
    assert "train-head" in report["command"]
    card = out.with_suffix(".md").read_text()
    assert "Reproduce" in card
    assert "safeguard-convert train-head" in card
    assert "cross-validated clip AUC" in capsys.readouterr().out
    probability = head.apply(np.zeros(1024, np.float32), np.zeros(521, np.float32))
    assert 0.0 <= probability <= 1.0
    assert json.loads(json.dumps(report)) == report


def test_clear_errors_for_empty_folders_and_too_few_examples(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TrainError, match=r"no labels\.csv and no audio files"):
        find_examples(empty)
    models = require_models()
    data = _slice(tmp_path, 3)
    args = ["train-head", "--data", str(data), "--category", "glass_break"]
    args += ["--out", str(tmp_path / "x.npz"), "--models", str(models)]
    assert main(args) == 1
    assert "too few examples: 3 clip(s) of 'glass_break'" in capsys.readouterr().err
    assert main([*args[:4], "scream", *args[5:]]) == 1
    assert "no clip of category 'scream'" in capsys.readouterr().err


def test_recording_groups_keep_chunks_of_one_recording_together() -> None:
    assert recording_group("clips/esc50_subset__audio__2-103426-A-3.flac") == "esc50:103426"
    assert recording_group("clips/esc50_subset__audio__2-103426-B-3.flac") == "esc50:103426"
    a = recording_group("x__Glass_Breaking.glass.cbor.5s48f1sm.ingestion-6d-rr4b8_chunk1.wa.flac")
    b = recording_group("x__Glass_Breaking.glass.cbor.5s48f1sm.ingestion-6d-rr4b8_chunk2.wa.flac")
    assert a == b
    assert recording_group("gunshots__AK-12__3_11_.flac") == recording_group(
        "gunshots__AK-12__3_2_"
    )
    assert recording_group("damm_0.flac") == recording_group("damm_7.flac") == "damm"

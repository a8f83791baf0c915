"""Head training on a small slice of the real dev clips, through the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from converter.cli import gain_range, main
from converter.train_head import TrainError, extract, find_examples, recording_group
from edge.categories import DEFAULT_CATEGORIES
from edge.heads import load_head
from tests.helpers import AUDIO_DEV, require_models, require_shared


def _slice(tmp_path: Path, per_category: int, *, fine_labels: bool = False) -> Path:
    """A labels.csv pointing at `per_category` clips of each category of audio-dev (with
    `fine_labels`, also their `label` column: speech, dog, background...)."""
    labels = require_shared(AUDIO_DEV / "labels.csv")
    with labels.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    picked: list[dict[str, str]] = []
    for category in ("glass_break", "none", "gunshot"):
        of_category = [r for r in rows if r["category"] == category]
        step = max(1, len(of_category) // per_category)  # spread over recordings
        picked += of_category[::step][:per_category]
    out = tmp_path / "labels.csv"
    columns = ["file", "category", *(["label"] if fine_labels else [])]
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        for row in picked:
            fields = {**row, "file": str(AUDIO_DEV / row["file"])}
            writer.writerow({k: fields[k] for k in columns})
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
            "--augment", "1",
        ]
    )  # fmt: skip
    assert code == 0
    head = load_head(out)
    report = head.metadata
    assert report["gain_db"] == [-30.0, 0.0]  # glass_break's default, as shipped
    # a mixed copy of each glass clip, a quiet copy of each other clip
    assert report["clips"]["augmented"] == 16 + 32
    assert report["category"] == "glass_break"
    assert report["folds"] == 3
    assert report["cv"]["auc"] >= 0.8, report  # out-of-fold, grouped by recording
    assert "train-head" in report["command"]
    card = out.with_suffix(".md").read_text()
    assert "Reproduce" in card
    assert "safeguard-convert train-head" in card
    assert "at a random gain of -30 to 0 dB" in card
    assert "cross-validated clip AUC" in capsys.readouterr().out
    probability = head.apply(np.zeros(1024, np.float32), np.zeros(521, np.float32))
    assert 0.0 <= probability <= 1.0
    assert json.loads(json.dumps(report)) == report
    assert head.patch_features == "logmel-stats-1"  # glass_break's default, as shipped
    assert head.inputs == 1024 + 240


def test_patch_features_can_be_chosen_for_any_category(tmp_path: Path) -> None:
    models = require_models()
    data = _slice(tmp_path, 12)
    common = ["--data", str(data), "--models", str(models), "--hop", "0.5", "--folds", "3"]
    gunshot, glass = tmp_path / "gunshot.npz", tmp_path / "glass_break.npz"
    assert main(["train-head", *common, "--category", "gunshot", "--out", str(gunshot),
                 "--patch-features", "logmel-stats-1"]) == 0  # fmt: skip
    assert main(["train-head", *common, "--category", "glass_break", "--out", str(glass),
                 "--patch-features", "none"]) == 0  # fmt: skip
    assert load_head(gunshot).patch_features == "logmel-stats-1"
    assert load_head(gunshot).metadata["patch_bias"] == load_head(gunshot).patch_bias
    assert load_head(glass).patch_features == ""
    assert load_head(glass).inputs == 1024


def test_gunshot_heads_are_a_softmax_over_the_fine_labels_unless_told_otherwise(
    tmp_path: Path,
) -> None:
    models = require_models()
    data = _slice(tmp_path, 12, fine_labels=True)
    common = ["--data", str(data), "--models", str(models), "--hop", "0.5", "--folds", "3"]
    softmax, binary = tmp_path / "gunshot.npz", tmp_path / "binary.npz"
    assert main(["train-head", *common, "--category", "gunshot", "--out", str(softmax)]) == 0
    assert main(["train-head", *common, "--category", "gunshot", "--out", str(binary),
                 "--no-by-label"]) == 0  # fmt: skip
    head = load_head(softmax)
    with (AUDIO_DEV / "labels.csv").open(newline="") as handle:
        fine = {r["label"] for r in csv.DictReader(handle) if r["category"] != "gunshot"}
    others = head.metadata["by_label"]
    assert set(others) <= fine, others
    assert {"background", "glass_break"} <= set(others), others
    assert head.others is not None
    assert head.others.shape == (len(others), 1024)
    assert head.metadata["C"] == 0.1  # a softmax's default C
    assert head.metadata["cv"]["auc"] >= 0.8, head.metadata
    assert "one softmax (multinomial logistic regression)" in softmax.with_suffix(".md").read_text()
    plain = load_head(binary)
    assert plain.others is None
    assert plain.metadata["by_label"] is None
    assert plain.metadata["C"] == 0.01
    # the share is a probability, and the two heads agree on which clips are gunshots
    clips = extract(find_examples(data), models, hop_s=0.5)
    truth = np.array([e.category == "gunshot" for e in find_examples(data)])
    best = {
        name: np.array([h.apply_many(c.embeddings, c.scores).max() for c in clips])
        for name, h in (("softmax", head), ("binary", plain))
    }
    for scores in best.values():
        assert np.all((scores >= 0) & (scores <= 1))
        assert scores[truth].min() > np.median(scores[~truth])  # trained on these: separated


def test_gain_copies_are_quiet_copies_of_threats_and_of_every_other_clip(tmp_path: Path) -> None:
    models = require_models()
    examples = [e for e in find_examples(_slice(tmp_path, 2)) if e.category != "gunshot"]
    assert [e.category for e in examples] == ["glass_break"] * 2 + ["none"] * 2
    plain = extract(examples, models, hop_s=0.5, augment=1, augment_categories={"glass_break"})
    quiet = extract(examples, models, hop_s=0.5, augment=1, augment_categories={"glass_break"},
                    gain_db=(-30.0, -20.0))  # fmt: skip
    assert len(plain) == 4 + 2
    assert len(quiet) == 4 + 2 + 2
    assert [c.source for c in quiet[4:]] == [0, 1, 2, 3]
    loudest = [float(c.level_db.max()) for c in quiet]
    for copy, source in ((4, 0), (5, 1)):  # mixed at 0-20 dB SNR (at most +3 dB), then quieter
        assert loudest[copy] <= loudest[source] - 17
        assert loudest[copy] < float(plain[copy].level_db.max()) - 19.9
    for copy, source in ((6, 2), (7, 3)):  # the other clips, only scaled
        assert -30.01 <= loudest[copy] - loudest[source] <= -19.99
    assert np.array_equal(quiet[0].embeddings, plain[0].embeddings)  # originals untouched


def test_gain_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert gain_range("none") is None
    assert gain_range("-40,-10") == (-40.0, -10.0)
    with pytest.raises(SystemExit):
        main(["train-head", "--data", "x", "--category", "c", "--out", "h.npz", "--gain=-5,6"])
    assert "a gain above 0 dB would clip" in capsys.readouterr().err
    models = require_models()
    data = _slice(tmp_path, 12)
    args = ["train-head", "--data", str(data), "--category", "glass_break", "--models", str(models)]
    assert main([*args, "--out", str(tmp_path / "g.npz"), "--gain=-20,0"]) == 1  # nothing to scale
    assert "--gain scales the --augment copies" in capsys.readouterr().err
    assert not (tmp_path / "g.npz").exists()


def test_bench_quality_takes_the_shipped_gains_unless_told() -> None:
    import argparse

    from bench.quality import gains

    parser = argparse.ArgumentParser()
    assert gains(DEFAULT_CATEGORIES, [], parser) == {
        "scream": None, "gunshot": None, "glass_break": (-30.0, 0.0)
    }  # fmt: skip
    told = gains(DEFAULT_CATEGORIES, ["glass_break=none", "scream=-20,-5"], parser)
    assert told["glass_break"] is None
    assert told["scream"] == (-20.0, -5.0)
    with pytest.raises(SystemExit):
        gains(DEFAULT_CATEGORIES, ["siren=-10,0"], parser)


def test_bench_quality_trains_the_shipped_softmax_heads_unless_told() -> None:
    import argparse

    from bench.quality import by_label_categories, main

    with pytest.raises(SystemExit):  # an unknown category is a usage error, before any work
        main(["--by-label", "siren", "--no-peers"])
    assert by_label_categories("none") == frozenset()
    assert by_label_categories("gunshot,scream") == {"gunshot", "scream"}
    with pytest.raises(argparse.ArgumentTypeError, match="not a category: siren"):
        by_label_categories("gunshot,siren")


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


@pytest.mark.parametrize(
    ("variant", "file"),
    [("yamnet_spectra_in", "yamnet_class_map.csv"), ("yamnet", "yamnet.tflite")],
)
def test_missing_models_say_which_file_is_missing_where_and_how_to_fetch_it(
    variant: str, file: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _slice(tmp_path, 3)
    empty = tmp_path / "no models"
    empty.mkdir()
    args = ["train-head", "--data", str(data), "--category", "gunshot", "--variant", variant]
    assert main([*args, "--out", str(tmp_path / "h.npz"), "--models", str(empty)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("safeguard-convert: "), err
    assert f"no {file} in {empty}; get the models with " in err
    assert f"`safeguard models fetch --dir '{empty}'`" in err
    assert err.count("\n") == 1, err


def test_an_output_folder_that_cannot_be_made_fails_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    in_the_way = tmp_path / "a_file"
    in_the_way.write_text("")
    out = in_the_way / "heads" / "h.npz"
    args = ["train-head", "--data", str(tmp_path / "nothing"), "--category", "gunshot"]
    assert main([*args, "--out", str(out), "--models", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"--out {out}: cannot create its folder" in err
    assert f"({in_the_way} is a file, not a folder)" in err


def test_labels_naming_missing_clips_fail_before_any_work(tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text(f"file,category\n{tmp_path}/gone.wav,gunshot\n{tmp_path},none\n")
    with pytest.raises(TrainError, match=r"names 2 clip\(s\) that are missing or not files"):
        find_examples(labels)


@pytest.mark.parametrize(
    ("option", "value"),
    [("--hop", "0"), ("--c", "-1"), ("--target-fp", "1.5"), ("--target-fp", "-0.1")],
)
def test_out_of_range_options_are_usage_errors(
    option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["train-head", "--data", "x", "--category", "c", "--out", "h.npz", option, value])
    assert exit_.value.code == 2
    assert f"error: argument {option}: '{value}' is not" in capsys.readouterr().err


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

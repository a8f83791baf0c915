"""`safeguard-convert train-head --kind video` on a small slice of the real dev clips."""

from __future__ import annotations

import csv
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from converter import train_video_head
from converter.cli import main
from edge.video import FEATURES, load_video_head
from tests.helpers import ROOT, VIDEO_DEV, require_models, require_shared

CLI = Path(sys.executable).with_name("safeguard-convert")


def _slice(tmp_path: Path, per_category: int = 6) -> Path:
    """A labels.csv naming `per_category` violence and none clips of video-dev (absolute paths),
    spread over the recordings so that every clip is a group of its own."""
    labels = require_shared(VIDEO_DEV / "labels.csv")
    with labels.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    out = tmp_path / "labels.csv"
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["file", "category"])
        writer.writeheader()
        for category in ("violence", "none"):
            of_category = [r for r in rows if r["category"] == category]
            for row in of_category[:: len(of_category) // per_category][:per_category]:
                writer.writerow({"file": str(VIDEO_DEV / row["file"]), "category": category})
    return out


def test_train_head_video_writes_a_head_recording_its_command_and_params(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    models = require_models()
    data = _slice(tmp_path)
    monkeypatch.setattr(train_video_head, "CACHE", tmp_path / "cache")
    out = tmp_path / "heads" / "violence.npz"
    options = [
        "--data", str(data), "--models", str(models), "--folds", "3", "--c", "0.01",
        "--flow-weight", "3", "--window", "8", "--no-mirror",
    ]  # fmt: skip
    argv = ["train-head", "--kind", "video", *options, "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    copies = "zoomed 1.3x training copies"  # the default; --no-mirror leaves the mirrored ones out
    assert f"cross-validated (3 grouped folds, 12 clips, {copies}): {{'roc_auc'" in printed
    assert f"wrote {out} (C=0.01, flow weight=3.0)" in printed
    head = load_video_head(out)
    assert head.weights.shape == (FEATURES,)
    assert (head.window, head.stride) == (8, 2)
    meta = head.metadata
    assert meta["command"] == "safeguard-convert " + shlex.join(argv)
    assert meta["category"] == "violence"
    assert meta["training_data"] == f"{data} (6 violence, 6 none)"
    assert meta["params"] == {
        "fps": 8.0, "width": 320, "window": 8, "stride": 2, "c": 0.01, "flow_weight": 3.0,
        "mirror": False, "zoom": 1.3,
    }  # fmt: skip
    assert set(meta["cv"]) == {"roc_auc", "threshold", "recall", "flagged_negatives"}
    assert head.threshold == meta["cv"]["threshold"]

    # the former entry point is the same command (features now cached, so this is quick)
    again = tmp_path / "again.npz"
    assert train_video_head.main([*options, "--out", str(again)]) == 0
    alias = load_video_head(again)
    assert alias.metadata["command"].startswith("safeguard-convert train-head --kind video --data")
    np.testing.assert_array_equal(alias.weights, head.weights)


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--kind", "video", "--category", "scream"], "--category"),
        (["--kind", "video", "--hop", "0.5"], "--hop"),
        (["--kind", "video", "--limit", "5"], "--limit"),
        (["--category", "scream", "--out", "x.npz", "--flow-weight", "3"], "--flow-weight"),
        (["--kind", "audio", "--category", "scream", "--out", "x.npz", "--no-mirror"], "--mirror"),
    ],
)
def test_an_option_of_the_other_kind_is_a_usage_error(
    args: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["train-head", "--data", "x", *args])
    assert exit_.value.code == 2
    assert f"error: argument {flag}" in capsys.readouterr().err


def test_audio_still_requires_its_options_and_one_c(capsys: pytest.CaptureFixture[str]) -> None:
    for args, message in [
        ([], "required with --kind audio: --category, --out"),
        (["--category", "scream", "--out", "x.npz", "--c", "0.1", "1"], "takes one value"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            main(["train-head", "--data", "x", *args])
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err


def test_the_installed_command_exits_2_on_mixed_kinds() -> None:
    run = subprocess.run(
        [str(CLI), "train-head", "--kind", "video", "--data", "x", "--category", "scream"],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert "argument --category: only with --kind audio" in run.stderr


def test_missing_labels_clips_or_models_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _slice(tmp_path)
    absent = tmp_path / "absent.csv"
    absent.write_text(f"file,category\n{tmp_path / 'nothing.mp4'},violence\n")
    video = ["train-head", "--kind", "video", "--out", str(tmp_path / "h.npz")]
    cases = [
        (["--data", str(tmp_path / "empty")], "cannot read"),
        (["--data", str(absent)], "names 1 missing clip(s), the first "),
        (
            ["--data", str(data), "--models", str(tmp_path)],
            "model mobilenet_v1_embedding is missing: no "
            f"mobilenet_v1_1.0_224_quant_embedding_extractor.tflite in {tmp_path}; get the models "
            f"with `safeguard models fetch --dir {tmp_path}`",
        ),
    ]
    (tmp_path / "empty").mkdir()
    for args, message in cases:
        assert main([*video, *args]) == 1
        err = capsys.readouterr().err
        assert err.startswith("safeguard-convert: ")
        assert message in err
        assert err.count("\n") == 1, err


@pytest.mark.parametrize(
    ("option", "value"),
    [("--fps", "0"), ("--width", "0"), ("--window", "-2"), ("--stride", "1.5"),
     ("--flow-weight", "0"), ("--max-fp", "1")],
)  # fmt: skip
def test_out_of_range_video_options_are_usage_errors(
    option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["train-head", "--kind", "video", "--data", "x", option, value])
    assert exit_.value.code == 2
    assert f"error: argument {option}: '{value}' is not" in capsys.readouterr().err


def test_an_output_folder_that_cannot_be_made_fails_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    in_the_way = tmp_path / "a_file"
    in_the_way.write_text("")
    out = in_the_way / "violence.npz"
    args = ["--data", str(tmp_path / "nothing"), "--out", str(out)]
    assert main(["train-head", "--kind", "video", *args]) == 1
    err = capsys.readouterr().err
    assert f"--out {out}: cannot create its folder {in_the_way} ({in_the_way} is a file" in err
    assert err.count("\n") == 1, err


def test_zoomed_copies_see_the_centre_of_the_picture_at_full_size(
    capsys: pytest.CaptureFixture[str],
) -> None:
    frame = np.zeros((120, 160, 3), np.uint8)
    frame[30:90, 40:120] = 200  # the centre half in each direction
    zoomed = train_video_head.zoom_in(frame, 2.0)
    assert zoomed.shape == frame.shape
    assert zoomed.dtype == np.uint8
    assert zoomed[2:-2, 2:-2].min() == 200  # the centre now fills the picture
    assert np.array_equal(train_video_head.zoom_in(frame, 1.0), frame)
    with pytest.raises(SystemExit):
        main(["train-head", "--kind", "video", "--data", "x", "--zoom", "0.7"])
    assert "'0.7' is not a zoom factor from 1 to 4" in capsys.readouterr().err

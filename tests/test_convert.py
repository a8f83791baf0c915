"""`safeguard-convert convert`: real models, real dev data, both TFLite runtimes.

The CLI runs as a subprocess (TensorFlow stays out of the test process); every run has a
timeout. The tflite_runtime 2.14 environment is `.venv-tflite` (`make tflite-venv`).
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from converter.cli import main
from converter.modelio import legacy_config
from converter.repdata import Clip, DataError, find_clips, split
from tests.helpers import AUDIO_DEV, ROOT, SHARED_MODELS, VIDEO_DEV, require_shared

CLI = Path(sys.executable).with_name("safeguard-convert")
TFLITE_PYTHON = ROOT / ".venv-tflite" / "bin" / "python"
TIMEOUT_S = 240

BUILD_LOGMEL_MODEL = """
import sys
import keras
keras.utils.set_random_seed(0)
x = keras.Input((96, 64))
y = keras.layers.Reshape((96, 64, 1))(x)
y = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(y)
y = keras.layers.MaxPooling2D(2)(y)
y = keras.layers.GlobalAveragePooling2D()(y)
y = keras.layers.Dense(4, activation="softmax")(y)
keras.Model(x, y).save(sys.argv[1])
"""

BUILD_CUSTOM_LAYER_MODEL = """
import sys
import keras
class Mystery(keras.layers.Layer):
    def call(self, x):
        return x * 2.0
x = keras.Input((96, 64))
y = keras.layers.Dense(1)(keras.layers.Flatten()(Mystery()(x)))
keras.Model(x, y).save(sys.argv[1])
"""


def _tflite_python() -> Path:
    if not TFLITE_PYTHON.is_file():
        pytest.fail(f"{TFLITE_PYTHON} is missing: run `make tflite-venv`", pytrace=False)
    return TFLITE_PYTHON


def _convert(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return _cli(*args, "--tflite-python", _tflite_python())


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """`safeguard-convert convert ARGS`, as the user runs it."""
    command = [str(CLI), "convert", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)


def _slice(source: Path, dest: Path, per_category: int) -> Path:
    """A labels.csv in `dest` listing the first files of each category of `source`."""
    with (require_shared(source) / "labels.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    seen: dict[str, int] = {}
    kept = []
    for row in rows:
        seen[row["category"]] = seen.get(row["category"], 0) + 1
        if seen[row["category"]] <= per_category:
            kept.append({"file": str(source / row["file"]), "category": row["category"]})
    dest.mkdir(parents=True, exist_ok=True)
    with (dest / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["file", "category"])
        writer.writeheader()
        writer.writerows(kept)
    return dest


def _check_runtimes(report: dict[str, Any]) -> None:
    """Both runtimes loaded the output, ran the held-out inputs and agree."""
    litert, tflite = report["runtimes"]["ai_edge_litert"], report["runtimes"]["tflite_runtime"]
    assert tflite["version"] == "2.14.0", tflite
    assert tflite["numpy"].startswith("1."), tflite
    for info in (litert, tflite):
        assert info["input"]["dtype"] == "int8", info
        assert info["output"]["dtype"] == "int8", info
        assert 0 < info["ms_per_inference"] < 5000, info
    scale = litert["output"]["quantization"][0]
    assert report["runtime_agreement_max_abs_diff"] <= scale + 1e-6


def test_third_party_h5_converts_to_int8_with_parity_report(tmp_path: Path) -> None:
    model = require_shared(SHARED_MODELS / "third_party" / "fight_3dcnn_ubifights.h5")
    data = _slice(VIDEO_DEV, tmp_path / "data", per_category=6)
    out = tmp_path / "out" / "fight.tflite"
    done = _convert(model, "--rep-data", data, "--out", out, "--holdout", "0.34")
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.with_suffix(".json").read_text())
    assert out.with_suffix(".md").read_text().startswith("# Conversion parity: fight.tflite")
    parity = report["parity"]
    assert parity["clips"] == 4  # 2 held-out files per category, none calibrated on
    assert report["representative"]["files"] == 8
    assert report["representative"]["kind"] == "clip"
    # Conv3D and MaxPooling3D became 2D builtins; the int8 output follows the float one.
    assert {"conv3d", "max_pooling3d", "conv3d_1", "max_pooling3d_1"} <= set(
        report["rewritten_layers"]
    )
    assert parity["max_abs_diff"] < 0.02, parity
    assert parity["mean_abs_diff"] < 0.01, parity
    auc = parity["auc"]
    assert auc["positive"] == "violence"
    assert 0.0 <= auc["float"] <= 1.0
    assert 0.0 <= auc["int8"] <= 1.0
    assert report["size_bytes"]["int8"] < report["size_bytes"]["float"] / 2
    _check_runtimes(report)


def test_small_keras_model_converts(tmp_path: Path) -> None:
    model = tmp_path / "logmel.keras"
    _build(BUILD_LOGMEL_MODEL, model)
    data = _slice(AUDIO_DEV, tmp_path / "data", per_category=5)
    out = tmp_path / "logmel.tflite"
    done = _convert(
        model,
        "--rep-data",
        data,
        "--out",
        out,
        "--holdout",
        "0.4",
        "--positive",
        "scream",
        "--positive-index",
        "3",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["representative"]["kind"] == "logmel"
    assert report["rewritten_layers"] == []
    parity = report["parity"]
    assert parity["clips"] == 8
    assert parity["max_abs_diff"] < 0.05, parity
    assert parity["top1_agreement"] >= 0.8, parity
    assert parity["auc"]["positive"] == "scream"
    _check_runtimes(report)


def _build(script: str, out: Path) -> None:
    """A small Keras model saved to `out` by `script`, in its own process (TensorFlow)."""
    subprocess.run(
        [sys.executable, "-c", script, str(out)], check=True, capture_output=True, timeout=TIMEOUT_S
    )


def _fails(done: subprocess.CompletedProcess[str], expected: str) -> None:
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr
    assert lines[-1].startswith("safeguard-convert: "), done.stderr
    assert expected in lines[-1], lines[-1]


def test_clear_errors(tmp_path: Path) -> None:
    h5 = require_shared(SHARED_MODELS / "third_party" / "fight_3dcnn_ubifights.h5")
    out = tmp_path / "x.tflite"
    empty = tmp_path / "empty"
    empty.mkdir()
    _fails(_convert(h5, "--rep-data", empty, "--out", out), "no audio or video files")
    few = _slice(VIDEO_DEV, tmp_path / "few", per_category=2)
    _fails(_convert(h5, "--rep-data", few, "--out", out), "too few examples of class")
    audio = _slice(AUDIO_DEV, tmp_path / "audio", per_category=4)
    half = ("--holdout", "0.5")
    _fails(_convert(h5, "--rep-data", audio, "--out", out, *half), "the model takes video")
    custom = tmp_path / "custom.keras"
    _build(BUILD_CUSTOM_LAYER_MODEL, custom)
    _fails(
        _convert(custom, "--rep-data", audio, "--out", out, *half), "unsupported layer 'Mystery'"
    )
    logmel = tmp_path / "logmel.keras"
    _build(BUILD_LOGMEL_MODEL, logmel)
    _fails(
        _convert(logmel, "--rep-data", audio, "--out", out, *half, "--positive-index", "4"),
        "--positive-index 4: the model has 4 output(s), 0 to 3",
    )
    assert not out.exists()


def test_a_file_that_is_not_a_model_is_a_one_line_error(tmp_path: Path) -> None:
    audio = _slice(AUDIO_DEV, tmp_path / "audio", per_category=4)
    wav = next(AUDIO_DEV.glob("clips/*.*"))
    fake_h5, fake_keras = tmp_path / "fake.h5", tmp_path / "fake.keras"
    shutil.copy(wav, fake_h5)
    shutil.copy(wav, fake_keras)
    no_config = tmp_path / "no_config.keras"
    with zipfile.ZipFile(no_config, "w") as archive:
        archive.writestr("hello.txt", "not a model")
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "saved_model.pb").write_bytes(b"not a protocol buffer")
    cases = [
        (fake_h5, f"{fake_h5}: not a valid Keras HDF5 (.h5) model file (no HDF5 signature)"),
        (fake_keras, f"{fake_keras}: not a valid Keras (.keras) model file (not a zip archive)"),
        (no_config, f"{no_config}: not a valid Keras (.keras) model file"),
        (saved, f"{saved}: not a valid SavedModel"),
    ]
    out = tmp_path / "o.tflite"
    for model, expected in cases:
        _fails(_cli(model, "--rep-data", audio, "--out", out, "--holdout", "0.5"), expected)
    assert not out.exists()


@pytest.mark.parametrize(
    ("option", "value"),
    [("--holdout", "1.5"), ("--holdout", "-0.2"), ("--holdout", "0"), ("--per-clip", "0"),
     ("--fps", "0"), ("--min-per-class", "0")],
)  # fmt: skip
def test_out_of_range_options_are_usage_errors(
    option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["convert", "m.h5", "--rep-data", "data", "--out", "o.tflite", option, value])
    assert exit_.value.code == 2
    assert f"error: argument {option}: '{value}' is not" in capsys.readouterr().err


def test_too_few_files_says_what_to_change() -> None:
    clips = [Clip(Path(f"{i}.wav"), "scream") for i in range(4)]
    with pytest.raises(DataError, match=r"--holdout 0.1 holds out 0; need at least 2 held") as e:
        split(clips, 0.1, 2)
    assert str(e.value).endswith("use --holdout from 0.5 to 0.75, or add files of 'scream'")
    with pytest.raises(DataError, match=r"2 files, .*: add 1 or more files of 'scream'$"):
        split(clips[:2], 0.5, 2)
    with pytest.raises(DataError, match=r"add files, or change --holdout$"):
        split([Clip(Path("a.wav"), "")], 0.5, 2)


def test_an_output_that_cannot_be_written_fails_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    in_the_way = tmp_path / "a_file"
    in_the_way.write_text("")
    folder = tmp_path / "folder.tflite"
    folder.mkdir()
    cases = [
        (in_the_way / "sub" / "o.tflite", f"({in_the_way} is a file, not a folder)"),
        (folder, f"--out {folder}: is a folder; give a file name"),
    ]
    for out, expected in cases:
        # the model and data are never looked at: the output is checked first
        args = ["convert", str(tmp_path / "m.h5"), "--rep-data", str(tmp_path), "--out", str(out)]
        assert main(args) == 1
        err = capsys.readouterr().err
        assert err.startswith("safeguard-convert: --out "), err
        assert expected in err, err
        assert err.count("\n") == 1, err


def test_an_unreadable_labels_csv_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_bytes(b"file,category\n\xff\xfe\x00binary")
    with pytest.raises(DataError, match=r"labels.csv: cannot read it as a CSV file"):
        find_clips(tmp_path)


def test_legacy_keras2_config_is_rewritten() -> None:
    config = {
        "class_name": "Sequential",
        "config": {
            "layers": [
                {"class_name": "InputLayer", "config": {"batch_input_shape": [None, 8, 8, 3]}},
                {"class_name": "DepthwiseConv2D", "config": {"kernel_size": [3, 3], "groups": 1}},
                {"class_name": "LSTM", "config": {"units": 4, "time_major": False}},
            ]
        },
    }
    layers = legacy_config(config)["config"]["layers"]
    assert layers[0]["config"] == {"batch_shape": [None, 8, 8, 3]}
    assert layers[1]["config"] == {"kernel_size": [3, 3]}
    assert layers[2]["config"] == {"units": 4}

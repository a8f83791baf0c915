"""`safeguard-convert convert MODEL --rep-data DIR --out OUT.tflite`: load, calibrate on
the representative files, convert to int8, and write the parity report beside the output."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np

from converter import repdata
from converter.cli import check_out, fraction, positive, positive_int

log = logging.getLogger(__name__)


def add_parser(sub: Any) -> None:
    cmd = sub.add_parser("convert", help="Keras / SavedModel -> full-integer int8 TFLite")
    cmd.add_argument("model", type=Path, help=".keras, Keras 2 .h5, or a SavedModel folder")
    cmd.add_argument(
        "--rep-data",
        type=Path,
        required=True,
        help="audio or video files (labels.csv or per-category subfolders)",
    )
    cmd.add_argument("--out", type=Path, required=True, help="the .tflite to write")
    cmd.add_argument(
        "--holdout",
        type=fraction,
        default=0.3,
        help="fraction of files per category kept out of calibration for parity",
    )
    cmd.add_argument(
        "--min-per-class",
        type=positive_int,
        default=2,
        help="held-out files each labelled category needs at least",
    )
    cmd.add_argument("--limit", type=int, default=0, help="use at most N files per category")
    cmd.add_argument("--per-clip", type=positive_int, default=2, help="inputs taken from each file")
    cmd.add_argument("--fps", type=positive, default=8.0, help="video frames sampled per second")
    cmd.add_argument("--rgb", action="store_true", help="video models that take RGB, not BGR")
    cmd.add_argument("--positive", help="the category an output scores (for ROC AUC)")
    cmd.add_argument("--positive-index", type=int, default=0, help="the output it scores")
    cmd.add_argument(
        "--tflite-python",
        type=Path,
        help="python of a tflite_runtime environment (default .venv-tflite)",
    )


def _limit(clips: list[repdata.Clip], limit: int) -> list[repdata.Clip]:
    if limit <= 0:
        return clips
    seen: dict[str, int] = {}
    kept = []
    for clip in clips:
        seen[clip.category] = seen.get(clip.category, 0) + 1
        if seen[clip.category] <= limit:
            kept.append(clip)
    return kept


def _predict(model: Any, inputs: np.ndarray[Any, Any], batch: int = 8) -> Any:
    parts = [model.predict(inputs[i : i + batch]) for i in range(0, len(inputs), batch)]
    return np.concatenate(parts).astype(np.float32)


def run(args: argparse.Namespace) -> int:
    from converter import convert, modelio, parity

    convert.quiet_tensorflow()
    if args.out.suffix != ".tflite":
        raise repdata.DataError(f"--out {args.out}: expected a .tflite path")
    check_out(args.out)
    clips = _limit(repdata.find_clips(args.rep_data), args.limit)
    rep_clips, held_clips = repdata.split(clips, args.holdout, args.min_per_class)
    model = modelio.load(args.model)
    shape = model.input_shape
    repdata.kind_of(shape)
    pre = repdata.Preprocess(fps=args.fps, per_clip=args.per_clip, rgb=args.rgb)
    rep = repdata.load(rep_clips, shape, pre)
    held = repdata.load(held_clips, shape, pre)
    log.info(
        "%d representative inputs from %d files, %d held out from %d files",
        len(rep.inputs),
        len(rep_clips),
        len(held.inputs),
        len(held_clips),
    )
    try:
        float_out = _predict(model, held.inputs)
    except Exception as exc:  # noqa: BLE001 - shape errors come in many TF/Keras kinds
        raise modelio.ModelLoadError(
            f"{args.model}: the model does not take the data's inputs {list(shape)} ({exc})"
        ) from None
    outputs = float_out.shape[1]
    if not 0 <= args.positive_index < outputs:
        raise repdata.DataError(
            f"--positive-index {args.positive_index}: the model has {outputs} output(s), "
            f"0 to {outputs - 1}"
        )
    converted = convert.convert(model, rep)
    args.out.write_bytes(converted.tflite)
    result = parity.report(
        args.model,
        args.out,
        float_out,
        held,
        parity.default_runtimes(args.tflite_python),
        args.positive,
        args.positive_index,
    )
    result["representative"] = {
        "inputs": len(rep.inputs),
        "files": len(rep_clips),
        "kind": repdata.kind_of(shape),
        "fps": args.fps,
        "rgb": args.rgb,
    }
    result["rewritten_layers"] = converted.rewritten
    as_json, as_md = parity.write(result, args.out)
    print(f"wrote {args.out}, {as_json} and {as_md}")
    print(parity.markdown(result), end="")
    return 0

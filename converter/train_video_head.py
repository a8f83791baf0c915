"""Train the violence head on labelled clips (nested grouped cross-validation, numpy head file).

    safeguard-convert train-head --kind video --data ../shared/data/video-dev \
        --out models_tflite/heads/violence.npz

(`python -m converter.train_video_head ARGS` is the same command: it runs
`safeguard-convert train-head --kind video ARGS`.)

Each clip is sampled at the daemon's analysis rate from several phases; `edge.video.
WindowFeatures` (what the daemon runs) turns the first `window` analysed frames into one
feature row per phase (cached under bench/cache/video). The head is a standardised logistic
regression; its L2 strength and the weight of the flow block beside the 4096 embedding
features are chosen by grouped cross-validation inside each training fold. Groups are runs of
neighbouring clip numbers (clips cut from the same recording), so no recording is in training
and test at once; the reported numbers are out-of-fold only. With `--mirror`, horizontally
mirrored copies of the training clips (features of cv2.flip(frame, 1), same feature code) are
added to every training fold and to the final fit (the default; `--no-mirror` turns it off);
test folds are always scored unmirrored. With `--zoom F` (default 1.3), copies zoomed in by F
(the centre 1/F of every frame at full size: the same scene from nearer, `zoom_in`) are added
the same way; 1 turns them off.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import itertools
import logging
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from converter.cli import check_out, positive, positive_int, share
from converter.train_head import TrainError, model_file, read_labels
from edge import flow, video
from edge.camera import file_frames
from edge.video import EMBEDDINGS, Backbone, VideoHead, WindowFeatures, save_video_head

log = logging.getLogger(__name__)
F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int_]
CACHE = Path(__file__).resolve().parent.parent / "bench" / "cache" / "video"
PHASES = (0.0, 0.5, 1.0, 1.5)  # sampling offsets, in analysis periods
C_GRID = (0.001, 0.003, 0.01)  # inverse L2 strengths tried by the inner cross-validation
FLOW_WEIGHTS = (3.0, 10.0, 30.0)  # weights of the flow block against the embeddings, tried
ZOOM = 1.3  # training copies zoomed in by this much (`--zoom`)
# the feature code is part of the cache key: change it and the features are recomputed
_SOURCES = (flow, video.WindowFeatures, video.window_features, video.backbone_input,
            video.crop_input, video.difference_input)  # fmt: skip
CODE = hashlib.md5(
    "".join(inspect.getsource(s) for s in _SOURCES).encode(), usedforsecurity=False
).hexdigest()


@dataclass(frozen=True)
class Sampling:
    """How clips become feature rows (as the daemon analyses a camera)."""

    fps: float = 8.0  # analysed frames per second
    width: int = 320  # ring frame width
    window: int = 16  # analysed frames per feature window
    stride: int = 2  # the backbone runs on every stride-th analysed frame


@dataclass(frozen=True)
class Clip:
    path: Path
    label: int
    group: str


def load_clips(data: Path, group_size: int = 10) -> list[Clip]:
    """Clips of labels.csv (file,category[,group]); positive means `violence`."""
    labels = data / "labels.csv" if data.is_dir() else data
    clips = []
    for row in read_labels(labels):
        path = labels.parent / row["file"]
        group = row.get("group") or ""
        if not group:
            m = re.match(r"([A-Za-z_]*?)(\d+)", path.stem)
            group = f"{m.group(1)}{int(m.group(2)) // group_size}" if m else path.stem
        clips.append(Clip(path, int(row["category"] == "violence"), group))
    missing = [str(cl.path) for cl in clips if not cl.path.is_file()]
    if missing:
        raise TrainError(f"{labels} names {len(missing)} missing clip(s), the first {missing[0]}")
    return clips


def zoom_in(frame: npt.NDArray[np.uint8], factor: float) -> npt.NDArray[np.uint8]:
    """The centre 1/`factor` of `frame`, resized back to the frame's size."""
    h, w = frame.shape[:2]
    cw, ch = max(1, round(w / factor)), max(1, round(h / factor))
    x0, y0 = (w - cw) // 2, (h - ch) // 2
    out = cv2.resize(frame[y0 : y0 + ch, x0 : x0 + cw], (w, h), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(out, np.uint8)


ZOOM_CODE = hashlib.md5(inspect.getsource(zoom_in).encode(), usedforsecurity=False).hexdigest()


def _transformed(frame: npt.NDArray[np.uint8], mirror: bool, zoom: float) -> npt.NDArray[np.uint8]:
    if mirror:
        frame = np.ascontiguousarray(cv2.flip(frame, 1))
    return zoom_in(frame, zoom) if zoom != 1.0 else frame


def clip_features(
    backbone: Backbone, path: Path, sampling: Sampling, *, mirror: bool = False, zoom: float = 1.0
) -> F32:
    """[phases, FEATURES]: the features after the first `window` analysed frames (or all the
    clip has) from each sampling phase, of the frames mirrored left-right if `mirror` and
    zoomed in by `zoom` (`zoom_in`); cached on disk."""
    fps, window = sampling.fps, sampling.window
    stat = path.stat()
    tag = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{sampling}|{PHASES}|{CODE}"
    tag += "|mirror" if mirror else ""
    tag += f"|zoom{zoom:g}|{ZOOM_CODE}" if zoom != 1.0 else ""
    cached = CACHE / (hashlib.md5(tag.encode(), usedforsecurity=False).hexdigest() + ".npy")
    if cached.is_file():
        return np.asarray(np.load(cached), np.float32)
    rows = []
    for phase in PHASES:
        features, last = WindowFeatures(backbone, window, sampling.stride), None
        frames = file_frames(path, fps, sampling.width, offset_s=phase / fps)
        for n, (_t, frame) in enumerate(frames):
            if n == window:
                break
            last = features.push(_transformed(frame, mirror, zoom))
        if last is not None:
            rows.append(last)
    if not rows:
        raise TrainError(f"{path}: too short for a window of {window} frames at {fps} fps")
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(cached, np.stack(rows))
    return np.stack(rows)


def make_head(x: F32, y: I64, c: float, flow_weight: float, sampling: Sampling) -> VideoHead:
    """Standardised L2 logistic regression, the flow block weighted `flow_weight` against the
    embedding block; the standardisation is folded into the weights."""
    from sklearn.linear_model import LogisticRegression

    mean, scale = x.mean(0), x.std(0) + 1e-6
    scale[EMBEDDINGS:] /= flow_weight
    lr = LogisticRegression(C=c, max_iter=5000).fit((x - mean) / scale, y)
    w = lr.coef_[0] / scale
    bias = float(lr.intercept_[0] - np.dot(w, mean))
    return VideoHead(w.astype(np.float32), bias, 0.5, sampling.window, sampling.stride)


def _scores(head: VideoHead, feats: list[F32], idx: Sequence[int]) -> F32:
    """Clip scores: the head's mean probability over the clip's phases."""
    return np.array([np.mean([head.score(row) for row in feats[i]]) for i in idx], np.float32)


def _fit(
    feats: list[F32], y: I64, idx: Sequence[int], params: tuple[float, float], sampling: Sampling
) -> VideoHead:
    """The head fitted on the rows of clips `idx` (`feats` are training rows: with `--mirror`
    a clip's original and mirrored rows)."""
    x = np.concatenate([feats[i] for i in idx])
    yy = np.concatenate([[y[i]] * len(feats[i]) for i in idx])
    return make_head(x, yy, *params, sampling)


def choose(  # noqa: PLR0917
    feats: list[F32],
    y: I64,
    groups: list[str],
    idx: Sequence[int],
    grid: list[tuple[float, float]],
    folds: int,
    sampling: Sampling,
    train_feats: list[F32] | None = None,
) -> tuple[float, float]:
    """The (C, flow weight) of `grid` with the best grouped-CV ROC AUC on clips `idx`: fitted
    on `train_feats` (default `feats`), scored on `feats`."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold

    if len(grid) == 1:
        return grid[0]
    clips = np.asarray(idx)
    splits = list(GroupKFold(n_splits=folds).split(clips, y[clips], [groups[i] for i in clips]))
    best, best_auc = grid[0], -1.0
    for params in grid:
        oof = np.zeros(len(clips), np.float32)
        for train, test in splits:
            head = _fit(train_feats or feats, y, clips[train], params, sampling)
            oof[test] = _scores(head, feats, clips[test])
        auc = float(roc_auc_score(y[clips], oof))
        log.debug("C, flow weight = %s: inner ROC AUC %.4f", params, auc)
        if auc > best_auc:
            best, best_auc = params, auc
    return best


def cross_validate(  # noqa: PLR0917
    feats: list[F32],
    clips: list[Clip],
    folds: int,
    grid: list[tuple[float, float]],
    sampling: Sampling,
    train_feats: list[F32] | None = None,
) -> F32:
    """Out-of-fold clip scores, grouped by recording; hyperparameters chosen inside each fold.
    Heads are fitted on `train_feats` (default `feats`: e.g. with mirrored rows added), test
    folds are scored on `feats` only."""
    from sklearn.model_selection import GroupKFold

    y = np.array([cl.label for cl in clips])
    groups = [cl.group for cl in clips]
    scores = np.zeros(len(clips), np.float32)
    for train, test in GroupKFold(n_splits=folds).split(y, y, groups):
        params = choose(feats, y, groups, train, grid, folds - 1, sampling, train_feats)
        log.info("fold: C, flow weight = %s", params)
        scores[test] = _scores(_fit(train_feats or feats, y, train, params, sampling), feats, test)
    return scores


def metrics(scores: F32, y: npt.NDArray[np.int_], max_fp: float) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    negatives = np.sort(scores[y == 0])
    threshold = float(negatives[int(np.floor((1 - max_fp) * len(negatives))) - 1]) + 1e-6
    return {
        "roc_auc": round(float(roc_auc_score(y, scores)), 4),
        "threshold": round(threshold, 4),
        "recall": round(float(np.mean(scores[y == 1] >= threshold)), 4),
        "flagged_negatives": round(float(np.mean(scores[y == 0] >= threshold)), 4),
    }


def add_options(group: argparse._ActionsContainer) -> list[argparse.Action]:
    """The options only the video head takes (`safeguard-convert train-head --kind video`)."""
    return [
        group.add_argument("--fps", type=positive, default=8.0,
                           help="analysis rate (as the daemon's)"),
        group.add_argument("--width", type=positive_int, default=320,
                           help="ring frame width (as the daemon's)"),
        group.add_argument("--window", type=positive_int, default=16,
                           help="analysed frames per feature window"),
        group.add_argument("--stride", type=positive_int, default=2,
                           help="backbone on every n-th analysed frame"),
        group.add_argument("--flow-weight", type=positive, nargs="+", default=list(FLOW_WEIGHTS),
                           help="weights of the flow features against the embeddings"),
        group.add_argument("--max-fp", type=share, default=0.10,
                           help="negative clips allowed to flag"),
        group.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=True,
                           help="add left-right mirrored copies of the training clips (training "
                           "folds and final fit only; test folds are scored unmirrored)"),
        group.add_argument("--zoom", type=zoom_factor, default=ZOOM,
                           help="add copies of the training clips zoomed in by this factor (the "
                           "centre of the picture at full size; training only); 1: none"),
    ]  # fmt: skip


def zoom_factor(text: str) -> float:
    """A zoom factor: 1 (none) up to 4."""
    value = positive(text)
    if not 1.0 <= value <= 4.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a zoom factor from 1 to 4")
    return value


def _check_clips(clips: list[Clip], folds: int, grid: list[tuple[float, float]]) -> None:
    """A TrainError unless the clips can be cross-validated with `folds` grouped folds."""
    labels = {cl.label for cl in clips}
    if labels != {0, 1}:
        raise TrainError("the clips need both categories: `violence` and another (e.g. `none`)")
    if folds < (3 if len(grid) > 1 else 2):
        raise TrainError(
            f"--folds {folds} is too few: at least 3 when several --c or --flow-weight values are "
            "tried (an inner cross-validation chooses among them), 2 otherwise"
        )
    groups = len({cl.group for cl in clips})
    if groups < folds:
        raise TrainError(f"{folds} grouped folds need {folds} groups of clips; there are {groups}")


def run(args: argparse.Namespace, command: str) -> int:
    """`safeguard-convert train-head --kind video`: cross-validate, then (with `--out`) fit and
    write the head, `command` in its metadata."""
    if args.out is not None:
        check_out(args.out)
    clips = load_clips(args.data)
    grid = list(itertools.product(args.c or C_GRID, args.flow_weight))
    _check_clips(clips, args.folds, grid)
    backbone = Backbone(model_file("mobilenet_v1_embedding", args.models))
    sampling = Sampling(args.fps, args.width, args.window, args.stride)
    feats = [clip_features(backbone, cl.path, sampling) for cl in clips]
    train_feats = feats
    copies = [(True, 1.0)] if args.mirror else []
    copies += [(False, args.zoom)] if args.zoom != 1.0 else []
    for mirror, zoom in copies:
        extra = [
            clip_features(backbone, cl.path, sampling, mirror=mirror, zoom=zoom) for cl in clips
        ]
        train_feats = [np.concatenate([f, e]) for f, e in zip(train_feats, extra, strict=True)]
    y = np.array([cl.label for cl in clips])
    oof = cross_validate(feats, clips, args.folds, grid, sampling, train_feats)
    cv = metrics(oof, y, args.max_fp)
    added = [
        *(["mirrored"] if args.mirror else []),
        *([f"zoomed {args.zoom:g}x"] if args.zoom != 1.0 else []),
    ]
    copies_text = f", {' and '.join(added)} training copies" if added else ""
    sys.stdout.write(
        f"cross-validated ({args.folds} grouped folds, {len(clips)} clips{copies_text}): {cv}\n"
    )
    if args.out is not None:
        every = range(len(clips))
        groups = [cl.group for cl in clips]
        c, fw = choose(feats, y, groups, every, grid, args.folds, sampling, train_feats)
        head = _fit(train_feats, y, every, (c, fw), sampling)
        meta = {
            "category": "violence",
            "training_data": f"{args.data} ({int(y.sum())} violence, {int((1 - y).sum())} none)",
            "cv": cv,
            "params": {
                **{k: getattr(args, k) for k in ("fps", "width", "window", "stride")},
                "c": c,
                "flow_weight": fw,
                "mirror": args.mirror,
                "zoom": args.zoom,
            },
            "command": command,
        }
        head = VideoHead(head.weights, head.bias, cv["threshold"], args.window, args.stride, meta)
        save_video_head(args.out, head)
        sys.stdout.write(f"wrote {args.out} (C={c}, flow weight={fw})\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m converter.train_video_head ARGS`: `safeguard-convert train-head --kind video
    ARGS` (its options, errors and head metadata)."""
    from converter import cli

    return cli.main(["train-head", "--kind", "video", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())

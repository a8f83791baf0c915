"""Train the violence head on labelled clips (grouped cross-validation, numpy head file).

    python -m converter.train_video_head --data ../shared/data/video-dev \
        --out models_tflite/heads/violence.npz

Each clip is sampled at the daemon's analysis rate from two phases; the backbone embeds each
frame and each frame difference (cached under bench/cache/video); the features are the
window statistics of `edge.video.window_features`. Groups are runs of neighbouring clip
numbers (clips cut from the same recording), so no recording is in training and test at once.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import logging
import re
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edge.camera import file_frames
from edge.models import load_manifest, verify
from edge.video import (
    DIFF_GAIN,
    Backbone,
    VideoHead,
    backbone_input,
    difference_input,
    save_video_head,
    window_features,
)

log = logging.getLogger(__name__)
F32 = npt.NDArray[np.float32]
CACHE = Path(__file__).resolve().parent.parent / "bench" / "cache" / "video"
PHASES = (0.0, 0.5)  # sampling offsets, in analysis periods


@dataclass(frozen=True)
class Clip:
    path: Path
    label: int
    group: str


def load_clips(data: Path, group_size: int = 10) -> list[Clip]:
    """Clips of labels.csv (file,category[,group]); positive means `violence`."""
    labels = data / "labels.csv" if data.is_dir() else data
    clips = []
    with labels.open(newline="") as handle:
        for row in csv.DictReader(handle):
            path = labels.parent / row["file"]
            group = row.get("group") or ""
            if not group:
                m = re.match(r"([A-Za-z_]*?)(\d+)", path.stem)
                group = f"{m.group(1)}{int(m.group(2)) // group_size}" if m else path.stem
            clips.append(Clip(path, int(row["category"] == "violence"), group))
    return clips


def embed_clip(backbone: Backbone, path: Path, fps: float, width: int) -> list[tuple[F32, F32]]:
    """(frame embeddings, difference embeddings) per sampling phase; cached on disk."""
    stat = path.stat()
    tag = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{fps}|{width}|{DIFF_GAIN}|{PHASES}"
    cached = CACHE / (hashlib.md5(tag.encode(), usedforsecurity=False).hexdigest() + ".npz")
    if cached.is_file():
        with np.load(cached) as data:
            return [(data[f"f{i}"], data[f"d{i}"]) for i in range(len(PHASES))]
    out = []
    for phase in PHASES:
        frames, diffs, prev = [], [], None
        for _t, frame in file_frames(path, fps, width, offset_s=phase / fps):
            rgb = backbone_input(frame)
            frames.append(backbone.embed(rgb))
            if prev is not None:
                diffs.append(backbone.embed(difference_input(rgb, prev)))
            prev = rgb
        zero = np.zeros((1, 1024), np.float32)
        out.append((np.stack(frames) if frames else zero, np.stack(diffs) if diffs else zero))
    CACHE.mkdir(parents=True, exist_ok=True)
    arrays = {f"{k}{i}": a for i, pair in enumerate(out) for k, a in zip("fd", pair, strict=True)}
    np.savez(cached, **arrays)  # type: ignore[arg-type]
    return out


def clip_features(pairs: list[tuple[F32, F32]], window: int) -> F32:
    """One feature row per phase: the first `window` frames of the clip."""
    return np.stack([window_features(f[:window], d[: window - 1]) for f, d in pairs])


def make_head(x: F32, y: npt.NDArray[np.int_], c: float, window: int) -> VideoHead:
    """Standardised L2 logistic regression, the standardisation folded into the weights."""
    from sklearn.linear_model import LogisticRegression

    mean, scale = x.mean(0), x.std(0) + 1e-6
    lr = LogisticRegression(C=c, max_iter=3000).fit((x - mean) / scale, y)
    w = lr.coef_[0] / scale
    bias = float(lr.intercept_[0] - np.dot(w, mean))
    return VideoHead(w.astype(np.float32), bias, 0.5, window)


def cross_validate(feats: list[F32], clips: list[Clip], folds: int, c: float, window: int) -> F32:
    """Out-of-fold clip scores (mean over phases), grouped by recording."""
    from sklearn.model_selection import GroupKFold

    y = np.array([cl.label for cl in clips])
    groups = [cl.group for cl in clips]
    scores = np.zeros(len(clips), np.float32)
    for train, test in GroupKFold(n_splits=folds).split(y, y, groups):
        x = np.concatenate([feats[i] for i in train])
        yy = np.concatenate([[y[i]] * len(feats[i]) for i in train])
        head = make_head(x, yy, c, window)
        for i in test:
            scores[i] = np.mean([head.score(row) for row in feats[i]])
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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m converter.train_video_head", description=__doc__)
    p.add_argument("--data", type=Path, required=True, help="labels.csv or its folder")
    p.add_argument("--out", type=Path, help="head file to write (.npz); omit to only evaluate")
    p.add_argument("--models", type=Path, default=Path("var/models"), help="fetched models")
    p.add_argument("--fps", type=float, default=4.0, help="analysis rate (as the daemon's)")
    p.add_argument("--width", type=int, default=320, help="ring frame width (as the daemon's)")
    p.add_argument("--window", type=int, default=8, help="analysed frames per feature window")
    p.add_argument("--c", type=float, default=0.01, help="inverse L2 regularisation")
    p.add_argument("--folds", type=int, default=5, help="grouped cross-validation folds")
    p.add_argument("--max-fp", type=float, default=0.10, help="negative clips allowed to flag")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    clips = load_clips(args.data)
    spec = load_manifest()["mobilenet_v1_embedding"]
    backbone = Backbone(verify(spec, args.models))
    feats = [
        clip_features(embed_clip(backbone, cl.path, args.fps, args.width), args.window)
        for cl in clips
    ]
    y = np.array([cl.label for cl in clips])
    oof = cross_validate(feats, clips, args.folds, args.c, args.window)
    cv = metrics(oof, y, args.max_fp)
    sys.stdout.write(f"cross-validated ({args.folds} grouped folds, {len(clips)} clips): {cv}\n")
    if args.out is not None:
        x = np.concatenate(feats)
        yy = np.concatenate([[cl.label] * len(f) for cl, f in zip(clips, feats, strict=True)])
        head = make_head(x, yy, args.c, args.window)
        meta = {
            "category": "violence",
            "training_data": f"{args.data} ({int(y.sum())} violence, {int((1 - y).sum())} none)",
            "cv": cv,
            "params": {k: getattr(args, k) for k in ("fps", "width", "window", "c")},
            "command": shlex.join(["python", "-m", "converter.train_video_head", *sys.argv[1:]]),
        }
        head = VideoHead(head.weights, head.bias, cv["threshold"], args.window, meta)
        save_video_head(args.out, head)
        sys.stdout.write(f"wrote {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Video analysis: motion gate -> dense optical flow and MobileNet V1 embeddings -> statistics
over a window of frames -> the violence head -> smoothing -> events.

Single frames are weak evidence of a fight; movement over time is strong. Every analysed frame
gets the dense flow to the previous one (`edge.flow`), and a second, finer flow of the region
that moves (`edge.flow.motion_box`, from the first); every `stride`-th analysed frame the
backbone embeds that region and the (amplified) difference of that region to the previous
embedded frame, and that difference again for a tighter square around the fastest movers
(`motion_box(..., fastest=True)`): in a surveillance view the fight is a small part of the
picture, and a distant one a small part of the region. The head sees
statistics of all of them over the last `window` analysed frames.
`WindowFeatures` computes them for the live daemon, `safeguard analyze` and the head's
training alike.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from edge.backend import TFLiteModel
from edge.errors import ConfigError
from edge.events import Event, Severity
from edge.flow import (
    WINDOW_SIZE,
    Box,
    dense_flow,
    flow_gray,
    flow_window_features,
    gray,
    motion_box,
    pair_stats,
    region_gray,
    speed_of,
)
from edge.heads import read_npz
from edge.smoothing import Smoother, SmoothingConfig

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]
INPUT = 224
GATE_SIZE = (64, 48)  # the motion gate's grayscale frame (width, height)
DIFF_GAIN = 4.0  # frame differences are amplified before the backbone sees them
HEAD_KEYS = ("mean", "scale", "weights", "bias", "threshold", "window", "stride")
EMBEDDING = 1024
EMBEDDINGS = 4 * EMBEDDING  # the window's embedding statistics, before the flow blocks
FEATURES = EMBEDDINGS + 2 * WINDOW_SIZE  # embeddings, whole-frame flow, region flow


def downscale(frame: U8, width: int) -> U8:
    """`frame` (BGR) resized to `width` pixels wide, aspect kept (what the ring holds)."""
    h, w = frame.shape[:2]
    if w == width:
        return frame
    size = (width, max(1, round(h * width / w)))
    return np.asarray(cv2.resize(frame, size, interpolation=cv2.INTER_AREA), np.uint8)


def backbone_input(frame: U8) -> U8:
    """A BGR frame as the backbone's 224x224 RGB input (squashed, not cropped)."""
    small = cv2.resize(frame, (INPUT, INPUT), interpolation=cv2.INTER_AREA)
    return np.asarray(cv2.cvtColor(small, cv2.COLOR_BGR2RGB), np.uint8)


def crop_input(frame: U8, box: Box) -> U8:
    """The backbone's input for the square `box` of `frame`."""
    x0, y0, x1, y1 = box
    return backbone_input(np.ascontiguousarray(frame[y0:y1, x0:x1]))


def difference_input(current: U8, previous: U8) -> U8:
    """The amplified absolute difference of two backbone inputs (moving edges light up)."""
    diff = cv2.absdiff(current, previous).astype(np.float32) * DIFF_GAIN
    out: U8 = np.clip(diff, 0, 255).astype(np.uint8)
    return out


def gate_frame(frame: U8) -> U8:
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    small = cv2.resize(gray, GATE_SIZE, interpolation=cv2.INTER_AREA)
    return np.asarray(cv2.GaussianBlur(small, (3, 3), 0), np.uint8)


class Backbone:
    """Coral's MobileNet V1 uint8 embedding extractor: 224x224 RGB -> 1024 floats."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        self.model = TFLiteModel(path, threads)
        self.runtime = self.model.runtime
        out = self.model.outputs[0]
        self._out = int(out["index"])
        self._scale, self._zero = (float(v) for v in out["quantization"])

    def embed(self, rgb: U8) -> F32:
        self.model.invoke(rgb[np.newaxis])
        raw = self.model.get(self._out).reshape(-1).astype(np.float32)
        out: F32 = (raw - self._zero) * self._scale
        return out


def window_features(frames: F32, diffs: F32, tight_diffs: F32) -> F32:
    """Over a window: mean and max of the difference embeddings, the mean change of the frame
    embeddings and the mean of the tight square's difference embeddings, [EMBEDDINGS].
    Appearance alone does not carry over between scenes."""
    change = np.abs(np.diff(frames, axis=0)).mean(0)
    parts = [diffs.mean(0), diffs.max(0), change, tight_diffs.mean(0)]
    return np.concatenate(parts).astype(np.float32)


class WindowFeatures:
    """The head's input, one analysed frame at a time: [FEATURES] floats once the window is
    half full (None before). `reset` when the frames stop being consecutive."""

    def __init__(self, backbone: Backbone, window: int, stride: int) -> None:
        self.backbone = backbone
        self.window, self.stride = window, stride
        embedded = -(-window // stride)
        self._pairs: deque[F32] = deque(maxlen=window - 1)
        self._region_pairs: deque[F32] = deque(maxlen=window - 1)
        self._frames: deque[F32] = deque(maxlen=embedded)
        self._diffs: deque[F32] = deque(maxlen=max(1, embedded - 1))
        self._tight_diffs: deque[F32] = deque(maxlen=max(1, embedded - 1))
        self.reset()

    def reset(self) -> None:
        self._pairs.clear()
        self._region_pairs.clear()
        self._frames.clear()
        self._diffs.clear()
        self._tight_diffs.clear()
        self._count = 0
        self._previous: tuple[U8, U8] | None = None  # last frame in grayscale: full, small
        self._flow: F32 | None = None
        self._region_flow: F32 | None = None
        self._box: Box | None = None
        self._tight: Box | None = None  # around the fastest movers, for distant fights
        self._embedded: U8 | None = None  # the last frame the backbone saw (whole)

    def push(self, frame: U8) -> F32 | None:
        whole = gray(frame)
        small = flow_gray(whole)
        if self._previous is not None:
            before, before_small = self._previous
            flow = dense_flow(before_small, small)
            speed = speed_of(flow)
            self._pairs.append(pair_stats(flow, self._flow, speed))
            self._flow = flow
            self._box = box = motion_box(flow, frame.shape, self._box, speed=speed)
            self._tight = motion_box(flow, frame.shape, self._tight, fastest=True, speed=speed)
            region = dense_flow(region_gray(before, box), region_gray(whole, box))
            self._region_pairs.append(pair_stats(region, self._region_flow))
            self._region_flow = region
        self._previous = whole, small
        if self._count % self.stride == 0 and self._box is not None and self._tight is not None:
            rgb = crop_input(frame, self._box)
            self._frames.append(self.backbone.embed(rgb))
            if self._embedded is not None:
                before = crop_input(self._embedded, self._box)
                self._diffs.append(self.backbone.embed(difference_input(rgb, before)))
                now, then = crop_input(frame, self._tight), crop_input(self._embedded, self._tight)
                self._tight_diffs.append(self.backbone.embed(difference_input(now, then)))
            self._embedded = frame
        self._count += 1
        if len(self._pairs) < max(2, self.window // 2) or not self._diffs:
            return None
        return np.concatenate(
            [
                window_features(
                    np.stack(self._frames), np.stack(self._diffs), np.stack(self._tight_diffs)
                ),
                flow_window_features(np.stack(self._pairs)),
                flow_window_features(np.stack(self._region_pairs)),
            ]
        )


@dataclass(frozen=True)
class VideoHead:
    """A logistic layer over the window features; applied with numpy only."""

    weights: F32  # [d], input standardisation folded in
    bias: float
    threshold: float  # operating point chosen by cross-validation
    window: int  # analysed frames the features are computed over
    stride: int  # the backbone runs on every stride-th analysed frame
    metadata: dict[str, Any] = field(default_factory=dict)

    def score(self, features: F32) -> float:
        z = float(np.dot(self.weights, features)) + self.bias
        return 1.0 / (1.0 + float(np.exp(-np.clip(z, -60, 60))))


def save_video_head(path: Path, head: VideoHead) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    k = len(head.weights)
    with path.open("wb") as handle:
        np.savez_compressed(
            handle,
            mean=np.zeros(k, np.float32),
            scale=np.ones(k, np.float32),
            weights=head.weights,
            bias=np.float32(head.bias),
            threshold=np.float64(head.threshold),
            window=np.int32(head.window),
            stride=np.int32(head.stride),
            metadata=np.array(json.dumps(head.metadata, sort_keys=True)),
        )


def load_video_head(path: Path, key: str = "video.head") -> VideoHead:
    arrays, meta = read_npz(path, HEAD_KEYS, key, "video head")
    if not arrays["weights"].shape == arrays["mean"].shape == arrays["scale"].shape:
        raise ConfigError(f"{key}: {path} has inconsistent shapes")
    if arrays["weights"].shape != (FEATURES,):
        raise ConfigError(f"{key}: {path} is for other features than {FEATURES}: retrain it")
    scale = arrays["scale"].astype(np.float32)
    return VideoHead(
        weights=(arrays["weights"] / scale).astype(np.float32),
        bias=float(arrays["bias"] - np.dot(arrays["mean"] / scale, arrays["weights"])),
        threshold=float(arrays["threshold"]),
        window=int(arrays["window"]),
        stride=int(arrays["stride"]),
        metadata=meta,
    )


@dataclass
class VideoStats:
    offered: int = 0  # frames the sampler took for analysis
    motion: int = 0  # of those, frames with motion (the model ran)
    still: int = 0  # frames the motion gate skipped
    skipped: int = 0  # analysis slots lost because the worker fell behind
    infer_ms: list[float] = field(default_factory=list)


class VideoAnalyzer:
    """Analysed frames in, violence events out. Feed frames in time order with `process`."""

    def __init__(  # noqa: PLR0917
        self,
        backbone: Backbone,
        head: VideoHead,
        smoothing: SmoothingConfig,
        motion_threshold: float = 0.01,
        severity: Severity = "critical",
        category: str = "violence",
        origin_wall: float = 0.0,
    ) -> None:
        self.backbone = backbone
        self.head = head
        self.category = category
        self.severity: Severity = severity
        self.motion_threshold = motion_threshold
        self.smoother = Smoother(smoothing, 0.0)
        self.origin_wall = origin_wall
        self.stats = VideoStats()
        self.last_score = 0.0
        self.last_motion = 0.0
        self.features = WindowFeatures(backbone, head.window, head.stride)
        self._prev_gate: U8 | None = None
        self._key = ""

    def motion(self, frame: U8) -> float:
        """Fraction of gate pixels that changed since the previous analysed frame."""
        gate = gate_frame(frame)
        prev, self._prev_gate = self._prev_gate, gate
        if prev is None:
            return 1.0
        return float(np.count_nonzero(cv2.absdiff(gate, prev) > 20)) / gate.size

    def score_frame(self, frame: U8) -> float | None:
        """The features of one more frame; the head's score once it can."""
        feats = self.features.push(frame)
        return None if feats is None else self.head.score(feats)

    def process(self, frame: U8, t: float) -> list[Event]:
        """Analyse the frame captured at stream time `t` (seconds)."""
        self.stats.offered += 1
        self.last_motion = moved = self.motion(frame)
        score = 0.0
        if moved >= self.motion_threshold:
            self.stats.motion += 1
            got = self.score_frame(frame)
            score = 0.0 if got is None else got
        else:
            self.stats.still += 1
            self.features.reset()
        self.last_score = score
        tr = self.smoother.step(t, score)
        if tr is None:
            return []
        if tr.phase == "start":
            self._key = uuid.uuid4().hex
        return [self._event(tr.phase, tr.start_s, tr.at_s, tr.end_s, tr.score, tr.peak)]

    def gap(self, at_s: float) -> list[Event]:
        """No frames since the last one (the camera is away): an active event ends at `at_s`,
        and the next frames start a fresh window (no motion or features across the gap)."""
        self.features.reset()
        self._prev_gate = None
        return self.flush(at_s)

    def flush(self, at_s: float) -> list[Event]:
        tr = self.smoother.finish(at_s)
        if tr is None:
            return []
        return [self._event(tr.phase, tr.start_s, tr.at_s, tr.end_s, tr.score, tr.peak)]

    def _event(  # noqa: PLR0917
        self, phase: Any, start: float, at: float, end: float, score: float, peak: float
    ) -> Event:
        return Event(
            phase=phase,
            key=self._key,
            category=self.category,
            severity=self.severity,
            score=float(min(1.0, max(0.0, score))),
            peak_score=float(peak),
            start_s=start,
            at_s=at,
            end_s=end,
            wall_start=self.origin_wall + start,
            wall_at=self.origin_wall + at,
            modalities=("video",),
        )

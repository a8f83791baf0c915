"""Trained linear heads on YAMNet's 1024-d embedding, applied with numpy only.

A head file (`.npz`, written by `safeguard-convert train-head`) holds:
`weights` [d], `bias` [], `mean` [d], `scale` [d] (input standardisation), `score_classes`
(indices of YAMNet scores appended to the embedding, possibly none), `calibration` [2]
(a, b: probability = sigmoid(a * z + b) for the raw logit z), `threshold` (the calibrated
operating point chosen by cross-validation) and `metadata` (a JSON string: category,
training data, CV metrics, the command that made it).
"""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.errors import ConfigError
from models_tflite import HEADS

HEADS_DIR = HEADS  # installed with the package (models_tflite/heads)
EMBEDDING_SIZE = 1024
F32 = npt.NDArray[np.float32]
KEYS = ("weights", "bias", "mean", "scale", "score_classes", "calibration", "threshold")


@dataclass(frozen=True)
class Head:
    """A logistic head: calibrated probability of its category for one window."""

    weights: F32  # already divided by `scale`
    bias: float  # already includes -mean/scale . weights
    score_classes: npt.NDArray[np.intp]
    calibration: tuple[float, float]
    threshold: float
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_arrays(  # noqa: PLR0917
        cls,
        weights: F32,
        bias: float,
        mean: F32,
        scale: F32,
        score_classes: npt.NDArray[np.intp],
        calibration: tuple[float, float] = (1.0, 0.0),
        threshold: float = 0.5,
        metadata: dict[str, Any] | None = None,
    ) -> Head:
        """Folds the input standardisation into the weights, so applying is one dot product."""
        folded = (weights / scale).astype(np.float32)
        return cls(
            folded,
            float(bias - np.dot(folded, mean)),
            score_classes.astype(np.intp),
            calibration,
            threshold,
            metadata or {},
        )

    @property
    def inputs(self) -> int:
        return len(self.weights)

    def features(self, embedding: F32, scores: F32) -> F32:
        if not self.score_classes.size:
            return embedding
        return np.concatenate([embedding, scores[self.score_classes]]).astype(np.float32)

    def logit(self, embedding: F32, scores: F32) -> float:
        return float(np.dot(self.weights, self.features(embedding, scores))) + self.bias

    def apply(self, embedding: F32, scores: F32) -> float:
        """The calibrated probability (0..1) for one window."""
        a, b = self.calibration
        z = a * self.logit(embedding, scores) + b
        return 1.0 / (1.0 + math.exp(-z)) if z > -60 else 0.0

    def apply_many(self, embeddings: F32, scores: F32) -> F32:
        """`apply` over rows: embeddings [n, 1024], scores [n, 521]."""
        x = embeddings.astype(np.float32)
        if self.score_classes.size:
            x = np.concatenate([x, scores[:, self.score_classes]], axis=1)
        a, b = self.calibration
        z = a * (x @ self.weights + self.bias) + b
        out: F32 = (1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))).astype(np.float32)
        return out


def save_head(path: Path, head: Head) -> None:
    """Writes `head` (standardisation already folded: mean 0, scale 1)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        np.savez_compressed(
            handle,
            weights=head.weights,
            bias=np.float32(head.bias),
            mean=np.zeros(head.inputs, np.float32),
            scale=np.ones(head.inputs, np.float32),
            score_classes=head.score_classes.astype(np.int32),
            calibration=np.array(head.calibration, np.float32),
            threshold=np.float64(head.threshold),
            metadata=np.array(json.dumps(head.metadata, sort_keys=True)),
        )


def read_npz(
    path: Path, keys: Sequence[str], key: str, what: str = "head file"
) -> tuple[dict[str, npt.NDArray[Any]], dict[str, Any]]:
    """The arrays `keys` and the JSON metadata of a head `.npz`; ConfigError naming `key`."""
    if path.is_file() and not zipfile.is_zipfile(path):  # np.load would talk of pickles
        raise ConfigError(f"{key}: {path} is not a {what} (not an .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in keys if k not in data]
            if missing:
                raise ConfigError(f"{key}: {path} is not a {what} (no {', '.join(missing)})")
            arrays = {k: np.asarray(data[k]) for k in keys}
            meta = json.loads(str(data["metadata"])) if "metadata" in data else {}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"{key}: cannot read {what} {path}: {exc}") from None
    return arrays, meta


def load_head(path: Path, classes: int = 521, key: str = "head") -> Head:
    """Reads a head file; a ConfigError naming `key` if it is missing or malformed."""
    arrays, meta = read_npz(path, KEYS, key)
    score_classes = arrays["score_classes"].astype(np.intp).reshape(-1)
    inputs = EMBEDDING_SIZE + len(score_classes)
    shapes_ok = all(arrays[k].shape == (inputs,) for k in ("weights", "mean", "scale"))
    if not shapes_ok or arrays["calibration"].shape != (2,):
        raise ConfigError(f"{key}: {path} has weights for {arrays['weights'].shape}, not {inputs}")
    if score_classes.size and (score_classes.min() < 0 or score_classes.max() >= classes):
        raise ConfigError(f"{key}: {path} uses YAMNet scores outside 0..{classes - 1}")
    a, b = (float(v) for v in arrays["calibration"])
    return Head.from_arrays(
        arrays["weights"].astype(np.float32),
        float(arrays["bias"]),
        arrays["mean"].astype(np.float32),
        arrays["scale"].astype(np.float32),
        score_classes,
        (a, b),
        float(arrays["threshold"]),
        meta,
    )

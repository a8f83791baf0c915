"""Trained linear heads on YAMNet's 1024-d embedding, applied with numpy only.

A head file (`.npz`, written by `safeguard-convert train-head`) holds:
`weights` [d], `bias` [], `mean` [d], `scale` [d] (input standardisation), `score_classes`
(indices of YAMNet scores appended to the embedding, possibly none), `calibration` [2]
(a, b: probability = sigmoid(a * z + b) for the raw logit z), `threshold` (the calibrated
operating point chosen by cross-validation) and `metadata` (a JSON string: category,
training data, CV metrics, the command that made it). Optionally `patch_features`, the name
of statistics of the window's log-mel patch (`edge.frontend.PATCH_STATS`), and `patch_bias`:
then the last `weights` are a second logistic head on those statistics, whose probability
is averaged with the embedding head's. A file without them (or with "") has no patch head.
Optionally `others` [k, d'] and `others_bias` [k] (d' the embedding head's inputs): the other
classes of a multinomial head (trained against every fine label of the data, not against
"anything else"); the category's probability is then its softmax share, i.e. the sigmoid of
its logit minus the log-sum-exp of the others' logits. A file without them is binary.
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
from edge.frontend import PATCH_STATS, PATCH_STATS_SIZE, patch_stats, patch_stats_many
from models_tflite import HEADS

HEADS_DIR = HEADS  # installed with the package (models_tflite/heads)
EMBEDDING_SIZE = 1024
F32 = npt.NDArray[np.float32]
KEYS = ("weights", "bias", "mean", "scale", "score_classes", "calibration", "threshold")
OPTIONAL_KEYS = ("patch_features", "patch_bias", "others", "others_bias")  # not in older files
PATCH_FEATURES = {PATCH_STATS: PATCH_STATS_SIZE}  # name -> number of inputs


def patch_features_of(name: str, patch: F32) -> F32:
    """The inputs `name` (a key of PATCH_FEATURES) of one [96, 64] log-mel patch."""
    if name != PATCH_STATS:
        raise ValueError(f"unknown patch features {name!r}")
    return patch_stats(patch)


def patch_features_many(name: str, patches: F32) -> F32:
    """`patch_features_of` each patch of `patches` [n, 96, 64] -> [n, k], at once."""
    if name != PATCH_STATS:
        raise ValueError(f"unknown patch features {name!r}")
    return patch_stats_many(patches)


@dataclass(frozen=True)
class Head:
    """A logistic head: calibrated probability of its category for one window.

    With `patch_features` it is two logistic heads whose probabilities are averaged: one on
    the embedding (and score classes), one on the window's log-mel patch statistics (the last
    `weights`, with their own `patch_bias`). A window without a patch gets the first alone.
    With `others` (weights [k, d'] and biases [k] of a multinomial head's other classes,
    standardisation folded in like `weights`) the embedding head's logit is its class's
    logit minus the log-sum-exp of theirs, so its probability is the softmax share.
    """

    weights: F32  # already divided by `scale`
    bias: float  # already includes -mean/scale . weights
    score_classes: npt.NDArray[np.intp]
    calibration: tuple[float, float]
    threshold: float
    metadata: dict[str, Any] = field(default_factory=dict)
    # the patch head's inputs ("" for none) and bias; when not given they are read from
    # `metadata` ("patch_features", "patch_bias"), so a head rebuilt from its parts keeps them
    patch_features: str = ""
    patch_bias: float | None = None
    others: F32 | None = None
    others_bias: F32 | None = None

    def __post_init__(self) -> None:
        if not self.patch_features and self.metadata.get("patch_features"):
            object.__setattr__(self, "patch_features", str(self.metadata["patch_features"]))
        if self.patch_bias is None:
            bias = self.metadata.get("patch_bias", 0.0) if self.patch_features else 0.0
            object.__setattr__(self, "patch_bias", float(bias))

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
        patch_features: str = "",
        patch_bias: float = 0.0,
        others: tuple[F32, F32] | None = None,
    ) -> Head:
        """Folds the input standardisation into the weights, so applying is one dot product
        (per head). With `patch_features`, the last inputs belong to the patch head (bias
        `patch_bias`); its name and folded bias also go into the metadata. `others` are the
        other classes' weights [k, d'] and biases [k] of a multinomial head, unfolded."""
        folded = (weights / scale).astype(np.float32)
        meta = dict(metadata or {})
        split = len(weights) - (PATCH_FEATURES[patch_features] if patch_features else 0)
        folded_patch_bias = 0.0
        if patch_features:
            folded_patch_bias = float(patch_bias - np.dot(folded[split:], mean[split:]))
            meta["patch_features"] = patch_features
            meta["patch_bias"] = folded_patch_bias
        other_w = other_b = None
        if others is not None:
            other_w = (others[0] / scale[:split]).astype(np.float32)
            other_b = (others[1] - other_w @ mean[:split]).astype(np.float32)
        return cls(
            folded,
            float(bias - np.dot(folded[:split], mean[:split])),
            score_classes.astype(np.intp),
            calibration,
            threshold,
            meta,
            patch_features,
            folded_patch_bias if patch_features else None,
            other_w,
            other_b,
        )

    @property
    def inputs(self) -> int:
        return len(self.weights)

    @property
    def _split(self) -> int:
        """Where the patch head's weights begin."""
        return len(self.weights) - (
            PATCH_FEATURES[self.patch_features] if self.patch_features else 0
        )

    def features(self, embedding: F32, scores: F32) -> F32:
        """The embedding head's input row: the embedding, then its score classes."""
        if not self.score_classes.size:
            return embedding
        return np.concatenate([embedding, scores[self.score_classes]]).astype(np.float32)

    def logit(self, embedding: F32, scores: F32) -> float:
        """The embedding head's raw logit."""
        x = self.features(embedding, scores)
        z = float(np.dot(self.weights[: self._split], x)) + self.bias
        if self.others is None or self.others_bias is None:
            return z
        rest = self.others @ x + self.others_bias
        top = float(rest.max())
        return z - top - math.log(float(np.exp(rest - top).sum()))

    def _probability(self, z: float) -> float:
        a, b = self.calibration
        z = a * z + b
        return 1.0 / (1.0 + math.exp(-z)) if z > -60 else 0.0

    def apply(self, embedding: F32, scores: F32, stats: F32 | None = None) -> float:
        """The calibrated probability (0..1) for one window; `stats` are the window's patch
        features (`patch_features_of`), used by a head with `patch_features`."""
        p = self._probability(self.logit(embedding, scores))
        if not self.patch_features or stats is None:
            return p
        z = float(np.dot(self.weights[self._split :], stats)) + float(self.patch_bias or 0.0)
        return 0.5 * (p + self._probability(z))

    def apply_many(self, embeddings: F32, scores: F32, stats: F32 | None = None) -> F32:
        """`apply` over rows: embeddings [n, 1024], scores [n, 521], stats [n, k]."""
        x = embeddings.astype(np.float32)
        if self.score_classes.size:
            x = np.concatenate([x, scores[:, self.score_classes]], axis=1)
        z = x @ self.weights[: self._split] + self.bias
        if self.others is not None and self.others_bias is not None:
            rest = x @ self.others.T + self.others_bias
            top = rest.max(axis=1)
            z = z - top - np.log(np.exp(rest - top[:, None]).sum(axis=1))
        out = self._probabilities(z.astype(np.float32))
        if self.patch_features and stats is not None:
            z = stats.astype(np.float32) @ self.weights[self._split :] + (self.patch_bias or 0.0)
            out = (0.5 * (out + self._probabilities(z))).astype(np.float32)
        return out

    def _probabilities(self, z: F32) -> F32:
        a, b = self.calibration
        z = a * z + b
        out: F32 = (1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))).astype(np.float32)
        return out


def save_head(path: Path, head: Head) -> None:
    """Writes `head` (standardisation already folded: mean 0, scale 1)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {  # Any: savez_compressed also has a keyword `allow_pickle`
        "weights": head.weights,
        "bias": np.array(head.bias, np.float32),
        "mean": np.zeros(head.inputs, np.float32),
        "scale": np.ones(head.inputs, np.float32),
        "score_classes": head.score_classes.astype(np.int32),
        "calibration": np.array(head.calibration, np.float32),
        "threshold": np.array(head.threshold, np.float64),
        "metadata": np.array(json.dumps(head.metadata, sort_keys=True)),
        "patch_features": np.array(head.patch_features),
        "patch_bias": np.array(head.patch_bias or 0.0, np.float32),
    }
    if head.others is not None and head.others_bias is not None:
        arrays |= {"others": head.others, "others_bias": head.others_bias}
    with path.open("wb") as handle:
        np.savez_compressed(handle, **arrays)


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
            arrays.update({k: np.asarray(data[k]) for k in OPTIONAL_KEYS if k in data})
            meta = json.loads(str(data["metadata"])) if "metadata" in data else {}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"{key}: cannot read {what} {path}: {exc}") from None
    return arrays, meta


def load_head(path: Path, classes: int = 521, key: str = "head") -> Head:
    """Reads a head file; a ConfigError naming `key` if it is missing or malformed."""
    arrays, meta = read_npz(path, KEYS, key)
    score_classes = arrays["score_classes"].astype(np.intp).reshape(-1)
    patch = str(arrays["patch_features"]) if "patch_features" in arrays else ""
    patch = patch or str(meta.get("patch_features") or "")
    patch_bias = float(
        arrays["patch_bias"] if "patch_bias" in arrays else meta.get("patch_bias", 0)
    )
    if patch and patch not in PATCH_FEATURES:
        raise ConfigError(
            f"{key}: {path} uses patch features {patch!r}, which this version does not know "
            f"(it knows {', '.join(sorted(PATCH_FEATURES))})"
        )
    inputs = EMBEDDING_SIZE + len(score_classes) + PATCH_FEATURES.get(patch, 0)
    shapes_ok = all(arrays[k].shape == (inputs,) for k in ("weights", "mean", "scale"))
    if not shapes_ok or arrays["calibration"].shape != (2,):
        raise ConfigError(f"{key}: {path} has weights for {arrays['weights'].shape}, not {inputs}")
    if score_classes.size and (score_classes.min() < 0 or score_classes.max() >= classes):
        raise ConfigError(f"{key}: {path} uses YAMNet scores outside 0..{classes - 1}")
    a, b = (float(v) for v in arrays["calibration"])
    others = None
    if "others" in arrays:
        w, bias = arrays["others"], arrays.get("others_bias", np.zeros(0))
        split = inputs - PATCH_FEATURES.get(patch, 0)
        if w.ndim != 2 or w.shape[1] != split or bias.shape != (w.shape[0],):
            raise ConfigError(f"{key}: {path} has other-class weights {w.shape}, not [k, {split}]")
        others = (w.astype(np.float32), bias.astype(np.float32))
    return Head.from_arrays(
        arrays["weights"].astype(np.float32),
        float(arrays["bias"]),
        arrays["mean"].astype(np.float32),
        arrays["scale"].astype(np.float32),
        score_classes,
        (a, b),
        float(arrays["threshold"]),
        meta,
        patch,
        patch_bias,
        others,
    )

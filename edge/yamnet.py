"""YAMNet on TFLite: scores for 521 AudioSet classes and the 1024-d embedding, one invoke.

Two variants: Google's waveform model (float32[15600] in) and Coral's fully-int8
`yamnet_spectra_in` (a [1, 96, 64] log-mel patch from `edge.frontend`). The embedding is
the int8 output of the model's mean-pool layer, read after the same invoke. A window also
carries the log-mel patch of its audio when there is one (always for Coral's model; for the
waveform model only with `keep_patch`, set when a head needs `edge.frontend.patch_stats`).
"""

from __future__ import annotations

import csv
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from edge.backend import TFLiteModel
from edge.errors import ModelError
from edge.frontend import PATCH_SAMPLES, LogMel, PatchStream

F32 = npt.NDArray[np.float32]
Variant = Literal["yamnet", "yamnet_spectra_in"]
EMBEDDING_TENSOR = "tower0/network/layer28/reduce_mean"
CLASSES = 521


@dataclass(frozen=True)
class Window:
    """One classified window; `end` is the absolute 16 kHz sample index just past it."""

    end: int
    scores: F32  # [521]
    embedding: F32  # [1024]
    silent: bool = False
    patch: F32 | None = None  # [96, 64] log-mel frames of the window, when computed


def labels_from_model(path: Path) -> list[str]:
    """The label list embedded in the model file's zip metadata."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith(".txt")]
            if not names:
                raise ModelError(f"{path}: no label list in the model's metadata")
            text = archive.read(names[0]).decode()
    except zipfile.BadZipFile:
        raise ModelError(f"{path}: no metadata with labels in this model") from None
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    if len(labels) != CLASSES:
        raise ModelError(f"{path}: {len(labels)} labels, expected {CLASSES}")
    return labels


def labels_from_class_map(path: Path) -> list[str]:
    """Labels from YAMNet's `yamnet_class_map.csv` (index, mid, display_name)."""
    with path.open(newline="") as handle:
        labels = [row["display_name"] for row in csv.DictReader(handle)]
    if len(labels) != CLASSES:
        raise ModelError(f"{path}: {len(labels)} labels, expected {CLASSES}")
    return labels


def silent_window(end: int) -> Window:
    return Window(end, np.zeros(CLASSES, np.float32), np.zeros(1024, np.float32), silent=True)


class Yamnet:
    """Classifies 0.975 s windows of 16 kHz float audio."""

    def __init__(self, path: Path, variant: Variant, labels: list[str], threads: int = 1) -> None:
        self.variant = variant
        self.labels = labels
        self._model = TFLiteModel(path, threads=threads, keep_intermediates=True)
        self._scores = int(self._model.outputs[0]["index"])
        self._embedding = self._model.tensor_index(EMBEDDING_TENSOR)
        self._emb_scale, self._emb_zero = self._model.quantization(self._embedding)
        self.frontend = LogMel() if variant == "yamnet_spectra_in" else None
        self._patches = PatchStream(self.frontend) if self.frontend is not None else None
        # the waveform model computes its features itself: a patch only on request
        self.keep_patch = False
        self._extra_patches: PatchStream | None = None
        expected = (1, 96, 64) if self.frontend else (PATCH_SAMPLES,)
        shape = tuple(int(x) for x in self._model.inputs[0]["shape"])
        if shape != expected:
            raise ModelError(f"{path}: input shape {shape} is not {variant}'s {expected}")

    @property
    def runtime(self) -> str:
        return self._model.runtime

    def classify(self, audio: F32, end: int) -> Window:
        """Scores and embedding of one window of exactly 15600 samples."""
        if not np.any(audio):  # digital silence: nothing to hear, skip the model
            return silent_window(end)
        if self._patches is not None:
            return self.classify_patch(self._patches.patch(audio, end - PATCH_SAMPLES), end)
        self._model.invoke(audio)
        patch = None
        if self.keep_patch:
            if self._extra_patches is None:
                self._extra_patches = PatchStream(LogMel())
            patch = self._extra_patches.patch(audio, end - PATCH_SAMPLES)
        return self._read(end, patch)

    def classify_patch(self, patch: F32, end: int) -> Window:
        """Coral's model on a ready [96, 64] log-mel patch (frames computed elsewhere)."""
        self._model.invoke(patch[None])
        return self._read(end, patch)

    def _read(self, end: int, patch: F32 | None = None) -> Window:
        scores = self._model.get(self._scores).reshape(-1).astype(np.float32)
        raw = self._model.get(self._embedding).reshape(-1).astype(np.float32)
        embedding = (raw - self._emb_zero) * self._emb_scale
        return Window(end, scores, embedding.astype(np.float32), patch=patch)

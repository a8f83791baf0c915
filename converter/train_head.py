"""Trains a linear head for one category on YAMNet embeddings of labelled clips.

Embeddings come from the device's own model (`edge.yamnet`, the same variant the daemon
runs). Every clip is cut into windows at `hop_s`, with `PAD_S` of silence on both sides so
a short sound is also seen off-centre, as in a live stream. A positive clip contributes its
windows within 10 dB of its loudest one (the sound, not the pauses around it); every other
clip contributes all its non-silent windows as negatives.

Evaluation is grouped cross-validation: clips cut from one recording share a group
(`recording_group`), and a group never straddles folds, so the scores are those of
recordings the head has not heard. A clip's score is its highest window score. The
operating threshold is chosen on the out-of-fold clip scores so that at most `target_fp`
of the negative clips would be flagged: the head's output is the class-balanced logistic
probability, and its calibrated operating point is that threshold.

A head may also have a second logistic part on statistics of the window's log-mel patch
(`edge.frontend.patch_stats`), its probability averaged with the embedding part's:
`DEFAULT_PATCH_FEATURES` says for which categories that measured better.

With `labels` (each clip's fine label: `labels.csv`'s `label` column, e.g. `speech`, `dog`,
`fireworks`) the embedding part is one multinomial logistic regression over those labels,
every positive clip labelled with the category, instead of "the category or anything else":
the head learns what else a sound could be, and the category's probability is its softmax
share. `DEFAULT_BY_LABEL` says for which categories that measured better.
"""

from __future__ import annotations

import csv
import logging
import math
import re
import shlex
import textwrap
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.frontend import PATCH_STATS, PATCH_STATS_SIZE, patch_stats_many
from edge.heads import Head

__all__ = ["ClipWindows", "Example", "Head", "TrainError", "train_head"]

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
SAMPLE_RATE = 16000
PAD_S = 0.5
POSITIVE_DB = 10.0
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
# Heads that also read the window's log-mel statistics (gain-invariant spectral envelope and
# its movement) in a second logistic head averaged with the embedding one: glass breaking
# gains clip recall at fewer `none` clips flagged and stream events (grouped CV, dev data);
# scream and gunshot lose clip recall that way, so they keep the embedding alone.
DEFAULT_PATCH_FEATURES = {"glass_break": PATCH_STATS}
# Heads whose training copies are also heard at random overall gains (dB): the noise-mixed
# threat copies, and as many copies of every other clip, so loudness alone tells nothing.
# A threat across a room reaches the microphone 20-40 dB below a close recording (the dev
# streams' events are 25-30 dB quieter than their source clips); for glass breaking this
# found more stream events at the same false alarms. Scream and gunshot, whose score is
# also YAMNet's own class group, gained no event and raised false alarms that way.
DEFAULT_GAIN_DB: dict[str, tuple[float, float]] = {"glass_break": (-30.0, 0.0)}
# Heads trained as one softmax over the clips' fine labels (`labels`): for gunshots the same
# figures at the shipped threshold and, below it, half the `none` clips and none of the dev
# streams' background flagged (grouped CV on the dev data); for screams it cost clip recall.
# A softmax over ~50 classes wants less regularisation: `BY_LABEL_C`.
DEFAULT_BY_LABEL = frozenset({"gunshot"})
BY_LABEL_C = 0.1


class TrainError(Exception):
    """The training data or options cannot make a head; the message says why."""


@dataclass(frozen=True)
class Example:
    path: Path
    category: str
    group: str
    label: str = ""  # the fine label (`labels.csv`'s `label`), e.g. `dog`; "" for none


@dataclass
class ClipWindows:
    """One clip's windows: scores [w, 521], embeddings [w, 1024], loudness [w] in dB and
    `edge.frontend.patch_stats` [w, 240] of their log-mel patches (zeros where silent)."""

    scores: F32
    embeddings: F32
    level_db: F32
    source: int = -1  # for an augmented copy, the index of the clip it was made from
    patch_stats: F32 | None = None

    def inputs(self, patch_features: str = "") -> F32:
        """The head inputs of every window: the embedding, then the patch features."""
        if not patch_features:
            return self.embeddings
        if patch_features != PATCH_STATS or self.patch_stats is None:
            raise TrainError(f"no {patch_features!r} features for these windows")
        return np.concatenate([self.embeddings, self.patch_stats], axis=1).astype(np.float32)


def recording_group(file: str) -> str:
    """A name shared by clips cut from one recording (chunk numbers and take indices removed).

    `x_chunk3.wav` -> `x`, `2-103426-A-3` (ESC-50: fold-source-take-class) -> `103426`,
    `AK-12__3_18_` -> `AK-12__3`, `maleScream-038` -> `maleScream`: the trailing take number
    goes, so numbered takes of one session share a group. Conservative on purpose: wrongly merged
    groups only make the cross-validation harder, wrongly split ones make it lie.
    """
    stem = Path(file).name
    stem = re.sub(r"\.(wav|flac|ogg|mp3)$", "", stem, flags=re.IGNORECASE)
    esc = re.search(r"(?:^|__)\d+-(\d+)-[A-Z]-\d+$", stem)
    if esc:
        return f"esc50:{esc.group(1)}"
    cbor = re.search(r"cbor\.([0-9a-z]+)\.", stem)
    if cbor:
        return f"rec:{cbor.group(1)}"
    stem = re.sub(r"_chunk\d+.*$", "", stem)
    return re.sub(r"[\s_\-(]*\d+[\s_)]*$", "", stem) or stem


def find_examples(data: Path) -> list[Example]:
    """Examples from a labels CSV (columns `file`, `category`, optional `group`), a folder
    holding `labels.csv`, or a folder with one subfolder of audio files per category."""
    if not data.exists():
        raise TrainError(f"{data} does not exist")
    csv_path = data / "labels.csv" if data.is_dir() else data
    if csv_path.is_file():
        return _from_csv(csv_path)
    examples = [
        Example(p, sub.name, f"{sub.name}/{recording_group(p.name)}")
        for sub in sorted(d for d in data.iterdir() if d.is_dir())
        for p in sorted(sub.rglob("*"))
        if p.suffix.lower() in AUDIO_SUFFIXES
    ]
    if not examples:
        raise TrainError(
            f"{data} holds no labels.csv and no audio files in per-category subfolders "
            f"({', '.join(AUDIO_SUFFIXES)})"
        )
    return examples


def read_labels(path: Path) -> list[dict[str, str]]:
    """The rows of a labels CSV: at least one, with the columns `file` and `category`."""
    try:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TrainError(f"cannot read {path}: {exc}") from None
    if not rows or not {"file", "category"} <= set(rows[0]):
        raise TrainError(f"{path} needs the columns `file` and `category` and at least one row")
    return rows


def _from_csv(path: Path) -> list[Example]:
    out = []
    for row in read_labels(path):
        clip = path.parent / row["file"]
        group = row.get("group") or recording_group(row["file"])
        group = f"{Path(row['file']).parent}/{group}"
        out.append(Example(clip, row["category"], group, row.get("label") or row["category"]))
    missing = [e.path for e in out if not e.path.is_file()]
    if missing:
        raise TrainError(
            f"{path} names {len(missing)} clip(s) that are missing or not files, "
            f"the first {missing[0]}"
        )
    return out


def window_levels(audio: F32, hop: int, pad: int, count: int, size: int = 15600) -> F32:
    """Loudness (dB RMS) of `count` windows of `size` every `hop` over the padded audio."""
    padded = np.concatenate([np.zeros(pad, np.float32), audio, np.zeros(pad, np.float32)])
    padded = np.concatenate([padded, np.zeros(max(0, size - len(padded)), np.float32)])
    energy = np.concatenate([[0.0], np.cumsum(padded.astype(np.float64) ** 2)])
    starts = np.arange(count) * hop
    mean = (energy[starts + size] - energy[starts]) / size
    levels: F32 = (10 * np.log10(mean + 1e-12)).astype(np.float32)
    return levels


def read_clip(path: Path) -> F32:
    """A clip as 16 kHz mono float32."""
    import soundfile as sf

    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (OSError, RuntimeError) as exc:
        raise TrainError(f"cannot read {path}: {exc}") from None
    audio: F32 = data.mean(axis=1).astype(np.float32)
    if rate != SAMPLE_RATE:
        import soxr

        audio = soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32)
    return audio


def mix(signal: F32, noise: F32, snr_db: float, rng: np.random.Generator) -> F32:
    """`signal` with a random stretch of `noise` (looped if short) at `snr_db` (RMS ratio)."""
    reps = int(np.ceil((len(signal) + 1) / max(len(noise), 1)))
    looped = np.tile(noise, reps + 1)
    offset = int(rng.integers(0, max(1, len(looped) - len(signal))))
    part = looped[offset : offset + len(signal)]
    power_s = float(np.mean(signal.astype(np.float64) ** 2))
    power_n = float(np.mean(part.astype(np.float64) ** 2))
    if power_s <= 0 or power_n <= 0:
        return signal
    gain = np.sqrt(power_s / (power_n * 10 ** (snr_db / 10)))
    mixed = signal + gain * part
    peak = float(np.abs(mixed).max())
    out: F32 = (mixed / peak if peak > 1 else mixed).astype(np.float32)
    return out


def model_file(name: str, model_dir: Path) -> Path:
    """The verified file of the manifest's model `name` in `model_dir`; a ModelError saying
    which file is missing where, and how to get it, otherwise."""
    from edge.errors import ModelError
    from edge.models import load_manifest, verify

    spec = load_manifest()[name]
    if not (model_dir / spec.file).is_file():
        fetch = f"safeguard models fetch --dir {shlex.quote(str(model_dir))}"
        raise ModelError(
            f"model {name} is missing: no {spec.file} in {model_dir}; get the models with "
            f"`{fetch}` (or point --models at the folder that has them)"
        )
    return verify(spec, model_dir)


def _load_model(model_dir: Path, variant: str) -> Any:
    from edge.yamnet import Yamnet, labels_from_class_map, labels_from_model

    if variant == "yamnet":
        path = model_file("yamnet", model_dir)
        model = Yamnet(path, "yamnet", labels_from_model(path))
        model.keep_patch = True  # for the patch statistics
        return model
    labels = labels_from_class_map(model_file("yamnet_class_map", model_dir))
    path = model_file("yamnet_spectra_in", model_dir)
    return Yamnet(path, "yamnet_spectra_in", labels)


def window_patch_stats(windows: Sequence[Any]) -> F32:
    """`patch_stats` of each window's patch [w, 240]; zeros for a window without one. In
    blocks of 16 (`patch_stats_many`: the same figures, faster)."""
    out = np.zeros((len(windows), PATCH_STATS_SIZE), np.float32)
    have = [i for i, w in enumerate(windows) if w.patch is not None]
    for first in range(0, len(have), 16):
        rows = have[first : first + 16]
        out[rows] = patch_stats_many(np.stack([windows[i].patch for i in rows]))
    return out


def clip_windows(model: Any, audio: F32, hop_s: float, source: int = -1) -> ClipWindows:
    """Every window of `audio` padded with `PAD_S` of silence on both sides."""
    hop, pad = round(hop_s * SAMPLE_RATE), round(PAD_S * SAMPLE_RATE)
    padded = np.concatenate([np.zeros(pad, np.float32), audio, np.zeros(pad, np.float32)])
    padded = np.concatenate([padded, np.zeros(max(0, 15600 - len(padded)), np.float32)])
    windows = [
        model.classify(padded[s : s + 15600], s + 15600)
        for s in range(0, len(padded) - 15600 + 1, hop)
    ]
    return ClipWindows(
        np.stack([w.scores for w in windows]),
        np.stack([w.embedding for w in windows]),
        window_levels(audio, hop, pad, len(windows)),
        source,
        window_patch_stats(windows),
    )


def extract(
    examples: Sequence[Example],
    model_dir: Path,
    variant: str = "yamnet",
    hop_s: float = 0.25,
    progress: Callable[[int, int], None] | None = None,
    *,
    augment: int = 0,
    augment_categories: Collection[str] = (),
    snr_db: tuple[float, float] = (0.0, 20.0),
    gain_db: tuple[float, float] | None = None,
    seed: int = 0,
) -> list[ClipWindows]:
    """Windows of every example through the device's own YAMNet (one invoke per window).

    With `augment` > 0, each clip of `augment_categories` is also mixed `augment` times into
    random clips of the other categories (real background) at an SNR drawn from `snr_db`,
    as it would be heard in a room; those copies follow their source clip into its fold.
    With `gain_db`, each mixed copy is scaled by a gain drawn from it (a distant source), and
    every clip of the other categories gets `augment` copies at such gains too.
    """
    model = _load_model(model_dir, variant)
    rng = np.random.default_rng(seed)
    out = [clip_windows(model, read_clip(e.path), hop_s) for e in _progress(examples, progress)]
    if augment > 0:
        noise = [i for i, e in enumerate(examples) if e.category not in augment_categories]
        sources = [i for i, e in enumerate(examples) if e.category in augment_categories]
        jobs = [
            (i, int(rng.choice(noise)), float(rng.uniform(*snr_db)))
            for _ in range(augment)
            for i in sources
        ]
        for i, n, snr in _progress(jobs, progress):
            audio = mix(read_clip(examples[i].path), read_clip(examples[n].path), snr, rng)
            if gain_db is not None:
                audio = _scaled(audio, gain_db, rng)
            out.append(clip_windows(model, audio, hop_s, source=i))
        if gain_db is not None:
            quiet = [i for _ in range(augment) for i in noise]
            for i in _progress(quiet, progress):
                audio = _scaled(read_clip(examples[i].path), gain_db, rng)
                out.append(clip_windows(model, audio, hop_s, source=i))
    return out


def _scaled(audio: F32, gain_db: tuple[float, float], rng: np.random.Generator) -> F32:
    """`audio` at a gain (dB) drawn uniformly from `gain_db`."""
    out: F32 = (audio * 10 ** (rng.uniform(*gain_db) / 20)).astype(np.float32)
    return out


def _progress(items: Sequence[Any], progress: Callable[[int, int], None] | None) -> Any:
    for i, item in enumerate(items):
        yield item
        if progress is not None:
            progress(i + 1, len(items))


def origins(clips: Sequence[ClipWindows]) -> npt.NDArray[np.intp]:
    """For each clip, the index of the original clip it is (or was mixed from)."""
    return np.array([i if c.source < 0 else c.source for i, c in enumerate(clips)], np.intp)


def training_windows(
    clips: Sequence[ClipWindows],
    positive: Sequence[bool] | npt.NDArray[np.bool_],
    patch_features: str = "",
) -> tuple[F32, npt.NDArray[np.int8], npt.NDArray[np.intp]]:
    """(inputs, labels, original clip index) of the windows that train the head;
    `positive` is per original clip, augmented copies take their source's label."""
    xs, ys, owners = [], [], []
    source = origins(clips)
    for clip, i in zip(clips, source, strict=True):
        pos = bool(positive[i])
        audible = clip.level_db > -90.0
        if pos:
            audible &= clip.level_db >= clip.level_db.max() - POSITIVE_DB
        idx = np.flatnonzero(audible)
        xs.append(clip.inputs(patch_features)[idx])
        ys.append(np.full(len(idx), int(pos), np.int8))
        owners.append(np.full(len(idx), i, np.intp))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(owners)


@dataclass(frozen=True)
class CrossValidation:
    clip_scores: F32  # out-of-fold clip score (highest window logit)
    folds: int


def _fit(x: F32, y: npt.NDArray[np.int8] | npt.NDArray[np.str_], c: float) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(
        StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=2000)
    )
    model.fit(x, y)
    return model


class _Softmax:
    """A multinomial pipeline over fine labels, read as its class `positive` against the
    rest: `decision_function` is that class's logit minus the log-sum-exp of the others'
    (the log-odds of its softmax share)."""

    def __init__(self, x: F32, labels: npt.NDArray[np.str_], positive: str, c: float) -> None:
        self.pipeline = _fit(x, labels, c)
        self.index = list(self.pipeline.classes_).index(positive)

    def parts(self) -> tuple[Any, F32, float, tuple[F32, F32]]:
        """(scaler, the class's weights, its bias, (the others' weights, their biases))."""
        scaler, logistic = self.pipeline.steps[0][1], self.pipeline.steps[1][1]
        coef, bias = logistic.coef_.astype(np.float32), logistic.intercept_.astype(np.float32)
        others = (np.delete(coef, self.index, axis=0), np.delete(bias, self.index))
        return scaler, coef[self.index], float(bias[self.index]), others

    def decision_function(self, x: F32) -> F32:
        z = self.pipeline.decision_function(x)
        rest = np.delete(z, self.index, axis=1)
        top = rest.max(axis=1)
        log_rest = top + np.log(np.exp(rest - top[:, None]).sum(axis=1))
        out: F32 = (z[:, self.index] - log_rest).astype(np.float32)
        return out


def _fit_models(
    x: F32,
    y: npt.NDArray[np.int8],
    c: float,
    patch_features: str,
    labels: npt.NDArray[np.str_] | None = None,
    *,
    positive: str = "",
) -> list[Any]:
    """One pipeline on the embedding (with `labels`, a softmax over them: `_Softmax`); with
    `patch_features` (the last columns of `x`) a second one on those alone, whose
    probability `_decision` averages with the first's."""
    split = x.shape[1] - (PATCH_STATS_SIZE if patch_features else 0)
    if labels is not None and len(set(labels)) > 2:
        first: Any = _Softmax(x[:, :split], labels, positive, c)
    else:
        first = _fit(x[:, :split], y, c)
    return [first, _fit(x[:, split:], y, c)] if patch_features else [first]


def _decision(models: Sequence[Any], x: F32) -> F32:
    """The raw logit of each row: of the single model, or of the averaged probability."""
    if len(models) == 1:
        out: F32 = models[0].decision_function(x).astype(np.float32)
        return out
    split = x.shape[1] - PATCH_STATS_SIZE
    p = 0.5 * (
        sigmoid(models[0].decision_function(x[:, :split]))
        + sigmoid(models[1].decision_function(x[:, split:]))
    )
    p = np.clip(p.astype(np.float64), 1e-12, 1 - 1e-12)
    logit: F32 = (np.log(p) - np.log1p(-p)).astype(np.float32)
    return logit


def cross_validate(
    clips: Sequence[ClipWindows],
    positive: Sequence[bool] | npt.NDArray[np.bool_],
    groups: Sequence[str],
    c: float = 0.01,
    folds: int = 5,
    *,
    patch_features: str = "",
    labels: Sequence[str] | None = None,
    category: str = "",
) -> CrossValidation:
    """Out-of-fold scores with StratifiedGroupKFold over recordings; `positive`, `groups`
    and `labels` (fine labels, for a softmax head) are per original clip (the first of
    `clips`), augmented copies follow their source."""
    from sklearn.model_selection import StratifiedGroupKFold

    pos = np.array(positive)
    group_ids = np.unique(np.array(groups), return_inverse=True)[1]
    n_pos_groups = len(set(group_ids[pos]))
    folds = min(folds, n_pos_groups, len(set(group_ids[~pos])))
    if folds < 2:
        raise TrainError(
            "cross-validation needs recordings from at least 2 groups of each class "
            f"(positives come from {n_pos_groups} group(s))"
        )
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=0)
    clip_scores = np.full(len(pos), np.nan, np.float32)
    x, y, owner = training_windows(clips, positive, patch_features)
    fine = _window_labels(labels, positive, category, owner)
    for k, (train, test) in enumerate(splitter.split(np.zeros(len(pos)), pos, group_ids)):
        in_train = np.isin(owner, train)
        part = None if fine is None else fine[in_train]
        models = _fit_models(x[in_train], y[in_train], c, patch_features, part, positive=category)
        for i in test:
            inputs = clips[i].inputs(patch_features)
            clip_scores[i] = float(_decision(models, inputs).max())
        log.info("fold %d/%d done", k + 1, folds)
    return CrossValidation(clip_scores, folds)


def clip_labels(
    labels: Sequence[str] | None,
    positive: Sequence[bool] | npt.NDArray[np.bool_],
    category: str,
) -> npt.NDArray[np.str_] | None:
    """The classes of a softmax head, per original clip: `category` for a positive clip, a
    negative clip's own fine label (kept apart from the positives if it is `category` too)."""
    if labels is None:
        return None
    return np.array(
        [
            category if p else (lab if lab != category else f"not {lab}")
            for lab, p in zip(labels, positive, strict=True)
        ]
    )


def _window_labels(
    labels: Sequence[str] | None,
    positive: Sequence[bool] | npt.NDArray[np.bool_],
    category: str,
    owner: npt.NDArray[np.intp],
) -> npt.NDArray[np.str_] | None:
    """Each training window's class (its clip's, `clip_labels`)."""
    per_clip = clip_labels(labels, positive, category)
    return None if per_clip is None else per_clip[owner]


def sigmoid(z: F32 | float) -> F32:
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -60, 60))), np.float32)


def choose_threshold(negative_scores: F32, target_fp: float) -> float:
    """The lowest score that flags at most `target_fp` of the negatives."""
    ordered = np.sort(negative_scores)[::-1]
    allowed = int(np.floor(target_fp * len(ordered)))
    return float(np.nextafter(ordered[allowed], np.float32(np.inf))) if len(ordered) else 0.5


def metrics(
    clip_logits: F32, positive: npt.NDArray[np.bool_], threshold: float
) -> dict[str, float]:
    """AUC, recall and share of negatives flagged, on logits (probabilities saturate)."""
    from sklearn.metrics import roc_auc_score

    return {
        "auc": float(roc_auc_score(positive, clip_logits)),
        "recall": float((clip_logits[positive] >= threshold).mean()),
        "fp_rate": float((clip_logits[~positive] >= threshold).mean()),
    }


def fit_head(
    clips: Sequence[ClipWindows],
    positive: Sequence[bool] | npt.NDArray[np.bool_],
    c: float = 0.01,
    threshold: float = 0.5,
    metadata: dict[str, Any] | None = None,
    *,
    patch_features: str = "",
    labels: Sequence[str] | None = None,
    category: str = "",
) -> Head:
    """A head trained on every (training) window of `clips`: on the embedding (with `labels`,
    per original clip, a softmax over them whose share of `category` it gives) and, if
    `patch_features` (`edge.frontend.PATCH_STATS`) are named, a second one on those whose
    probability is averaged with the first's (`edge.heads.Head`)."""
    x, y, owner = training_windows(clips, positive, patch_features)
    if y.min() == y.max():
        raise TrainError("the training windows are all of one class")
    fine = _window_labels(labels, positive, category, owner)
    models = _fit_models(x, y, c, patch_features, fine, positive=category)
    parts = [
        m.parts() if isinstance(m, _Softmax) else (m.steps[0][1], *_binary(m.steps[1][1]), None)
        for m in models
    ]
    return Head.from_arrays(
        np.concatenate([p[1] for p in parts]).astype(np.float32),
        parts[0][2],
        np.concatenate([p[0].mean_ for p in parts]).astype(np.float32),
        np.concatenate([p[0].scale_ for p in parts]).astype(np.float32),
        np.zeros(0, np.intp),
        (1.0, 0.0),
        threshold,
        metadata,
        patch_features,
        parts[-1][2] if patch_features else 0.0,
        parts[0][3],
    )


def _binary(logistic: Any) -> tuple[F32, float]:
    """A binary logistic regression's weights and bias."""
    return logistic.coef_[0].astype(np.float32), float(logistic.intercept_[0])


def train_head(
    clips: Sequence[ClipWindows],
    categories: Sequence[str],
    groups: Sequence[str],
    category: str,
    *,
    c: float = 0.01,
    folds: int = 5,
    target_fp: float = 0.005,
    min_per_class: int = 10,
    patch_features: str | None = None,
    labels: Sequence[str] | None = None,
) -> tuple[Head, dict[str, Any]]:
    """The head for `category` trained on every clip, with its cross-validated report;
    `categories`, `groups` and `labels` (fine labels, for a softmax head) are per original
    clip (augmented copies come after them). `patch_features` defaults to the category's
    entry in `DEFAULT_PATCH_FEATURES`."""
    if patch_features is None:
        patch_features = DEFAULT_PATCH_FEATURES.get(category, "")
    positive = np.array([cat == category for cat in categories])
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos < min_per_class or n_neg < min_per_class:
        raise TrainError(
            f"too few examples: {n_pos} clip(s) of {category!r} and {n_neg} other clip(s); "
            f"need at least {min_per_class} of each"
        )
    classes = clip_labels(labels, positive, category)
    started = time.monotonic()
    cv = cross_validate(
        clips,
        positive,
        groups,
        c,
        folds,
        patch_features=patch_features,
        labels=labels,
        category=category,
    )
    logit_threshold = choose_threshold(cv.clip_scores[~positive], target_fp)
    threshold = 1.0 / (1.0 + math.exp(-min(max(logit_threshold, -60.0), 60.0)))
    report = {
        "category": category,
        "clips": {"positive": n_pos, "negative": n_neg, "augmented": len(clips) - len(positive)},
        "groups": {"positive": len(set(np.array(groups)[positive])), "all": len(set(groups))},
        "folds": cv.folds,
        "C": c,
        "patch_features": patch_features,
        "by_label": None if classes is None else sorted(set(classes[~positive])),
        "target_fp": target_fp,
        "threshold": threshold,
        "logit_threshold": round(logit_threshold, 3),
        "cv": {
            k: round(v, 4) for k, v in metrics(cv.clip_scores, positive, logit_threshold).items()
        },
    }
    head = fit_head(
        clips,
        positive,
        c,
        threshold,
        report,
        patch_features=patch_features,
        labels=labels,
        category=category,
    )
    log.info("trained %s in %.1f s: %s", category, time.monotonic() - started, report["cv"])
    return head, head.metadata  # the report, with what fitting added (`patch_bias`)


def model_card(metadata: dict[str, Any], examples: Sequence[Example]) -> str:
    """A short Markdown model card for a trained head."""
    cv = metadata["cv"]
    counts: dict[str, int] = {}
    for example in examples:
        counts[example.category] = counts.get(example.category, 0) + 1
    data = ", ".join(f"{n} {c}" for c, n in sorted(counts.items()))
    patch = ""
    if metadata.get("patch_features"):
        patch = (
            f"\nIts probability is averaged with that of a second such head (same C) on the "
            f"{PATCH_STATS_SIZE}\n`{metadata['patch_features']}` statistics of the window's "
            "log-mel patch (`edge.frontend.patch_stats`).\n"
        )
    if metadata.get("by_label"):
        others = metadata["by_label"]
        shown = ", ".join(others[:6]) + (", ..." if len(others) > 6 else "")
        text = (
            f"The embedding part is one softmax (multinomial logistic regression) over "
            f"{len(others) + 1} fine labels of the training clips: `{metadata['category']}` for "
            f"every positive clip, the others' own labels ({shown}); the category's "
            "probability is its softmax share."
        )
        patch += "\n" + textwrap.fill(text, 92) + "\n"
    copies = ""
    if metadata.get("augment"):
        low, high = metadata["snr_db"]
        copies = (
            f"- Training copies: each positive clip mixed {metadata['augment']} times into "
            f"random other clips at {low:g} to {high:g} dB SNR"
        )
        if metadata.get("gain_db"):
            quiet, loud = metadata["gain_db"]
            copies += (
                f", each copy at a random gain of {quiet:g} to {loud:g} dB, and "
                f"{metadata['augment']} copies of every other clip at such gains (a distant "
                "source; loudness alone tells nothing)"
            )
        copies += "; copies follow their source clip into its fold."
        copies = textwrap.fill(copies, 92, subsequent_indent="  ") + "\n"
    return f"""# Head: {metadata["category"]}

A logistic-regression head (class-balanced, L2, C={metadata["C"]}) on the 1024-d embedding
of `{metadata["variant"]}`, applied per window by `edge.heads` (numpy only). Its threshold
is calibrated by grouped cross-validation to flag at most {metadata["target_fp"]:.1%} of the
other clips.
{patch}
- Training data: `{metadata["data"]}` ({data} clips; {metadata["groups"]["all"]} recording
  groups, {metadata["groups"]["positive"]} of them positive). Positive windows are a positive
  clip's windows within {POSITIVE_DB:.0f} dB of its loudest; every window of other clips is
  negative.
{copies}- Windows every {metadata["hop_s"]} s, clips padded with {PAD_S} s of silence on both sides.
- Cross-validation: {metadata["folds"]}-fold StratifiedGroupKFold; clips of one recording
  (`converter.train_head.recording_group`) never straddle folds. A clip's score is its
  highest window score.

| clip AUC | recall | other clips flagged | threshold (target {metadata["target_fp"]:.1%}) | logit |
|---|---|---|---|---|
| {cv["auc"]:.3f} | {cv["recall"]:.3f} | {cv["fp_rate"]:.2%} | {metadata["threshold"]:.6f} | \
{metadata["logit_threshold"]} |

These are cross-validated figures on the development data, not on held-out recordings.

Reproduce:

```
{metadata["command"]}
```
"""

"""The two peer approaches measured beside Safeguard, and their report on the dev data.

- `FrigateRule`: Frigate's audio events (YAMNet, 0.975 s windows, one window over 0.8 is an event).
- `ClassicForest`: the hobby scream detector recipe (librosa MFCC, chroma, ZCR and RMS
  statistics, a scikit-learn random forest, SMOTE on the training set).

`python -m bench.peers [--data DIR] [--model PATH]` evaluates both on the dev set and prints
markdown tables: clip recall and `none` clips flagged per category (the forest by grouped
5-fold cross-validation), and stream events found, false alarms per hour and median latency.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr

from bench.metrics import NONE, Detection, clip_metrics, pooled_stream_metrics
from edge.yamnet import Yamnet, labels_from_model

__all__ = [
    "CATEGORIES",
    "ClassicForest",
    "Detection",
    "FrigateRule",
    "classic_cross_validated_clip_flags",
    "classic_cross_validated_clip_predictions",
    "load_audio",
    "recording_group",
]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
SR = 16000
CATEGORIES = ("scream", "gunshot", "glass_break")
ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(__file__).resolve().parent / "cache"


def load_audio(path: Path) -> F32:
    """float32 mono 16 kHz samples of an audio file (downmixed and resampled if needed)."""
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    mono = data.mean(axis=1, dtype=np.float32)
    if rate != SR:
        mono = soxr.resample(mono, rate, SR)
    return np.ascontiguousarray(mono, dtype=np.float32)


def _merge(
    hits: Sequence[tuple[int, str, float]], start_of: float, length_s: float, alert_after: float
) -> list[Detection]:
    """Runs of consecutive hit windows (index, category, score) -> one Detection per run.

    Window i starts at `i * start_of` seconds and lasts `length_s`; its alert can be raised
    `alert_after` seconds after its start (once its last sample is in).
    """
    detections: list[Detection] = []
    runs: dict[str, tuple[int, int, float]] = {}  # category -> (first, last, peak)

    def close(category: str) -> None:
        first, last, peak = runs.pop(category)
        start = first * start_of
        detections.append(
            Detection(category, start, last * start_of + length_s, start + alert_after, peak)
        )

    for index, category, score in sorted(hits):
        run = runs.get(category)
        if run is not None and index <= run[1] + 1:
            runs[category] = (run[0], index, max(run[2], score))
            continue
        if run is not None:
            close(category)
        runs[category] = (index, index, score)
    for category in list(runs):
        close(category)
    return sorted(detections, key=lambda d: (d.start_s, d.category))


# --- Frigate ----------------------------------------------------------------------------

# Frigate's audio-labelmap.txt gives each of YAMNet's 521 classes (same order) a Frigate label;
# these are the YAMNet class indices behind the labels used here, with their display names.
FRIGATE_LABEL_CLASSES: dict[str, dict[int, str]] = {
    "yell": {6: "Shout", 9: "Yell", 10: "Children shouting", 11: "Screaming", 22: "Wail, moan"},
    "gunshot": {421: "Gunshot, gunfire"},
    "glass": {435: "Glass"},
    "shatter": {437: "Shatter"},
}
FRIGATE_LISTEN: dict[str, tuple[str, ...]] = {
    "scream": ("yell",),
    "gunshot": ("gunshot",),
    "glass_break": ("glass", "shatter"),
}
FRIGATE_WINDOW = 15600  # AUDIO_DURATION 0.975 s at 16 kHz, read back to back
FRIGATE_TOP_K = 20  # Frigate only looks at the 20 best classes of a window
INT16_FULL_SCALE = 32768.0


class FrigateRule:
    """Frigate's audio events, as in blakeblackshear/frigate `frigate/events/audio.py`.

    What Frigate does: ffmpeg delivers 16 kHz mono int16; chunks of 0.975 s (15600 samples)
    are read back to back (no overlap). A chunk is classified only if its RMS on the int16
    scale is at least `audio.min_volume` (default 500, about -36 dBFS). YAMNet scores the
    chunk; Frigate keeps the 20 best classes scoring >= 0.4, names each by its line in
    `audio-labelmap.txt` (one Frigate label per YAMNet class, so several classes can share a
    label) and reports every one scoring >= the label's filter threshold (default 0.8) whose
    label is in `audio.listen`. One such window starts an event (no smoothing); it ends after
    `max_not_heard` (30 s) without another.

    Mapped here: `scream` <- Frigate label `yell` (YAMNet Shout, Yell, Children shouting,
    Screaming, Wail/moan; in the labelmap read for this, Screaming is one of `yell`'s
    classes, while Frigate's newest config defaults also name a `scream` label);
    `gunshot` <- `gunshot` (Gunshot, gunfire only: Machine gun, Fusillade, Artillery fire
    and Cap gun carry their own labels, which a user would have to add); `glass_break` <-
    `glass` (Glass) and `shatter` (Shatter), the two labels Frigate's docs name for glass.
    A window is a hit for a category when one of its classes is among the window's 20 best
    and scores >= `threshold`; consecutive hit windows merge into one detection
    (`max_not_heard` is not modelled, so a burst with a gap of one quiet window counts as
    two). The alert is due when the first hit window is complete. Digital silence is not
    classified (our wrapper skips it; the gate would too).
    The last partial window is zero-padded, so short clips are heard at least once.
    """

    def __init__(
        self,
        yamnet_path: Path,
        threshold: float = 0.8,
        *,
        min_volume: float = 500.0,
        listen: dict[str, tuple[str, ...]] | None = None,
    ) -> None:
        labels = labels_from_model(yamnet_path)
        self.threshold = threshold
        self.min_rms = min_volume / INT16_FULL_SCALE
        self._yamnet = Yamnet(yamnet_path, "yamnet", labels)
        self._classes: dict[str, npt.NDArray[np.intp]] = {}
        for category, frigate_labels in (listen or FRIGATE_LISTEN).items():
            indices: list[int] = []
            for label in frigate_labels:
                for index, name in FRIGATE_LABEL_CLASSES[label].items():
                    if labels[index] != name:
                        raise ValueError(
                            f"{yamnet_path}: class {index} is {labels[index]!r}, not {name!r}"
                        )
                    indices.append(index)
            self._classes[category] = np.array(indices, dtype=np.intp)

    def detect(self, audio: F32) -> list[Detection]:
        count = max(1, math.ceil(len(audio) / FRIGATE_WINDOW))
        padded = np.zeros(count * FRIGATE_WINDOW, np.float32)
        padded[: len(audio)] = audio
        hits: list[tuple[int, str, float]] = []
        for i in range(count):
            window = padded[i * FRIGATE_WINDOW : (i + 1) * FRIGATE_WINDOW]
            if float(np.sqrt(np.mean(np.square(window, dtype=np.float64)))) < self.min_rms:
                continue
            scores = self._yamnet.classify(window, end=(i + 1) * FRIGATE_WINDOW).scores
            top = np.argpartition(-scores, FRIGATE_TOP_K)[:FRIGATE_TOP_K]
            for category, classes in self._classes.items():
                ranked = classes[np.isin(classes, top)]
                if ranked.size == 0:
                    continue
                score = float(scores[ranked].max())
                if score >= self.threshold:
                    hits.append((i, category, score))
        length = FRIGATE_WINDOW / SR
        return _merge(hits, length, length, length)


# --- the classic forest -----------------------------------------------------------------

N_FFT = 2048  # librosa's default, as the hobby projects use it
HOP = 500  # librosa's is 512; 500 gives 32 frames per second, so windows fall on whole frames
N_MFCC = 27
WINDOW_FRAMES = 32  # 1.0 s
HOP_FRAMES = 16  # 0.5 s
FEATURES_VERSION = "classic-1"


def frame_features(audio: F32) -> F32:
    """Per librosa frame (centred, hop 500): 27 MFCC, their deltas, 12 chroma, ZCR, RMS."""
    import librosa

    y = audio if len(audio) >= SR else np.pad(audio, (0, SR - len(audio)))
    magnitude = np.abs(librosa.stft(y, n_fft=N_FFT, hop_length=HOP))
    power = magnitude**2
    mel = librosa.feature.melspectrogram(S=power, sr=SR)
    mfcc = librosa.feature.mfcc(S=librosa.power_to_db(mel), n_mfcc=N_MFCC)
    delta = librosa.feature.delta(mfcc, mode="nearest")
    chroma = librosa.feature.chroma_stft(S=power, sr=SR, tuning=0.0)
    zcr = librosa.feature.zero_crossing_rate(y, frame_length=N_FFT, hop_length=HOP)
    rms = librosa.feature.rms(S=magnitude, frame_length=N_FFT, hop_length=HOP)
    frames = min(m.shape[1] for m in (mfcc, chroma, zcr, rms))
    stacked = np.vstack([m[:, :frames] for m in (mfcc, delta, chroma, zcr, rms)])
    return np.ascontiguousarray(stacked.T, dtype=np.float32)


def window_features(frames: F32) -> F32:
    """Statistics of 1 s windows every 0.5 s: mean and std of MFCC, std of their deltas,
    mean chroma, mean and std of ZCR and RMS (97 values per window)."""
    count = 1 + (len(frames) - WINDOW_FRAMES) // HOP_FRAMES if len(frames) >= WINDOW_FRAMES else 0
    rows: list[F32] = []
    for w in range(count):
        f = frames[w * HOP_FRAMES : w * HOP_FRAMES + WINDOW_FRAMES]
        mfcc, delta = f[:, :N_MFCC], f[:, N_MFCC : 2 * N_MFCC]
        chroma, tail = f[:, 2 * N_MFCC : 2 * N_MFCC + 12], f[:, 2 * N_MFCC + 12 :]
        rows.append(
            np.concatenate(
                [mfcc.mean(0), mfcc.std(0), delta.std(0), chroma.mean(0), tail.mean(0), tail.std(0)]
            ).astype(np.float32)
        )
    return np.stack(rows) if rows else np.zeros((0, 3 * N_MFCC + 12 + 4), np.float32)


def classic_features(audio: F32, cache_dir: Path | None = None) -> F32:
    """`window_features(frame_features(audio))`, kept in `cache_dir` by the audio's hash."""
    if cache_dir is None:
        return window_features(frame_features(audio))
    digest = hashlib.blake2b(audio.tobytes(), digest_size=16)
    digest.update(FEATURES_VERSION.encode())
    path = cache_dir / f"{digest.hexdigest()}.npy"
    if path.is_file():
        cached: F32 = np.load(path)
        return cached
    features = window_features(frame_features(audio))
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(path, features)
    return features


class ClassicForest:
    """The classic approach of hobby scream detectors, made to run on a stream.

    Modelled on e.g. Varikelavarun369/Human-Scream-Detection-System (librosa MFCC 27, chroma,
    ZCR and RMS averaged over time, SMOTE, RandomForestClassifier) and
    Ddk09/Human_Scream_Detection_System (MFCC, ZCR, random forest on live 1 s chunks). Those
    average features over a whole file; here the same statistics (plus standard deviations
    and MFCC deltas, which only help the forest) are taken over 1 s windows every 0.5 s, both
    in training (every window of a clip carries the clip's category) and in detection, so
    the model can run on long audio. Four classes (three threats and `none`); SMOTE balances
    the training windows; a window is a hit for the class the forest votes for when that
    class is not `none` (plain `predict`, as the hobby code does). Consecutive hit windows of
    one category merge; the alert is due once the first hit window's last frame is in.
    """

    def __init__(self, trees: int = 200, seed: int = 0, *, cache_dir: Path | None = None) -> None:
        self.trees = trees
        self.seed = seed
        self.cache_dir = cache_dir
        self._forest: object | None = None
        self._classes: list[str] = []

    def fit(self, audios: list[F32], categories: list[str]) -> ClassicForest:
        features = [classic_features(a, self.cache_dir) for a in audios]
        return self.fit_features(features, categories)

    def fit_features(self, features: Sequence[F32], categories: Sequence[str]) -> ClassicForest:
        """`fit` on precomputed `classic_features` of each clip."""
        from imblearn.over_sampling import SMOTE
        from sklearn.ensemble import RandomForestClassifier

        x = np.concatenate(list(features))
        y = np.concatenate([[c] * len(f) for f, c in zip(features, categories, strict=True)])
        smallest = min(int((y == c).sum()) for c in set(y.tolist()))
        if len(set(y.tolist())) > 1 and smallest > 1:
            smote = SMOTE(random_state=self.seed, k_neighbors=min(5, smallest - 1))
            x, y = smote.fit_resample(x, y)
        forest = RandomForestClassifier(n_estimators=self.trees, random_state=self.seed, n_jobs=1)
        forest.fit(x, y)
        self._forest = forest
        self._classes = [str(c) for c in forest.classes_]
        return self

    def detect(self, audio: F32) -> list[Detection]:
        return self.detect_features(classic_features(audio, self.cache_dir), len(audio))

    def detect_features(self, features: F32, samples: int) -> list[Detection]:
        """`detect` on precomputed `classic_features` of `samples` samples of audio."""
        if self._forest is None:
            raise RuntimeError("ClassicForest.detect before fit")
        if len(features) == 0:
            return []
        proba: F64 = self._forest.predict_proba(features)  # type: ignore[attr-defined]
        best = proba.argmax(axis=1)
        hits = [
            (i, self._classes[k], float(proba[i, k]))
            for i, k in enumerate(best.tolist())
            if self._classes[k] != NONE
        ]
        hop_s = HOP_FRAMES * HOP / SR
        length_s = WINDOW_FRAMES * HOP / SR
        # the window's last frame is centred at its last hop and reaches N_FFT / 2 beyond it
        ready_s = ((WINDOW_FRAMES - 1) * HOP + N_FFT // 2) / SR
        detections = _merge(hits, hop_s, length_s, ready_s)
        duration = max(samples, SR) / SR
        return [d._replace(alert_at_s=min(d.alert_at_s, duration)) for d in detections]


def _cross_validated_detections(
    audios: list[F32],
    categories: list[str],
    groups: list[str],
    *,
    folds: int,
    seed: int,
    cache_dir: Path | None,
) -> list[list[Detection]]:
    from sklearn.model_selection import StratifiedGroupKFold

    features = [classic_features(a, cache_dir) for a in audios]
    found: list[list[Detection]] = [[] for _ in audios]
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, test in splitter.split(np.zeros(len(audios)), categories, groups):
        forest = ClassicForest(seed=seed).fit_features(
            [features[i] for i in train], [categories[i] for i in train]
        )
        for i in test:
            found[i] = forest.detect_features(features[i], len(audios[i]))
    return found


def classic_cross_validated_clip_flags(
    audios: list[F32],
    categories: list[str],
    groups: list[str],
    folds: int = 5,
    seed: int = 0,
    *,
    cache_dir: Path | None = None,
) -> list[set[str]]:
    """Out-of-fold set of categories flagged per clip (see the function below)."""
    found = _cross_validated_detections(
        audios, categories, groups, folds=folds, seed=seed, cache_dir=cache_dir
    )
    return [{d.category for d in detections} for detections in found]


def classic_cross_validated_clip_predictions(
    audios: list[F32],
    categories: list[str],
    groups: list[str],
    folds: int = 5,
    seed: int = 0,
    *,
    cache_dir: Path | None = None,
) -> list[str]:
    """Out-of-fold predicted category per clip ("none" when nothing is flagged).

    Folds are stratified by category and grouped by `groups`, the recording each clip was
    cut from (see `recording_group`): clips of one group are never split between training
    and test. A clip flagged with several categories gets the one whose detection scored
    highest.
    """
    found = _cross_validated_detections(
        audios, categories, groups, folds=folds, seed=seed, cache_dir=cache_dir
    )
    return [
        max(detections, key=lambda d: d.peak_score).category if detections else NONE
        for detections in found
    ]


_CHUNK_SUFFIX = re.compile(r"_\d+$")


def recording_group(file: str) -> str:
    """The recording a dev clip was cut from, for grouped cross-validation.

    From the clip's file name (`clips/<source>__<folder>__<name>.flac`):
    - ESC-50 (`esc50_subset__audio__{fold}-{clip}-{take}-{class}`): the Freesound clip id;
      ESC-50 cut its takes A, B, C... from one recording.
    - glass-break set (`..._chunkN.wav...`): the 5 s recording before `_chunkN` (its 1 s
      chunks are near-duplicates); without a chunk suffix, the name before `.wav`.
    - screams (`<name>_<n>`): the name without the trailing `_<n>` chunk index
      (`damm_0`..`damm_7` are one recording); speech negatives are one file each.
    - gunshots (`gunshots__<weapon>__...`): the weapon. The 30 clips per weapon come from
      the same shooting sessions and no recording id survives in their names, so they stay
      together; this also makes the forest's gunshot recall a leave-one-weapon-out figure,
      which is what the held-out set (other weapons) asks of it.
    """
    stem = Path(file).stem
    source, _, rest = stem.partition("__")
    folder, _, name = rest.partition("__")
    if source == "esc50_subset":
        parts = name.split("-")
        return f"esc50:{parts[1] if len(parts) > 1 else name}"
    if source == "glass_break_1s":
        base = name.split("_chunk")[0] if "_chunk" in name else name.split(".wav")[0]
        return f"glass:{base}"
    if source == "gunshots":
        return f"gunshots:{folder}"
    return f"{source}:{_CHUNK_SUFFIX.sub('', name)}"


# --- the report ---------------------------------------------------------------------------


def _read_labels(data: Path) -> list[dict[str, str]]:
    with (data / "labels.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _read_events(data: Path) -> dict[str, list[tuple[str, float, float, str]]]:
    events: dict[str, list[tuple[str, float, float, str]]] = {}
    with (data / "streams" / "events.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            events.setdefault(row["stream"], []).append(
                (row["category"], float(row["start_s"]), float(row["end_s"]), row["source_clip"])
            )
    return events


def _source_matches(source_clip: str, file: str) -> bool:
    """Whether the stream's mixed-in `source_clip` is the dev clip `file` (names differ
    in separators and the dev names are truncated)."""
    source = Path(source_clip).with_suffix("").as_posix().replace("/", "__")
    source = source.replace(" (", "_").replace(")", "_")
    return source.startswith(Path(file).stem)


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f}%"


def _clip_row(name: str, metrics: dict[str, dict[str, float]]) -> str:
    cells = [
        f"{_pct(metrics[c]['recall'])} / {_pct(metrics[c]['none_flagged'])}" for c in CATEGORIES
    ]
    return f"| {name} | " + " | ".join(cells) + " |"


def _stream_row(
    name: str, runs: list[tuple[list[tuple[str, float, float]], list[Detection], float]]
) -> str:
    overall = pooled_stream_metrics(runs)
    per_category = []
    for category in CATEGORIES:
        m = pooled_stream_metrics(
            [
                (
                    [e for e in events if e[0] == category],
                    [d for d in dets if d.category == category],
                    s,
                )
                for events, dets, s in runs
            ]
        )
        per_category.append(f"{int(m['found'])}/{int(m['total'])}")
    latency = overall["median_latency_s"]
    return (
        f"| {name} | {int(overall['found'])}/{int(overall['total'])} ({_pct(overall['recall'])}) | "
        + " | ".join(per_category)
        + f" | {int(overall['false_alarms'])} | {overall['fa_per_hour']:.1f} | "
        + ("n/a" if math.isnan(latency) else f"{latency:.2f}")
        + " |"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/audio-dev")
    parser.add_argument("--model", type=Path, default=ROOT / "var/models/yamnet.tflite")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-cache", action="store_true", help="do not keep forest features")
    args = parser.parse_args(argv)
    for path in (args.data / "labels.csv", args.model):
        if not path.is_file():
            print(f"missing {path}", file=sys.stderr)
            return 1
    cache = None if args.no_cache else CACHE_DIR / "classic"

    rows = _read_labels(args.data)
    files = [r["file"] for r in rows]
    truth = [r["category"] for r in rows]
    audios = [load_audio(args.data / f) for f in files]
    groups = [recording_group(f) for f in files]

    frigate = FrigateRule(args.model)
    ungated = FrigateRule(args.model, min_volume=0.0)
    frigate_flags = [{d.category for d in frigate.detect(a)} for a in audios]
    ungated_flags = [{d.category for d in ungated.detect(a)} for a in audios]
    forest_flags = classic_cross_validated_clip_flags(
        audios, truth, groups, args.folds, args.seed, cache_dir=cache
    )

    events = _read_events(args.data)
    streams = sorted(events)
    stream_audio = {s: load_audio(args.data / "streams" / s) for s in streams}
    sources = {e[3] for evs in events.values() for e in evs}
    held_out = [any(_source_matches(s, f) for s in sources) for f in files]
    forest_all = ClassicForest(seed=args.seed, cache_dir=cache).fit(audios, truth)
    forest_held = ClassicForest(seed=args.seed, cache_dir=cache).fit(
        [a for a, h in zip(audios, held_out, strict=True) if not h],
        [t for t, h in zip(truth, held_out, strict=True) if not h],
    )
    stream_rows = []
    for name, detect in (
        ("Frigate rule", frigate.detect),
        ("Frigate rule without its volume gate", ungated.detect),
        ("librosa + RF (all clips)", forest_all.detect),
        (f"librosa + RF ({sum(held_out)} mixed-in clips left out)", forest_held.detect),
    ):
        runs = [
            ([e[:3] for e in events[s]], detect(stream_audio[s]), len(stream_audio[s]) / SR)
            for s in streams
        ]
        stream_rows.append(_stream_row(name, runs))

    counts = {c: truth.count(c) for c in (*CATEGORIES, NONE)}
    print(
        f"## Peers on {args.data.name}: clips (recall / share of {counts[NONE]} none clips flagged)"
    )
    print()
    print("| approach | " + " | ".join(f"{c} (n={counts[c]})" for c in CATEGORIES) + " |")
    print("|---|" + "---|" * len(CATEGORIES))
    print(_clip_row("Frigate rule", clip_metrics(truth, frigate_flags, CATEGORIES)))
    print(
        _clip_row(
            "Frigate rule without its volume gate", clip_metrics(truth, ungated_flags, CATEGORIES)
        )
    )
    print(
        _clip_row(
            f"librosa + RF ({args.folds}-fold grouped CV)",
            clip_metrics(truth, forest_flags, CATEGORIES),
        )
    )
    hours = sum(len(a) for a in stream_audio.values()) / SR / 3600
    print()
    print(f"## Peers on {len(streams)} streams ({60 * hours:.0f} min)")
    print()
    print(
        "| approach | events found | "
        + " | ".join(CATEGORIES)
        + " | false alarms | FA per hour | median latency (s) |"
    )
    print("|---|---|" + "---|" * len(CATEGORIES) + "---|---|---|")
    for row in stream_rows:
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())

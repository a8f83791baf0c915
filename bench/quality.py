"""Detection quality: our detector beside the peers, in one run on the dev data.

    python -m bench.quality [--variants yamnet,yamnet_spectra_in] [--hops 0.25,0.5] [--write]

Ours runs end to end through `edge.analyze.analyze_audio` and `edge.detector.Detector`,
the code path of `safeguard analyze`, with the default categories. Where a category uses a
trained head, the clip figures are out-of-fold: 5-fold cross-validation stratified by
category and grouped by recording (`bench.peers.recording_group`, the forest's folds), and
each fold's heads are trained by `converter.train_head` on the other folds only (with their
noise-mixed copies). For the streams, heads are trained on every clip except those mixed
into the streams. Never a train-set figure.

Clip metrics: a clip is flagged with a category when `analyze` reports an event of it.
Stream metrics (`bench.metrics`): events found, false alarms per hour, median alert delay.
`--write` puts this run's tables at the top of the `## Audio quality` section of
bench/RESULTS.md, between two markers (the next `--write` replaces them there); the rest of
the section, the measured history, is kept.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import numpy as np

from bench.metrics import NONE, Detection, clip_metrics
from bench.peers import (
    CATEGORIES,
    ClassicForest,
    FrigateRule,
    _clip_row,
    _read_events,
    _read_labels,
    _source_matches,
    _stream_row,
    classic_cross_validated_clip_flags,
    load_audio,
    recording_group,
)
from converter.cli import AUDIO_C, gain_range, snr_range
from converter.train_head import (
    BY_LABEL_C,
    DEFAULT_BY_LABEL,
    DEFAULT_GAIN_DB,
    DEFAULT_PATCH_FEATURES,
    ClipWindows,
    Example,
    extract,
    fit_head,
    origins,
    window_patch_stats,
)
from edge.analyze import analyze_audio, window_ends
from edge.categories import DEFAULT_CATEGORIES, CategoryConfig
from edge.detector import Detector
from edge.frontend import PATCH_SAMPLES
from edge.heads import save_head
from edge.yamnet import Variant, Yamnet, labels_from_class_map, labels_from_model

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / "cache"
RESULTS = ROOT / "bench" / "RESULTS.md"
SECTION = "## Audio quality"
SR = 16000
TRAIN_HOP_S = 0.25
DEFAULT_SNR = (0.0, 20.0)
Runs = list[tuple[list[tuple[str, float, float]], list[Detection], float]]


def load_model(models: Path, variant: Variant) -> Yamnet:
    if variant == "yamnet":
        path = models / "yamnet.tflite"
        return Yamnet(path, variant, labels_from_model(path))
    labels = labels_from_class_map(models / "yamnet_class_map.csv")
    return Yamnet(models / "yamnet_spectra_in.tflite", variant, labels)


def training_clips(
    examples: list[Example],
    models: Path,
    variant: Variant,
    augment: int,
    snr_db: tuple[float, float] = DEFAULT_SNR,
    *,
    gain_db: tuple[float, float] | None = None,
) -> list[ClipWindows]:
    """Training windows of every clip (and `augment` noise-mixed copies of each threat
    clip at an SNR from `snr_db`, with `gain_db` at random gains and with as many copies of
    the `none` clips at such gains), cached under bench/cache/ since extraction is slow."""
    snr = "" if snr_db == DEFAULT_SNR else f"_snr{snr_db[0]:g}_{snr_db[1]:g}"
    snr += "" if gain_db is None else f"_gain{gain_db[0]:g}_{gain_db[1]:g}"
    path = CACHE / f"train_{variant}_aug{augment}{snr}_{len(examples)}.npz"
    keys = ("lengths", "sources", "scores", "embeddings", "levels", "patch_stats")
    arrays: dict[str, np.ndarray] = {}
    if path.exists():
        with np.load(path) as data:
            arrays = {k: data[k] for k in keys if k in data}
    if len(arrays) == len(keys):  # an older cache without the patch statistics: extract anew
        bounds = np.cumsum(np.concatenate([[0], arrays["lengths"]]))
        embeddings = arrays["embeddings"].astype(np.float32)
        return [
            ClipWindows(
                arrays["scores"][a:b],
                embeddings[a:b],
                arrays["levels"][a:b],
                int(src),
                arrays["patch_stats"][a:b],
            )
            for a, b, src in zip(bounds[:-1], bounds[1:], arrays["sources"], strict=True)
        ]
    log.info("extracting training windows (%s, %d augmented copies)", variant, augment)
    clips = extract(
        examples,
        models,
        variant,
        TRAIN_HOP_S,
        augment=augment,
        augment_categories=CATEGORIES,
        snr_db=snr_db,
        gain_db=gain_db,
    )
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        lengths=np.array([len(c.level_db) for c in clips]),
        sources=np.array([c.source for c in clips]),
        scores=np.concatenate([c.scores for c in clips]),
        embeddings=np.concatenate([c.embeddings for c in clips]).astype(np.float16),
        levels=np.concatenate([c.level_db for c in clips]),
        patch_stats=np.concatenate([_stats(c) for c in clips]),
    )
    return clips


def _stats(clip: ClipWindows) -> np.ndarray:
    if clip.patch_stats is None:
        raise ValueError("training windows without patch statistics")
    return clip.patch_stats


def with_heads(
    clips: Mapping[str, Sequence[ClipWindows]],
    truth: Sequence[str],
    train: set[int],
    folder: Path,
    categories: Mapping[str, CategoryConfig] = DEFAULT_CATEGORIES,
    *,
    negatives: Sequence[ClipWindows] = (),
    labels: Sequence[str] = (),
    by_label: Collection[str] = DEFAULT_BY_LABEL,
) -> dict[str, CategoryConfig]:
    """`categories` with each head retrained on the clips in `train` (and their copies;
    `clips` by category), plus `negatives` (background stretches, negative for every
    category); the heads of `by_label` as a softmax over `labels` (fine labels of all clips)."""
    out = {}
    for name, cfg in categories.items():
        if cfg.head is None or cfg.combine == "rule":
            out[name] = cfg
            continue
        originals, copies = _training_split(clips[name], train)
        positive = np.array([truth[i] == name for i in sorted(train)] + [False] * len(negatives))
        path = folder / f"{name}.npz"
        features = DEFAULT_PATCH_FEATURES.get(name, "")
        fine = None
        if name in by_label:
            fine = [labels[i] for i in sorted(train)] + ["stream background"] * len(negatives)
        head = fit_head(
            [*originals, *negatives, *copies],
            positive,
            BY_LABEL_C if fine else AUDIO_C,
            patch_features=features,
            labels=fine,
            category=name,
        )
        save_head(path, head)
        out[name] = cfg.model_copy(update={"head": str(path)})
    return out


def _training_split(
    clips: Sequence[ClipWindows], train: set[int]
) -> tuple[list[ClipWindows], list[ClipWindows]]:
    """The originals of the clips in `train` (in their order) and their copies, renumbered
    as `origins` expects of the training set."""
    keep = [c for c, o in zip(clips, origins(clips), strict=True) if int(o) in train]
    order = sorted(train)
    remap = {old: new for new, old in enumerate(order)}
    kept = [
        ClipWindows(
            c.scores,
            c.embeddings,
            c.level_db,
            remap[c.source] if c.source >= 0 else -1,
            c.patch_stats,
        )
        for c in keep
    ]
    # originals first, in `order`, then the augmented copies (as `origins` expects)
    return [c for c in kept if c.source < 0], [c for c in kept if c.source >= 0]


def background_windows(
    model: Yamnet,
    audio: np.ndarray,
    events: Sequence[tuple[str, float, float]],
    hop: int,
    *,
    margin_s: float = 2.0,
    piece_s: float = 10.0,
) -> list[ClipWindows]:
    """A stream's windows (as `analyze_audio` cuts them) that end at least `margin_s` away
    from every labelled event, as pseudo-clips of at most `piece_s` (hard negatives)."""
    ends = window_ends(len(audio), hop)
    padded = np.zeros(ends[-1], np.float32)
    padded[: len(audio)] = audio
    t = np.array(ends) / SR
    clear = np.ones(len(ends), bool)
    for _, start, end in events:
        clear &= (t < start - margin_s) | (t - PATCH_SAMPLES / SR > end + margin_s)
    keep = [i for i in np.flatnonzero(clear) if np.any(padded[ends[i] - PATCH_SAMPLES : ends[i]])]
    per_piece = max(1, round(piece_s * SR / hop))
    out = []
    for a in range(0, len(keep), per_piece):
        chosen = keep[a : a + per_piece]
        windows = [
            model.classify(padded[ends[i] - PATCH_SAMPLES : ends[i]], ends[i]) for i in chosen
        ]
        out.append(
            ClipWindows(
                np.stack([w.scores for w in windows]),
                np.stack([w.embedding for w in windows]),
                np.zeros(len(windows), np.float32),
                patch_stats=window_patch_stats(windows),
            )
        )
    return out


def ours_flags(
    model: Yamnet,
    audios: Sequence[np.ndarray],
    categories: Mapping[str, CategoryConfig],
    indices: Sequence[int],
    hop: int,
) -> dict[int, set[str]]:
    flags = {}
    for i in indices:
        detector = Detector(model, categories)
        flags[i] = {r.category for r in analyze_audio(audios[i], detector, hop)}
    return flags


def ours(
    args: argparse.Namespace,
    variant: Variant,
    hop_s: float,
    data: tuple[list[str], list[str], list[np.ndarray], list[str]],
    streams: dict[str, tuple[list[tuple[str, float, float]], np.ndarray]],
) -> tuple[list[set[str]], Runs]:
    """Out-of-fold clip flags and stream detections of our detector."""
    from sklearn.model_selection import StratifiedGroupKFold

    files, truth, audios, groups = data
    model = load_model(args.models, variant)
    examples = [Example(args.data / f, t, g) for f, t, g in zip(files, truth, groups, strict=True)]
    sets = {
        g: training_clips(examples, args.models, variant, args.augment, args.snr, gain_db=g)
        for g in set(args.gains.values())
    }
    clips = {name: sets[args.gains[name]] for name in args.categories}
    hop = round(hop_s * SR)
    flags: dict[int, set[str]] = {}
    splitter = StratifiedGroupKFold(n_splits=args.folds, shuffle=True, random_state=args.seed)
    for k, (train, test) in enumerate(splitter.split(np.zeros(len(files)), truth, groups)):
        folder = CACHE / "heads" / f"{variant}_fold{k}"
        categories = with_heads(
            clips,
            truth,
            {int(i) for i in train},
            folder,
            args.categories,
            labels=args.labels,
            by_label=args.by_label,
        )
        flags.update(ours_flags(model, audios, categories, [int(i) for i in test], hop))
        log.info("%s hop %.2f: fold %d/%d", variant, hop_s, k + 1, args.folds)
    for i in sorted(flags):
        if flags[i] and truth[i] == NONE:
            log.info("none clip flagged %s: %s", sorted(flags[i]), files[i])
    sources = {e for evs in _read_events(args.data).values() for e in (x[3] for x in evs)}
    train = {i for i, f in enumerate(files) if not any(_source_matches(s, f) for s in sources)}
    background = {
        name: background_windows(model, audio, events, hop) if args.stream_negatives else []
        for name, (events, audio) in streams.items()
    }
    runs: Runs = []
    for name, (events, audio) in streams.items():
        # cross-stream: a stream's heads never saw its own background
        others = [c for other, cs in background.items() if other != name for c in cs]
        folder = CACHE / "heads" / f"{variant}_streams_{Path(name).stem}"
        categories = with_heads(
            clips,
            truth,
            train,
            folder,
            args.categories,
            negatives=others,
            labels=args.labels,
            by_label=args.by_label,
        )
        records = analyze_audio(audio, Detector(model, categories), hop)
        detections = [
            Detection(r.category, r.start_s, r.end_s, r.alert_at_s, r.peak_score) for r in records
        ]
        runs.append((events, detections, len(audio) / SR))
    return [flags[i] for i in range(len(files))], runs


def peers(
    args: argparse.Namespace,
    data: tuple[list[str], list[str], list[np.ndarray], list[str]],
    streams: dict[str, tuple[list[tuple[str, float, float]], np.ndarray]],
) -> list[tuple[str, list[set[str]], Runs]]:
    files, truth, audios, groups = data
    frigate = FrigateRule(args.models / "yamnet.tflite")
    cache = CACHE / "classic"
    forest_flags = classic_cross_validated_clip_flags(
        audios, truth, groups, args.folds, args.seed, cache_dir=cache
    )
    sources = {e for evs in _read_events(args.data).values() for e in (x[3] for x in evs)}
    held = [any(_source_matches(s, f) for s in sources) for f in files]
    forest = ClassicForest(seed=args.seed, cache_dir=cache).fit(
        [a for a, h in zip(audios, held, strict=True) if not h],
        [t for t, h in zip(truth, held, strict=True) if not h],
    )
    out = []
    for name, detect, flags in (
        ("Frigate rule", frigate.detect, [{d.category for d in frigate.detect(a)} for a in audios]),
        ("librosa + RF", forest.detect, forest_flags),
    ):
        runs: Runs = [(ev, detect(audio), len(audio) / SR) for ev, audio in streams.values()]
        out.append((name, flags, runs))
    return out


def table(
    rows: list[tuple[str, list[set[str]], Runs]], truth: list[str], minutes: float
) -> list[str]:
    counts = {c: truth.count(c) for c in (*CATEGORIES, NONE)}
    lines = [
        f"Clips: recall / share of the {counts[NONE]} `none` clips flagged "
        "(ours and the forest: out-of-fold, grouped 5-fold CV).",
        "",
        "| approach | " + " | ".join(f"{c} (n={counts[c]})" for c in CATEGORIES) + " |",
        "|---|" + "---|" * len(CATEGORIES),
    ]
    lines += [_clip_row(name, clip_metrics(truth, flags, CATEGORIES)) for name, flags, _ in rows]
    lines += [
        "",
        f"Streams ({minutes:.0f} min, events mixed in at 0-20 dB SNR; heads trained without "
        "the mixed-in clips):",
        "",
        "| approach | events found | "
        + " | ".join(CATEGORIES)
        + " | false alarms | FA per hour | median latency (s) |",
        "|---|---|" + "---|" * len(CATEGORIES) + "---|---|---|",
    ]
    lines += [_stream_row(name, runs) for name, _, runs in rows]
    return lines


def overridden(
    categories: Mapping[str, CategoryConfig], settings: Sequence[str]
) -> dict[str, CategoryConfig]:
    """`categories` with `name.field[.sub]=value` settings applied (values parsed as YAML)."""
    import yaml

    raw = {name: cfg.model_dump() for name, cfg in categories.items()}
    for setting in settings:
        key, _, value = setting.partition("=")
        name, *path = key.split(".")
        target = raw[name]
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = yaml.safe_load(value)
    return {name: CategoryConfig.model_validate(fields) for name, fields in raw.items()}


def gains(
    categories: Mapping[str, CategoryConfig],
    options: Sequence[str],
    parser: argparse.ArgumentParser,
) -> dict[str, tuple[float, float] | None]:
    """Each category's training gains: the shipped default, or a `--gain` option."""
    out = {name: DEFAULT_GAIN_DB.get(name) for name in categories}
    for option in options:
        name, _, value = option.partition("=")
        if name not in out:
            parser.error(f"--gain {option}: no category {name!r} (have {sorted(out)})")
        try:
            out[name] = gain_range(value)
        except argparse.ArgumentTypeError as exc:
            parser.error(f"--gain {option}: {exc}")
    return out


def by_label_categories(text: str) -> frozenset[str]:
    """`--by-label`: comma-separated default categories, or `none`."""
    if text == "none":
        return frozenset()
    names = frozenset(text.split(","))
    unknown = sorted(names - set(DEFAULT_CATEGORIES))
    if unknown:
        known = ", ".join(DEFAULT_CATEGORIES)
        raise argparse.ArgumentTypeError(f"not a category: {', '.join(unknown)} (known: {known})")
    return names


BEGIN = "<!-- bench.quality --write: begin -->"
END = "<!-- bench.quality --write: end -->"


def write_section(lines: list[str], path: Path = RESULTS) -> None:
    """This run's tables between the markers at the top of SECTION; nothing else changes."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    block = "\n".join([BEGIN, *lines, END]).rstrip()
    if BEGIN in text and END in text.partition(BEGIN)[2]:
        head, _, rest = text.partition(BEGIN)
        text = head + block + rest.partition(END)[2]
    elif SECTION + "\n" in text:
        head, _, rest = text.partition(SECTION + "\n")
        text = head + SECTION + "\n\n" + block + "\n\n" + rest.lstrip("\n")
    else:
        text = text.rstrip() + "\n\n" + SECTION + "\n\n" + block + "\n"
    path.write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/audio-dev")
    parser.add_argument("--models", type=Path, default=ROOT / "var/models")
    parser.add_argument(
        "--variants", default="yamnet_spectra_in", help="comma-separated model variants"
    )
    parser.add_argument("--hops", default="0.25", help="comma-separated window hops (s)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--augment", type=int, default=2, help="noise-mixed copies per clip")
    parser.add_argument(
        "--snr",
        type=snr_range,
        default=DEFAULT_SNR,
        metavar="LOW,HIGH",
        help="SNR range (dB) of the noise-mixed copies (default 0,20)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="CATEGORY.FIELD=VALUE",
        help="override a default category field, e.g. glass_break.smoothing.on=0.98",
    )
    parser.add_argument(
        "--stream-negatives",
        action="store_true",
        help="train each stream's heads also on the other streams' background (outside "
        "the labelled events) as hard negatives; a stream never trains its own heads",
    )
    parser.add_argument(
        "--gain",
        action="append",
        default=[],
        metavar="CATEGORY=LOW,HIGH|none",
        help="training copies of CATEGORY's head at random gains from LOW,HIGH dB (and as "
        "many `none` copies), or none; default: as the shipped heads (glass_break=-30,0)",
    )
    parser.add_argument(
        "--by-label",
        type=by_label_categories,
        default=DEFAULT_BY_LABEL,
        metavar="CATEGORY,...|none",
        help="categories whose heads are a softmax over the clips' fine labels (default: as "
        f"shipped, {','.join(sorted(DEFAULT_BY_LABEL))})",
    )
    parser.add_argument("--no-peers", action="store_true", help="only our detector")
    parser.add_argument(
        "--write",
        action="store_true",
        help=f"put the tables at the top of {SECTION!r} in {RESULTS.name} (the rest is kept)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    for path in (args.data / "labels.csv", args.models / "yamnet.tflite"):
        if not path.is_file():
            print(f"missing {path}", file=sys.stderr)
            return 1
    args.categories = overridden(DEFAULT_CATEGORIES, args.set)
    args.gains = gains(args.categories, args.gain, parser)
    started = time.monotonic()
    rows_ = _read_labels(args.data)
    files = [r["file"] for r in rows_]
    truth = [r["category"] for r in rows_]
    args.labels = [r.get("label") or r["category"] for r in rows_]
    audios = [load_audio(args.data / f) for f in files]
    data = (files, truth, audios, [recording_group(f) for f in files])
    events = _read_events(args.data)
    streams = {
        s: ([e[:3] for e in events[s]], load_audio(args.data / "streams" / s))
        for s in sorted(events)
    }
    rows = []
    for variant in args.variants.split(","):
        for hop_text in args.hops.split(","):
            hop_s = float(hop_text)
            if not math.isclose(round(hop_s * 100), hop_s * 100, abs_tol=1e-6):
                parser.error(f"hop {hop_s} is not a multiple of 0.01 s")
            flags, runs = ours(args, variant, hop_s, data, streams)
            rows.append((f"Safeguard ({variant}, hop {hop_s:g} s)", flags, runs))
    if not args.no_peers:
        rows += peers(args, data, streams)
    minutes = sum(len(a) for _, a in streams.values()) / SR / 60
    lines = table(rows, truth, minutes)
    command = "python -m bench.quality " + " ".join(argv if argv is not None else sys.argv[1:])
    lines += ["", f"`{command.strip()}` ({time.monotonic() - started:.0f} s)"]
    print("\n".join(lines))
    if args.write:
        write_section(lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`safeguard-convert`: host-side model tools.

    safeguard-convert train-head --kind audio --data DIR_OR_LABELS_CSV --category NAME \
        --out models_tflite/heads/NAME.npz [--models var/models] [--variant yamnet_spectra_in]
    safeguard-convert train-head --kind video --data DIR_OR_LABELS_CSV \
        --out models_tflite/heads/violence.npz [--models var/models] [--no-mirror]
    safeguard-convert convert MODEL --rep-data DIR --out OUT.tflite
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from edge.errors import SafeguardError
from edge.frontend import PATCH_STATS

log = logging.getLogger(__name__)
AUDIO_C = 0.01  # an audio head's --c when none is given
_SHIPPED = object()  # an option left to the category's shipped setting


def snr_range(text: str) -> tuple[float, float]:
    """`LOW,HIGH` in dB, LOW <= HIGH."""
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LOW,HIGH (dB)") from None
    if low > high:
        raise argparse.ArgumentTypeError(f"{text!r}: LOW is above HIGH")
    return low, high


def gain_range(text: str) -> tuple[float, float] | None:
    """`LOW,HIGH` in dB (LOW <= HIGH <= 0), or `none`."""
    if text.strip().lower() == "none":
        return None
    low, high = snr_range(text)
    if high > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a gain above 0 dB would clip")
    return low, high


def fraction(text: str) -> float:
    """A number strictly between 0 and 1."""
    value = _number(text, float)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not between 0 and 1 (both excluded)")
    return value


def share(text: str) -> float:
    """A number from 0 up to, not including, 1."""
    value = _number(text, float)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not at least 0 and below 1")
    return value


def positive(text: str) -> float:
    """A number above 0."""
    value = _number(text, float)
    if not value > 0.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not above 0")
    return value


def positive_int(text: str) -> int:
    """A whole number of at least 1."""
    value = int(_number(text, int))
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not at least 1")
    return value


def _number(text: str, kind: type[float] | type[int]) -> float:
    try:
        return kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None


class OutputError(SafeguardError):
    """An output file cannot be written where the user asked."""


def check_out(path: Path, flag: str = "--out") -> None:
    """Make the folder of output `path` now, before the slow work, or say why it cannot be."""
    if path.is_dir():
        raise OutputError(f"{flag} {path}: is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        why = f"{blocking} is a file, not a folder" if blocking else exc.strerror or str(exc)
        message = f"{flag} {path}: cannot create its folder {path.parent} ({why})"
        raise OutputError(message) from None
    if not os.access(path.parent, os.W_OK):
        raise OutputError(f"{flag} {path}: its folder {path.parent} is not writable")


def _check_kind(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors (exit status 2) for train-head options of the other --kind, and for what
    an audio head requires."""
    for action in parser._actions:
        kind = getattr(action, "kind", args.kind)
        if kind != args.kind and getattr(args, action.dest) != action.default:
            parser.error(f"argument {'/'.join(action.option_strings)}: only with --kind {kind}")
    if args.kind == "audio":
        missing = [flag for flag in ("category", "out") if getattr(args, flag) is None]
        if missing:
            parser.error(
                "the following arguments are required with --kind audio: "
                + ", ".join(f"--{flag}" for flag in missing)
            )
        if len(args.c or ()) > 1:
            parser.error("argument --c: an audio head takes one value")


def _only(kind: str, actions: list[argparse.Action]) -> None:
    for action in actions:
        action.kind = kind  # type: ignore[attr-defined]  # read by _check_kind


def _parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The parser, and its train-head subparser."""
    from converter import convert_cmd, train_video_head

    parser = argparse.ArgumentParser(prog="safeguard-convert", description=__doc__.split("\n")[0])
    parser.add_argument("--debug", action="store_true", help="log details and show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    head = sub.add_parser(
        "train-head", help="train a head: an audio category on YAMNet embeddings, or violence"
    )
    head.add_argument(
        "--kind",
        choices=["audio", "video"],
        default="audio",
        help="audio: a category of sound (--category); video: the violence head",
    )
    head.add_argument(
        "--data",
        type=Path,
        required=True,
        help="labels.csv (file,category[,group][,label]) or a folder with one; audio also "
        "takes per-category subfolders",
    )
    head.add_argument(
        "--out",
        type=Path,
        help="the head file to write (.npz); required for audio, video without it only evaluates",
    )
    head.add_argument("--models", type=Path, default=Path("var/models"), help="fetched models")
    head.add_argument("--folds", type=int, default=5, help="grouped cross-validation folds")
    head.add_argument(
        "--c",
        type=positive,
        nargs="+",
        help=f"inverse L2 regularisation strength: audio takes one (default {AUDIO_C}); video "
        "takes candidates, chosen by nested cross-validation (default "
        f"{' '.join(map(str, train_video_head.C_GRID))})",
    )
    _only("audio", _audio_options(head.add_argument_group("audio heads (--kind audio)")))
    video = head.add_argument_group("the violence head (--kind video)")
    _only("video", train_video_head.add_options(video))
    convert_cmd.add_parser(sub)
    return parser, head


def _audio_options(group: argparse._ActionsContainer) -> list[argparse.Action]:
    from converter.train_head import BY_LABEL_C

    return [
        group.add_argument(
            "--category", help="the positive category; others are negatives (required)"
        ),
        group.add_argument(
            "--variant",
            choices=["yamnet", "yamnet_spectra_in"],
            default="yamnet_spectra_in",
            help="the YAMNet the daemon runs (embeddings must come from the same model)",
        ),
        group.add_argument("--hop", type=positive, default=0.25, help="window hop in seconds"),
        group.add_argument(
            "--target-fp",
            type=share,
            default=0.005,
            help="fraction of negative clips the chosen threshold may flag (cross-validated)",
        ),
        group.add_argument(
            "--augment",
            type=int,
            default=0,
            help="also mix each positive clip N times into other clips at an SNR from --snr",
        ),
        group.add_argument(
            "--snr",
            type=snr_range,
            default=(0.0, 20.0),
            metavar="LOW,HIGH",
            help="SNR range (dB) of the noise-mixed copies, drawn uniformly (default 0,20)",
        ),
        group.add_argument(
            "--gain",
            type=gain_range,
            default=_SHIPPED,
            metavar="LOW,HIGH|none",
            help="with --augment, scale each mixed copy by a gain (dB) drawn from this range "
            "and add as many copies of every other clip at such gains, so loudness alone "
            "tells nothing (default: as the category's shipped head: -30,0 for glass_break)",
        ),
        group.add_argument("--limit", type=int, default=0, help="use at most N clips per category"),
        group.add_argument(
            "--patch-features",
            choices=[PATCH_STATS, "none"],
            help="a second head on statistics of the window's log-mel patch, averaged with the "
            "embedding head (default: as the category's shipped head: glass_break only)",
        ),
        group.add_argument(
            "--by-label",
            action=argparse.BooleanOptionalAction,
            help="train one softmax over the clips' fine labels (labels.csv's `label` column: "
            "speech, dog, fireworks...) instead of the category against everything else; the "
            f"default C is then {BY_LABEL_C} (default: as the category's shipped head: "
            "gunshot only)",
        ),
    ]


class _Progress:
    """A progress line on a terminal, a log line every 10% otherwise."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.tty = sys.stderr.isatty()
        self._last = -1

    def __call__(self, done: int, total: int) -> None:
        percent = 100 * done // max(total, 1)
        if self.tty:
            sys.stderr.write(f"\r{self.label}: {done}/{total} ({percent}%)")
            if done == total:
                sys.stderr.write("\n")
            sys.stderr.flush()
        elif percent // 10 != self._last // 10:
            log.info("%s: %d/%d clips", self.label, done, total)
        self._last = percent


def _limit(examples: list[object], limit: int) -> list[object]:
    if limit <= 0:
        return examples
    seen: dict[str, int] = {}
    kept = []
    for example in examples:
        category = getattr(example, "category", "")
        seen[category] = seen.get(category, 0) + 1
        if seen[category] <= limit:
            kept.append(example)
    return kept


def train_head_command(args: argparse.Namespace, command: str) -> int:
    from converter import train_head as th
    from edge.heads import save_head

    by_label = args.category in th.DEFAULT_BY_LABEL if args.by_label is None else args.by_label
    c = args.c[0] if args.c else (th.BY_LABEL_C if by_label else AUDIO_C)
    check_out(args.out)
    examples = th.find_examples(args.data)
    examples = [e for e in _limit(list(examples), args.limit) if isinstance(e, th.Example)]
    if not any(e.category == args.category for e in examples):
        found = sorted({e.category for e in examples})
        raise th.TrainError(f"no clip of category {args.category!r} in {args.data} (has {found})")
    log.info("%d clips from %s", len(examples), args.data)
    gain = th.DEFAULT_GAIN_DB.get(args.category) if args.gain is _SHIPPED else args.gain
    if args.gain is not _SHIPPED and args.gain is not None and args.augment <= 0:
        raise th.TrainError("--gain scales the --augment copies: give --augment N as well")
    clips = th.extract(
        examples,
        args.models,
        args.variant,
        args.hop,
        _Progress("embeddings"),
        augment=args.augment,
        augment_categories={args.category},
        snr_db=args.snr,
        gain_db=gain,
    )
    head, report = th.train_head(
        clips,
        [e.category for e in examples],
        [e.group for e in examples],
        args.category,
        c=c,
        folds=args.folds,
        target_fp=args.target_fp,
        patch_features={None: None, "none": ""}.get(args.patch_features, args.patch_features),
        labels=[e.label or e.category for e in examples] if by_label else None,
    )
    metadata = {
        **report,
        "variant": args.variant,
        "hop_s": args.hop,
        "augment": args.augment,
        "snr_db": list(args.snr),
        "gain_db": list(gain) if gain is not None and args.augment > 0 else None,
        "command": command,
    }
    metadata["data"] = str(args.data)
    save_head(args.out, dataclasses.replace(head, metadata=metadata))
    card = args.out.with_suffix(".md")
    card.write_text(th.model_card(metadata, examples))
    print(f"wrote {args.out} and {card}")
    cv = report["cv"]
    print(
        f"{args.category}: cross-validated clip AUC {cv['auc']:.3f}, recall {cv['recall']:.3f} "
        f"at {cv['fp_rate']:.3%} of other clips flagged (threshold {report['threshold']:.6f})"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, head = _parser()
    args = parser.parse_args(argv)
    if args.command == "train-head":
        _check_kind(head, args)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    from converter.train_head import TrainError

    try:
        if args.command == "convert":
            from converter import convert_cmd

            return convert_cmd.run(args)
        command = "safeguard-convert " + shlex.join(argv)
        if args.kind == "video":
            from converter import train_video_head

            return train_video_head.run(args, command)
        return train_head_command(args, command)
    except (TrainError, SafeguardError) as exc:
        if args.debug:
            raise
        print(f"safeguard-convert: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

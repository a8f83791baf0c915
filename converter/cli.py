"""`safeguard-convert`: host-side model tools.

    safeguard-convert train-head --kind audio --data DIR_OR_LABELS_CSV --category NAME \
        --out models_tflite/heads/NAME.npz [--models var/models] [--variant yamnet_spectra_in]
    safeguard-convert convert MODEL --rep-data DIR --out OUT.tflite
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from edge.errors import SafeguardError

log = logging.getLogger(__name__)


def snr_range(text: str) -> tuple[float, float]:
    """`LOW,HIGH` in dB, LOW <= HIGH."""
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LOW,HIGH (dB)") from None
    if low > high:
        raise argparse.ArgumentTypeError(f"{text!r}: LOW is above HIGH")
    return low, high


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="safeguard-convert", description=__doc__.split("\n")[0])
    parser.add_argument("--debug", action="store_true", help="log details and show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    head = sub.add_parser("train-head", help="train a linear head on YAMNet embeddings")
    head.add_argument("--kind", choices=["audio"], default="audio", help="what the head hears")
    head.add_argument(
        "--data",
        type=Path,
        required=True,
        help="labels.csv (file,category[,group]), a folder with one, or per-category subfolders",
    )
    head.add_argument(
        "--category", required=True, help="the positive category; others are negatives"
    )
    head.add_argument("--out", type=Path, required=True, help="the head file to write (.npz)")
    head.add_argument("--models", type=Path, default=Path("var/models"), help="fetched models")
    head.add_argument(
        "--variant",
        choices=["yamnet", "yamnet_spectra_in"],
        default="yamnet_spectra_in",
        help="the YAMNet the daemon runs (embeddings must come from the same model)",
    )
    head.add_argument("--hop", type=float, default=0.25, help="window hop in seconds")
    head.add_argument("--c", type=float, default=0.01, help="inverse L2 regularisation strength")
    head.add_argument("--folds", type=int, default=5, help="grouped cross-validation folds")
    head.add_argument(
        "--target-fp",
        type=float,
        default=0.005,
        help="fraction of negative clips the chosen threshold may flag (cross-validated)",
    )
    head.add_argument(
        "--augment",
        type=int,
        default=0,
        help="also mix each positive clip N times into other clips at an SNR from --snr",
    )
    head.add_argument(
        "--snr",
        type=snr_range,
        default=(0.0, 20.0),
        metavar="LOW,HIGH",
        help="SNR range (dB) of the noise-mixed copies, drawn uniformly (default 0,20)",
    )
    head.add_argument("--limit", type=int, default=0, help="use at most N clips per category")
    from converter import convert_cmd

    convert_cmd.add_parser(sub)
    return parser


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


def train_head_command(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from converter import train_head as th
    from edge.heads import save_head

    examples = th.find_examples(args.data)
    examples = [e for e in _limit(list(examples), args.limit) if isinstance(e, th.Example)]
    if not any(e.category == args.category for e in examples):
        found = sorted({e.category for e in examples})
        raise th.TrainError(f"no clip of category {args.category!r} in {args.data} (has {found})")
    log.info("%d clips from %s", len(examples), args.data)
    clips = th.extract(
        examples,
        args.models,
        args.variant,
        args.hop,
        _Progress("embeddings"),
        augment=args.augment,
        augment_categories={args.category},
        snr_db=args.snr,
    )
    head, report = th.train_head(
        clips,
        [e.category for e in examples],
        [e.group for e in examples],
        args.category,
        c=args.c,
        folds=args.folds,
        target_fp=args.target_fp,
    )
    command = "safeguard-convert " + " ".join(shlex.quote(a) for a in argv)
    metadata = {
        **report,
        "variant": args.variant,
        "hop_s": args.hop,
        "augment": args.augment,
        "snr_db": list(args.snr),
        "command": command,
    }
    metadata["data"] = str(args.data)
    final = th.Head(
        head.weights, head.bias, head.score_classes, head.calibration, head.threshold, metadata
    )
    save_head(args.out, final)
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
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    from converter.train_head import TrainError

    try:
        if args.command == "convert":
            from converter import convert_cmd

            return convert_cmd.run(args)
        return train_head_command(args, argv)
    except (TrainError, SafeguardError) as exc:
        if args.debug:
            raise
        print(f"safeguard-convert: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

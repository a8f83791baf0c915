"""Representative and held-out inputs from a folder of audio or video files, through the
daemon's own preprocessing, shaped by what the model takes.

The model's input shape (without the batch axis) decides what an example is:
- [T, H, W, C] with C 1 or 3: T frames sampled at `fps` by `edge.camera.file_frames`,
  resized to H x W, BGR (or RGB), scaled to [0, 1];
- [H, W, C]: single frames, the same way;
- [N]: waveform windows of N samples at 16 kHz (`edge.decode.read_all`), in [-1, 1];
- [F, 64]: log-mel patches of F frames (`edge.frontend.LogMel`, YAMNet's features).

Labels come from the folder's `labels.csv` (`file,category`) or from per-category subfolders.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from edge.errors import SafeguardError

log = logging.getLogger(__name__)
F32 = npt.NDArray[np.float32]
AUDIO = {".wav", ".flac", ".mp3", ".ogg", ".oga", ".aiff", ".aif"}
VIDEO = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v"}
MEL_BANDS = 64


class DataError(SafeguardError):
    """The data folder is empty, unreadable, or does not fit the model."""


@dataclass(frozen=True)
class Clip:
    path: Path
    category: str  # "" when the folder has no labels


@dataclass(frozen=True)
class Examples:
    inputs: F32  # [n, *input_shape]
    categories: list[str]
    clips: list[str]  # the file each example came from


@dataclass(frozen=True)
class Preprocess:
    fps: float = 8.0
    per_clip: int = 2
    rgb: bool = False


def find_clips(folder: Path) -> list[Clip]:
    """The media files of `folder`, labelled from labels.csv or subfolder names."""
    if not folder.is_dir():
        raise DataError(f"{folder}: not a readable folder")
    labels = folder / "labels.csv"
    if labels.is_file():
        try:
            with labels.open(newline="") as handle:
                rows = [r for r in csv.DictReader(handle) if r.get("file")]
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise DataError(f"{labels}: cannot read it as a CSV file ({exc})") from None
        clips = [Clip(folder / r["file"], (r.get("category") or "").strip()) for r in rows]
        missing = [c.path for c in clips if not c.path.is_file()]
        if missing:
            raise DataError(f"{labels}: {len(missing)} listed files are missing, e.g. {missing[0]}")
    else:
        media = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO | VIDEO)
        clips = [Clip(p, p.parent.name if p.parent != folder else "") for p in media]
    if not clips:
        raise DataError(f"{folder}: no audio or video files (and no labels.csv listing any)")
    return clips


def kind_of(shape: tuple[int, ...]) -> str:
    """'clip', 'frame', 'waveform' or 'logmel' for a model input shape without batch."""
    if len(shape) == 4 and shape[-1] in {1, 3}:
        return "clip"
    if len(shape) == 3 and shape[-1] in {1, 3}:
        return "frame"
    if len(shape) == 1 and shape[0] >= 400:
        return "waveform"
    if len(shape) == 2 and shape[1] == MEL_BANDS:
        return "logmel"
    raise DataError(
        f"model input {list(shape)} is none of [T,H,W,C] clips, [H,W,C] frames, "
        "[samples] waveform or [frames,64] log-mel: no preprocessing of the daemon fits it"
    )


def _spaced(count: int, wanted: int, length: int) -> list[int]:
    """Up to `wanted` start offsets of windows of `length` in `count`, evenly spaced."""
    if count < length:
        return []
    last = count - length
    return sorted({round(last * (i + 0.5) / wanted) for i in range(wanted)})


def _frames(path: Path, shape: tuple[int, ...], pre: Preprocess) -> F32:
    from edge.camera import file_frames

    h, w, c = shape[-3:]
    out = []
    for _, frame in file_frames(path, pre.fps, max(w, 64)):
        small = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
        if c == 1:
            small = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)[..., None]
        elif pre.rgb:
            small = cv2.cvtColor(small, cv2.COLOR_BGR2RGB)
        out.append(small.astype(np.float32) / 255.0)
    return np.stack(out) if out else np.zeros((0, h, w, c), np.float32)


def _audio(path: Path) -> F32:
    from edge.decode import read_all

    return np.asarray(read_all(path), np.float32)


def clip_examples(clip: Clip, shape: tuple[int, ...], pre: Preprocess) -> list[F32]:
    """The model inputs taken from one file (possibly none if it is too short)."""
    kind = kind_of(shape)
    if clip.path.suffix.lower() in AUDIO and kind in {"clip", "frame"}:
        raise DataError(f"{clip.path}: an audio file, but the model takes video {list(shape)}")
    if clip.path.suffix.lower() in VIDEO and kind in {"clip", "frame"}:
        frames = _frames(clip.path, shape, pre)
        length = shape[0] if kind == "clip" else 1
        starts = _spaced(len(frames), pre.per_clip, length)
        if kind == "frame":
            return [frames[s] for s in starts]
        return [frames[s : s + length] for s in starts]
    audio = _audio(clip.path)
    if kind == "waveform":
        return [audio[s : s + shape[0]] for s in _spaced(len(audio), pre.per_clip, shape[0])]
    from edge.frontend import LogMel

    mel = LogMel().frames(audio)
    return [mel[s : s + shape[0]] for s in _spaced(len(mel), pre.per_clip, shape[0])]


def load(clips: list[Clip], shape: tuple[int, ...], pre: Preprocess) -> Examples:
    inputs: list[F32] = []
    categories: list[str] = []
    names: list[str] = []
    for clip in clips:
        try:
            taken = clip_examples(clip, shape, pre)
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - decoders raise many kinds; report the file
            raise DataError(f"{clip.path}: unreadable ({exc})") from None
        if not taken:
            log.warning("%s: too short for one %s input, skipped", clip.path, list(shape))
        inputs += taken
        categories += [clip.category] * len(taken)
        names += [str(clip.path)] * len(taken)
    if not inputs:
        raise DataError(f"no file gave an input of shape {list(shape)}")
    return Examples(np.stack(inputs).astype(np.float32), categories, names)


def split(
    clips: list[Clip], holdout: float, min_per_class: int, seed: int = 0
) -> tuple[list[Clip], list[Clip]]:
    """(representative, held-out) clips, stratified by category, whole files on one side."""
    rng = np.random.default_rng(seed)
    by_category: dict[str, list[Clip]] = {}
    for clip in clips:
        by_category.setdefault(clip.category, []).append(clip)
    rep: list[Clip] = []
    held: list[Clip] = []
    for category, members in sorted(by_category.items()):
        n_held = round(len(members) * holdout)
        if category and (n_held < min_per_class or len(members) - n_held < 1):
            raise DataError(_too_few(category, len(members), n_held, holdout, min_per_class))
        order = rng.permutation(len(members))
        held += [members[i] for i in order[:n_held]]
        rep += [members[i] for i in order[n_held:]]
    if not rep or not held:
        raise DataError(
            f"{len(clips)} files cannot give both a representative and a held-out set with "
            f"--holdout {holdout}: add files, or change --holdout"
        )
    return rep, held


def _too_few(category: str, files: int, held: int, holdout: float, need: int) -> str:
    """What is wrong with one category's split, and what to change."""
    said = (
        f"too few examples of class {category!r}: {files} files, --holdout {holdout} holds "
        f"out {held}; need at least {need} held out (--min-per-class) plus one representative"
    )
    if files < need + 1:
        return f"{said}: add {need + 1 - files} or more files of {category!r}"
    low, high = need / files, (files - 1) / files
    return f"{said}: use --holdout from {low:.3g} to {high:.3g}, or add files of {category!r}"


def batches(inputs: F32) -> Iterator[list[F32]]:
    """The representative dataset as the converter wants it: one [1, ...] input at a time."""
    for x in inputs:
        yield [x[None]]

"""Decoding audio files to 16 kHz mono float32: soundfile for WAV/FLAC/MP3/OGG, ffmpeg for
the rest (the audio track of MP4 and other containers)."""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Generator, Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile
import soxr

from edge.errors import CaptureError

log = logging.getLogger(__name__)

RATE = 16000
F32 = npt.NDArray[np.float32]
_NATIVE = {".wav", ".flac", ".mp3", ".ogg", ".oga", ".aiff", ".aif"}
_SOUND_ONLY = {".wav", ".flac", ".mp3", ".aiff", ".aif"}  # no video stream (Ogg may have one)


def to_mono(block: npt.NDArray[np.float32], owned: bool = False) -> F32:
    """Channels averaged, and clipped to [-1, 1] as a microphone's samples are (float files
    can hold louder samples, which the models never see from a microphone). `owned`: a mono
    `block` is the caller's to overwrite (clipped in place, no copy of a whole file)."""
    out: F32 = block.mean(axis=1, dtype=np.float32) if block.ndim == 2 else block
    return np.clip(out, -1.0, 1.0, out=out if owned or out is not block else None)


def _soundfile_blocks(handle: soundfile.SoundFile, block_s: float) -> Iterator[F32]:
    with handle:
        rate = int(handle.samplerate)
        resampler = soxr.ResampleStream(rate, RATE, 1, dtype="float32") if rate != RATE else None
        for block in handle.blocks(blocksize=max(1, int(rate * block_s)), dtype="float32"):
            mono = to_mono(np.asarray(block, np.float32))
            yield resampler.resample_chunk(mono) if resampler else mono
        if resampler:
            yield resampler.resample_chunk(np.zeros(0, np.float32), last=True)


def _ffmpeg_blocks(path: Path, block_s: float) -> Iterator[F32]:
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise CaptureError(f"{path}: decoding this format needs ffmpeg, which is not installed")
    cmd = [
        exe,
        "-nostdin",
        "-v",
        "error",
        "-i",
        str(path),
        "-vn",
        "-ac",
        "1",
        "-ar",
        str(RATE),
        "-f",
        "f32le",
        "-",
    ]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        size = int(RATE * block_s) * 4
        got = False
        while chunk := proc.stdout.read(size):
            got = True
            yield np.clip(np.frombuffer(chunk[: len(chunk) // 4 * 4], np.float32), -1.0, 1.0)
        error = proc.stderr.read().decode(errors="replace").strip()
        if proc.wait() != 0 or not got:
            detail = error.splitlines()[-1] if error else "no audio track"
            raise CaptureError(f"{path}: cannot decode audio ({detail})")
        if error:
            log.warning("%s: decoded with errors, the file may be damaged (%s)", path,
                        error.splitlines()[-1])  # fmt: skip


VIDEO_SUFFIXES = {".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v"}


def is_video(path: Path) -> bool:
    """Whether `path` is a video container (its picture is analysed too)."""
    return path.suffix.lower() in VIDEO_SUFFIXES


def _sound_only(path: Path) -> bool:
    """Whether `path` is in a format that holds no picture and libsndfile reads its header."""
    if path.suffix.lower() not in _SOUND_ONLY:
        return False
    try:
        soundfile.info(str(path))
    except (soundfile.LibsndfileError, RuntimeError):
        return False
    return True


def stream_kinds(path: Path) -> set[str] | None:
    """The kinds of stream in a container ("audio", "video"; cover art is not video), or None
    when ffprobe is not installed or does not answer (the decoders then say why). A file
    ffprobe cannot read at all is a `CaptureError` that says so, not an audio problem.
    WAV, FLAC, MP3 and AIFF files libsndfile reads are audio without asking ffprobe (a
    process start, a tenth of a second)."""
    if _sound_only(path):
        return {"audio"}
    exe = shutil.which("ffprobe")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "-v", "error", "-show_entries",
             "stream=codec_type:stream_disposition=attached_pic", "-of", "csv=p=0", str(path)],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines()
        detail = lines[-1].removeprefix(f"{path}: ") if lines else f"ffprobe exit {out.returncode}"
        raise CaptureError(f"{path}: cannot read it: damaged or not a media file ({detail})")
    rows = (line.partition(",") for line in out.stdout.split())
    return {kind for kind, _, picture in rows if picture != "1"}


def _cut_short(path: Path) -> bool:
    """Whether a RIFF/WAVE file is shorter than its header says (libsndfile reads what is there
    without a word)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(12)
    except OSError:
        return False  # the decoder says why
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return False
    declared = int.from_bytes(head[4:8], "little") + 8
    return 8 < declared < 0xFFFFFFFF and declared > path.stat().st_size


def _open_native(path: Path) -> soundfile.SoundFile | None:
    """A libsndfile handle for `path`, or None where ffmpeg must decode it."""
    if path.is_dir():
        raise CaptureError(f"{path}: is a folder, not an audio file")
    if not path.is_file():
        raise CaptureError(f"{path}: no such file")
    if path.suffix.lower() not in _NATIVE:
        return None
    if _cut_short(path):
        log.warning("%s: the file is shorter than its header says: it may be cut off", path)
    try:
        return soundfile.SoundFile(str(path))
    except (soundfile.LibsndfileError, RuntimeError):
        return None  # an encoding libsndfile does not know: let ffmpeg try


def blocks(path: Path, block_s: float = 0.5) -> Generator[F32, None, None]:
    """The file's audio as 16 kHz mono float32 blocks of about `block_s` seconds."""
    handle = _open_native(path)
    if handle is not None:
        yield from _soundfile_blocks(handle, block_s)
        return
    yield from _ffmpeg_blocks(path, block_s)


def read_all(path: Path) -> F32:
    """The whole file as one 16 kHz mono float32 array (one read where libsndfile can)."""
    handle = _open_native(path)
    if handle is None:
        parts = list(_ffmpeg_blocks(path, 10.0))
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)
    with handle:
        rate = int(handle.samplerate)
        audio = to_mono(handle.read(dtype="float32", always_2d=False), owned=True)
    if not len(audio):
        raise CaptureError(f"{path}: holds no audio samples")
    if rate != RATE:
        audio = soxr.resample(audio, rate, RATE).astype(np.float32)
    return np.ascontiguousarray(audio, np.float32)

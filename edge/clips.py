"""Event clips: pre-roll plus post-roll audio (WAV) and video (MP4) cut from the rings, off
the hot path.

Flow: `ClipSink` sits in front of the outbox. Every event is stored there first (no alert
waits for a clip), then offered to the `ClipWriter` without blocking: a bounded queue; when
it is full the event is dropped and counted. The writer's one thread follows each event
from its start, copying audio (by absolute sample index) and frames (by stream time) out of
the rings as they arrive, so an event longer than the rings still gets a whole clip. Once
the post-roll after the event's end has been captured it closes the files, enforces the
retention and the disk quota, and hands a clip reference (span, paths, durations, sha256)
to `on_clip`; the daemon sends it as one extra `update` alert of the event.

Span: `[max(0, start_s - pre_s), end_s + post_s]` in stream seconds, cut at the sample for
audio and at 1/fps for video (each output frame is the newest camera frame at its time, so
the MP4 has a constant rate). When the data ends first (a file source, shutdown), the clip
ends with the data; when the rings no longer hold the start of the pre-roll (`pre_s` longer
than `video.ring_s` / `audio.ring_s`, or a camera that just came up), each track starts with
its oldest data held and says so in its `start_s`. Audio lost to a ring overrun later on is
written as silence and counted. Without ffmpeg, or when the camera has
delivered nothing since before the clip's start (offline), a clip is the WAV alone. A clip
that fails (a full disk) leaves no partial file behind.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import logging
import math
import queue
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import soundfile

from edge.events import Event, EventSink
from edge.ring import AudioRing, Overrun
from edge.videoconfig import ClipsConfig

if TYPE_CHECKING:  # OpenCV is loaded only where there is a camera (about 30 MB of RSS)
    from edge.camera import U8, FrameRing

log = logging.getLogger(__name__)
RATE = 16000
GRACE_S = 5.0  # after end + post-roll: how long to wait for data that may not come
MAX_CLIP_S = 600.0  # an event still open after this long is closed (its end was lost)
PRUNE_EVERY_S = 3600.0
STALE_S = 1.0  # a newest frame older than the clip's start by this much: the camera is away
# the daemon's own files, `<stamp>_<category>_<key>.(wav|mp4)` (and an interrupted step's): the
# only ones retention and the quota count and delete; anything else in the folder is left alone
OWN_FILE = re.compile(r"\d{8}T\d{6}Z_[A-Za-z0-9_-]+_[A-Za-z0-9]*(\.sound|\.trim)?\.(wav|mp4)")
LOW_SPACE = 1 << 20  # a clip that fails with less free space than this failed on a full disk
Clip = dict[str, Any]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def prune(
    folder: Path,
    quota_bytes: float,
    retention_s: float,
    *,
    now: float | None = None,
    keep: frozenset[Path] = frozenset(),
    failed: dict[Path, str] | None = None,
) -> list[Path]:
    """Delete clip files (`OWN_FILE`) in `folder` older than `retention_s`, then the oldest
    until the rest fit in `quota_bytes`; files in `keep` (clips being written) stay. The
    deleted paths; a file (or the folder) that cannot be read or deleted is skipped and put in
    `failed` (path -> reason)."""
    now = time.time() if now is None else now
    failed = {} if failed is None else failed
    files: list[tuple[float, int, Path]] = []
    total = 0  # the quota counts every clip file, kept ones too
    try:
        entries = list(folder.iterdir()) if folder.is_dir() else []
    except OSError as exc:
        failed[folder] = exc.strerror or str(exc)
        entries = []
    for path in entries:
        if not OWN_FILE.fullmatch(path.name):
            continue
        try:
            st = path.stat()
            if path.is_file():
                total += st.st_size
                if path not in keep:
                    files.append((st.st_mtime, st.st_size, path))
        except FileNotFoundError:
            continue
        except OSError as exc:
            failed[path] = exc.strerror or str(exc)
    files.sort()
    gone: list[Path] = []
    for mtime, size, path in files:
        if now - mtime <= retention_s and total <= quota_bytes:
            break
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:  # EPERM, EACCES, EROFS: skipped; its size no longer counts, or
            failed[path] = exc.strerror or str(exc)  # every newer clip would go in its place
            total -= size
            continue
        gone.append(path)
        total -= size
    if gone:
        log.info("clips: removed %d old files (retention, quota)", len(gone))
    return gone


@functools.cache
def add_sound(
    mp4: Path, wav: Path, seconds: float, skip_s: float = 0.0, timeout: float = 60.0
) -> None:
    """Puts `wav` into `mp4` as an AAC track (the picture stream-copied, the sound from `skip_s`,
    where the picture starts, cut at the picture's length), so a browser plays it with sound."""
    out = mp4.with_suffix(".sound.mp4")
    done = subprocess.run(
        [shutil.which("ffmpeg") or "ffmpeg", "-v", "error", "-y", "-i", str(mp4),
         "-ss", f"{skip_s:.4f}", "-t", f"{seconds:.4f}", "-i", str(wav),
         "-map", "0:v:0", "-map", "1:a:0",
         "-c:v", "copy", "-c:a", "aac", "-b:a", "64k", "-movflags", "+faststart", str(out)],
        capture_output=True, timeout=timeout, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        out.unlink(missing_ok=True)
        raise OSError(f"ffmpeg: {done.stderr.decode(errors='replace')[-300:]}")
    out.replace(mp4)


def video_encoder() -> list[str] | None:
    """ffmpeg encoder arguments: H.264 (libx264) when available, else MPEG-4 part 2."""
    exe = shutil.which("ffmpeg")
    if exe is None:
        return None
    out = subprocess.run(
        [exe, "-hide_banner", "-encoders"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    if re.search(r"\slibx264\s", out):
        return [exe, "-c:v", "libx264", "-preset", "veryfast", "-crf", "26", "-pix_fmt", "yuv420p"]
    return [exe, "-c:v", "mpeg4", "-q:v", "5", "-pix_fmt", "yuv420p"]


class AudioTrack:
    """Samples [start, end) of the audio ring into a 16-bit WAV, as they arrive."""

    def __init__(self, path: Path, start: int) -> None:
        self.path = path
        self.start = self.next = start
        self.end: int | None = None
        self.lost = 0  # samples written as silence (overwritten before they were copied)
        self._file = soundfile.SoundFile(path, "w", RATE, 1, "PCM_16", format="WAV")

    def pump(self, ring: AudioRing) -> None:
        upto = ring.head if self.end is None else min(ring.head, self.end)
        while self.next < upto:
            count = min(upto - self.next, ring.capacity // 2, RATE * 10)
            try:
                block = ring.read(self.next, count)
            except Overrun as exc:
                if self.next == self.start:  # the pre-roll begins before the ring: start later
                    self.start = self.next = min(upto, exc.oldest)
                    continue
                gap = min(upto, exc.oldest) - self.next
                self.lost += gap
                self._file.write(np.zeros(gap, np.float32))
                self.next += gap
                continue
            self._file.write(block)
            self.next += count

    def set_end(self, end: int) -> None:
        """The clip ends at sample `end`; what was already written past it is cut off."""
        self.end = max(self.start, end)
        if self.next > self.end:  # the end is decided after the sound: samples ran on
            self._file.truncate(self.end - self.start)
            self._file.seek(0, soundfile.SEEK_END)
            self.next = self.end

    def done(self) -> bool:
        return self.end is not None and self.next >= self.end

    def close(self) -> float:
        """Close the file; its duration in seconds."""
        self.end = self.next
        self._file.close()
        return (self.next - self.start) / RATE


class VideoTrack:
    """Frames of the frame ring at a constant rate from `t0` into an MP4 through ffmpeg."""

    def __init__(
        self, path: Path, t0: float, fps: float, shape: tuple[int, ...], encoder: list[str]
    ) -> None:
        height, width = shape[0], shape[1]
        self.path, self.t0, self.fps = path, t0, fps  # t0: moved to the first frame held
        self.t1: float | None = None  # the end, once known
        self.written = 0
        self._seen_t = -math.inf
        self._last: U8 | None = None
        self._proc = subprocess.Popen(
            [encoder[0], "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24",
             "-s", f"{width}x{height}", "-r", f"{fps:g}", "-i", "-", *encoder[1:],
             "-vf", "scale=trunc(iw/2)*2:trunc(ih/2)*2", "-threads", "1",
             "-movflags", "+faststart", "-f", "mp4", str(path)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip

    def set_end(self, t1: float) -> None:
        self.t1 = t1

    @property
    def count(self) -> int | None:
        """Output frames in all, once the end is known."""
        return None if self.t1 is None else max(0, round((self.t1 - self.t0) * self.fps))

    def _emit(self, frame: U8) -> None:
        stdin: IO[bytes] | None = self._proc.stdin
        assert stdin is not None
        stdin.write(np.ascontiguousarray(frame).tobytes())
        self.written += 1

    def _slot(self, index: int) -> float:
        return self.t0 + index / self.fps

    def pump(self, ring: FrameRing) -> None:
        for t, frame in ring.since(self._seen_t):
            if t <= self._seen_t:
                continue
            self._seen_t = t
            if self._last is None and t > self.t0:  # the ring begins after the pre-roll does
                self.t0 = t  # the clip starts with its first real frame, not a frozen one
            # every slot before this frame's time shows the newest earlier frame
            while (self.count is None or self.written < self.count) and self._slot(
                self.written
            ) < t - 1e-6:
                assert self._last is not None
                self._emit(self._last)
            self._last = frame

    def done(self) -> bool:
        return self.count is not None and self.written >= self.count

    def finish(self) -> None:
        """Fill the slots up to the newest frame seen (the data ends there at the latest)."""
        if self._last is None:
            return
        covered = math.floor((self._seen_t - self.t0) * self.fps + 1e-6) + 1
        target = covered if self.count is None else min(self.count, covered)
        while self.written < target:
            self._emit(self._last)

    def close(self, timeout: float = 30.0) -> float | None:
        """Finish the file; its duration in seconds, None (and no file) when no frame fell in
        the clip's span (OSError if ffmpeg failed)."""
        with contextlib.suppress(BrokenPipeError):
            self.finish()
        if self.written == 0:
            self.kill()
            self.path.unlink(missing_ok=True)
            return None
        _, err = self._proc.communicate(timeout=timeout)
        if self._proc.returncode != 0:
            raise OSError(f"ffmpeg failed ({self._proc.returncode}): {err.decode()[-300:]}")
        if self.count is not None and 0 < self.count < self.written:
            self._trim(self.count, timeout)  # the end was decided after frames ran on
        return self.written / self.fps

    def _trim(self, count: int, timeout: float) -> None:
        """Keep the first `count` frames: a stream copy, exact at the end of an H.264 stream."""
        trimmed = self.path.with_suffix(".trim.mp4")
        done = subprocess.run(
            [shutil.which("ffmpeg") or "ffmpeg", "-v", "error", "-y", "-i", str(self.path),
             "-frames:v", str(count), "-c", "copy", "-movflags", "+faststart", str(trimmed)],
            capture_output=True, timeout=timeout, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            trimmed.unlink(missing_ok=True)
            raise OSError(f"ffmpeg could not trim the clip: {done.stderr.decode()[-300:]}")
        trimmed.replace(self.path)
        self.written = count

    def kill(self) -> None:
        if self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
        self._proc.kill()
        self._proc.wait(5)


@dataclass
class Job:
    event: Event
    start_s: float
    audio: AudioTrack | None
    video: VideoTrack | None
    opened: float = field(default_factory=time.monotonic)
    deadline: float | None = None  # set at the event's end


@dataclass
class ClipStats:
    written: int = 0
    dropped: int = 0  # events the queue had no room for
    failed: int = 0
    lost_samples: int = 0
    no_video: int = 0  # clips written without their MP4 (no ffmpeg)
    prune_failed: int = 0  # files the pruning could not delete (last prune)
    errors: int = 0  # unexpected errors the writer thread survived
    error: str = ""  # the last problem, for health


class ClipWriter:
    """One thread that turns events into clip files (see the module docstring)."""

    def __init__(
        self,
        config: ClipsConfig,
        folder: Path,
        on_clip: Callable[[Event, Clip], None],
        *,
        audio: AudioRing | None = None,
        frames: FrameRing | None = None,
        fps: float = 15.0,
    ) -> None:
        self.config = config
        self.folder = folder
        self.on_clip = on_clip
        self.audio = audio
        self.frames = frames
        self.fps = fps
        self.stats = ClipStats()
        self._queue: queue.Queue[Event] = queue.Queue(config.queue)
        self._jobs: dict[str, Job] = {}
        self._prune_warned: set[Path] = set()
        self._encoder: list[str] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="clips", daemon=True)

    # --- the hot side: never waits ---------------------------------------------------------
    def offer(self, event: Event) -> None:
        if event.phase == "update":
            return
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.stats.dropped += 1
            log.warning("clip queue full: no clip for %s %s", event.category, event.phase)

    # --- the writer thread -----------------------------------------------------------------
    def start(self) -> None:
        """Start the writer; a clip folder it cannot make is logged, and each clip then fails
        and is counted: detection and alerts go on without evidence."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.error("cannot make the clip folder %s (%s): events will have no clips", self.folder,
                      exc.strerror)  # fmt: skip
        self._warn_short_rings()
        if self.frames is not None:
            self._encoder = video_encoder()
            if self._encoder is None:
                log.warning("ffmpeg is not installed: event clips are the WAV alone, without "
                            "the camera's MP4 (install ffmpeg)")  # fmt: skip
        self._thread.start()

    def _warn_short_rings(self) -> None:
        """A pre-roll longer than a ring holds: the clips start later than `pre_s` asks."""
        held = {"audio.ring_s": self.audio.capacity / RATE if self.audio else None}
        held["video.ring_s"] = self.frames.capacity / self.fps if self.frames else None
        for key, seconds in held.items():
            if seconds is not None and self.config.pre_s > seconds + 1e-6:
                log.warning(
                    "video.clips.pre_s is %g s but %s is %g s: clips start at most %g s before "
                    "their event (raise %s or lower the pre-roll)",
                    self.config.pre_s, key, seconds, seconds, key,
                )  # fmt: skip

    def stop(self, timeout: float) -> None:
        """Finish the clips under way with the data there is, then stop."""
        self._stop.set()
        self._thread.join(timeout)

    def _prune(self) -> None:
        keep = frozenset(
            track.path for job in self._jobs.values() for track in (job.audio, job.video) if track
        )
        failed: dict[Path, str] = {}
        prune(
            self.folder,
            self.config.quota_mb * 1e6,
            self.config.retention_days * 86400,
            keep=keep,
            failed=failed,
        )
        self.stats.prune_failed = len(failed)
        for path, reason in failed.items():
            level = logging.DEBUG if path in self._prune_warned else logging.WARNING
            log.log(level, "clips: cannot remove %s (%s): it stays", path, reason)
            self.stats.error = f"cannot remove {path.name}: {reason}"
        self._prune_warned = set(failed)

    def _run(self) -> None:
        next_prune = time.monotonic()
        while True:
            try:  # one bad file or clip must not end the thread: no more clips until restart
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + PRUNE_EVERY_S
                    self._prune()
                if self._stop.is_set():
                    break
                with contextlib.suppress(queue.Empty):
                    self._take(self._queue.get(timeout=0.2))
                self._pump(final=False)
            except Exception as exc:
                self.stats.errors += 1
                self.stats.error = f"{type(exc).__name__}: {exc}"
                log.exception("clip writer: unexpected error (it goes on)")
                self._stop.wait(1.0)
        try:
            while not self._queue.empty():
                self._take(self._queue.get_nowait())
            self._pump(final=True)
        except Exception:
            self.stats.errors += 1
            log.exception("clip writer: unexpected error while finishing the clips")

    def _take(self, event: Event) -> None:
        if event.phase == "start":
            self._open(event)
            return
        job = self._jobs.get(event.key)
        if job is None:
            return  # its start was dropped (counted)
        job.event = event
        t1 = event.end_s + self.config.post_s
        if job.audio is not None:
            job.audio.set_end(round(t1 * RATE))
        if job.video is not None:
            job.video.set_end(t1)
        job.deadline = time.monotonic() + self.config.post_s + GRACE_S

    def _open(self, event: Event) -> None:
        start_s = max(0.0, event.start_s - self.config.pre_s)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(event.wall_start))
        key = re.sub(r"[^A-Za-z0-9]", "", event.key)[-8:]
        base = self.folder / f"{stamp}_{re.sub(r'[^A-Za-z0-9_-]', '', event.category)}_{key}"
        audio = video = None
        if self.audio is not None:
            try:
                audio = AudioTrack(base.with_suffix(".wav"), round(start_s * RATE))
            except (OSError, RuntimeError) as exc:
                self._failed("cannot start the clip %s: %s", base.with_suffix(".wav"), exc)
        latest = self.frames.latest() if self.frames is not None else None
        if latest is not None and latest[1] < start_s - STALE_S:
            latest = None  # the camera delivered nothing since before the clip: no picture
            log.info("clip %s: no picture, the camera is offline", base.name)
        if latest is not None and self._encoder is None:
            self.stats.no_video += 1  # said at start
        elif latest is not None and self._encoder is not None:
            path = base.with_suffix(".mp4")
            try:
                video = VideoTrack(path, start_s, self.fps, latest[2].shape, self._encoder)
            except OSError as exc:
                self._failed("cannot start the clip %s: %s", path, exc)
        if audio is None and video is None:
            return
        self._jobs[event.key] = Job(event, start_s, audio, video)

    def _reason(self, exc: BaseException) -> str:
        """The error as the user needs it: a full disk says so (libsndfile: "System error.")."""
        if getattr(exc, "errno", None) == errno.ENOSPC:
            return f"no space left on {self.folder}"
        try:
            if shutil.disk_usage(self.folder).free < LOW_SPACE:
                return f"no space left on {self.folder}"
        except OSError:
            pass
        return str(exc)

    def _failed(self, message: str, path: Path, exc: BaseException) -> None:
        """Count and log a failed file and remove what of it was written."""
        self.stats.failed += 1
        self.stats.error = f"{path.name}: {self._reason(exc)}"
        log.error(message, path.name, self._reason(exc))
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)

    def _pump(self, final: bool) -> None:
        now = time.monotonic()
        for key, job in list(self._jobs.items()):
            try:
                if job.audio is not None and self.audio is not None:
                    job.audio.pump(self.audio)
                if job.video is not None and self.frames is not None:
                    job.video.pump(self.frames)
            except Exception as exc:  # noqa: BLE001 (the job fails, the writer goes on)
                self._fail(key, job, exc)
                continue
            tracks = [t for t in (job.audio, job.video) if t is not None]
            complete = all(t.done() for t in tracks)
            late = job.deadline is not None and now >= job.deadline
            if final or complete or late or now - job.opened > MAX_CLIP_S:
                self._finish(key, job)

    def _fail(self, key: str, job: Job, exc: BaseException) -> None:
        """The whole clip failed: nothing of it stays on disk; pruning may make room."""
        self.stats.failed += 1
        self.stats.error = f"clip of {job.event.category}: {self._reason(exc)}"
        log.error("clip of %s failed: %s", job.event.category, self._reason(exc))
        del self._jobs[key]
        if job.video is not None:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                job.video.kill()
        if job.audio is not None:
            with contextlib.suppress(RuntimeError, OSError):
                job.audio.close()
        for track in (job.audio, job.video):
            if track is not None:
                with contextlib.suppress(OSError):
                    track.path.unlink(missing_ok=True)
        self._prune()

    def _finish(self, key: str, job: Job) -> None:
        del self._jobs[key]
        clip: Clip = {}
        spans = []
        for name, track in (("audio", job.audio), ("video", job.video)):
            if track is None:
                continue
            try:
                duration = track.close()
            except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
                if isinstance(track, VideoTrack):
                    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                        track.kill()
                self._failed(f"the {name} clip %s failed: %s", track.path, exc)
                continue
            if duration is None:
                log.info("clip %s: no picture, the camera delivered no frame in its span",
                         track.path.name)  # fmt: skip
                continue
            start = track.start / RATE if isinstance(track, AudioTrack) else track.t0
            spans.append((start, start + duration))
            clip[name] = {
                "path": str(track.path),
                "start_s": round(start, 3),
                "duration_s": round(duration, 4),
                "sha256": sha256(track.path),
            }
        if "audio" in clip and "video" in clip:  # one file that plays with its sound
            try:
                video, skip = clip["video"], spans[1][0] - spans[0][0]
                add_sound(Path(video["path"]), Path(clip["audio"]["path"]), video["duration_s"],
                          max(0.0, skip))  # fmt: skip
                video["sha256"], video["sound"] = sha256(Path(video["path"])), True
            except (OSError, subprocess.TimeoutExpired) as exc:  # the picture alone is kept
                log.warning("could not add the sound to %s: %s", clip["video"]["path"], exc)
        if job.audio is not None:
            self.stats.lost_samples += job.audio.lost
        if not spans:
            self._prune()
            return
        # the span of the audio when there is audio (the picture may start later)
        clip["start_s"], clip["end_s"] = round(spans[0][0], 3), round(spans[0][1], 3)
        self.stats.written += 1
        log.info("clip for %s written: %s", job.event.category, clip)
        self._prune()
        try:
            self.on_clip(job.event, clip)
        except Exception:  # the clip is on disk; the announcement is what failed
            log.exception("could not announce the clip of %s", job.event.category)

    def health(self) -> dict[str, object]:
        s = self.stats
        return {
            "clips_written": s.written,
            "clips_dropped": s.dropped,
            "clips_failed": s.failed,
            "clips_no_video": s.no_video,
            "clips_active": len(self._jobs),
            "clips_queue": self._queue.qsize(),
            "clips_undeletable": s.prune_failed,
            "clips_errors": s.errors,
            "clips_error": s.error,
        }


class ClipSink:
    """An `EventSink`: stores the event through `inner` first, then offers it for a clip."""

    def __init__(self, inner: EventSink, writer: ClipWriter) -> None:
        self.inner = inner
        self.writer = writer

    def submit(self, event: Event) -> None:
        try:
            self.inner.submit(event)
        finally:
            self.writer.offer(event)

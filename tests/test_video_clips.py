"""Event clips: exact boundaries from real rings, the bounded queue, retention and quota, and
the daemon writing WAV + MP4 clips for real dev clips (subprocess, `file:` sources) that are
announced in an extra `update` alert of the event."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import soundfile

from edge.camera import FrameRing
from edge.clips import RATE, ClipWriter, prune
from edge.events import Event
from edge.ring import AudioRing
from edge.videoconfig import ClipsConfig
from tests.helpers import (
    ROOT,
    VIDEO_DEV,
    fight_with_scream,
    require_models,
    require_shared,
)
from tests.test_cli_audio import scene


def ffprobe(path: Path, entries: str, stream: str = "v:0") -> str:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", stream, "-count_frames", "-show_entries",
         entries, "-of", "csv=p=0", str(path)],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return out.stdout.strip()


def decodes(path: Path) -> None:
    """ffmpeg decodes every frame of `path` without a single error."""
    run = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert not run.stderr.strip(), run.stderr


def event(phase: str, start_s: float, end_s: float) -> Event:
    return Event(
        phase=phase,  # type: ignore[arg-type]
        key="k1",
        category="scream",
        severity="warning",
        score=0.9,
        peak_score=0.9,
        start_s=start_s,
        at_s=end_s,
        end_s=end_s,
        wall_start=1_700_000_000.0,
        wall_at=1_700_000_000.0 + end_s,
    )


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} after {timeout} s")
        time.sleep(0.05)


def test_clip_boundaries_are_exact(tmp_path: Path) -> None:
    """Audio is cut at the sample and video at 1/fps, while the rings keep being written."""
    ring = AudioRing(RATE * 4)  # shorter than the clip: it must be copied as it arrives
    frames = FrameRing(30, (48, 64, 3))
    clips: list[tuple[Event, dict[str, Any]]] = []
    config = ClipsConfig(pre_s=1.0, post_s=0.5)
    writer = ClipWriter(
        config, tmp_path / "clips", lambda e, c: clips.append((e, c)), audio=ring, frames=frames,
        fps=10.0,
    )  # fmt: skip
    writer.start()
    ramp = (np.arange(RATE * 10) % 20000 / 40000).astype(np.float32)  # sample i -> (i % 20000)/4e4
    try:
        for step in range(100):  # 10 s of stream: audio in 0.1 s blocks, one frame per block
            t = step / 10
            ring.write(ramp[step * 1600 : (step + 1) * 1600])
            frames.write(np.full((48, 64, 3), step * 2, np.uint8), t)
            if step == 20:
                writer.offer(event("start", 2.5, 2.5))
            if step == 85:  # as in the daemon, the end is decided after the sound has stopped:
                time.sleep(0.3)  # the writer has copied audio and frames past the clip's end
                writer.offer(event("end", 2.5, 6.0))
            time.sleep(0.01)
        wait_for(lambda: clips, 20, "no clip")
    finally:
        writer.stop(10)
    _, clip = clips[0]
    assert clip["start_s"] == 1.5
    assert clip["end_s"] == 6.5
    audio, rate = soundfile.read(clip["audio"]["path"], dtype="float32")
    assert rate == RATE
    assert len(audio) == 5 * RATE == clip["audio"]["duration_s"] * RATE
    np.testing.assert_allclose(audio, ramp[int(1.5 * RATE) : int(6.5 * RATE)], atol=1 / 32768)
    mp4 = Path(clip["video"]["path"])
    decodes(mp4)
    assert ffprobe(mp4, "stream=codec_name,nb_read_frames") == "h264,50"
    assert clip["video"]["duration_s"] == 5.0
    assert float(ffprobe(mp4, "format=duration", "")) == 5.0
    assert ffprobe(mp4, "stream=codec_name", "a:0") == "aac"  # the MP4 plays with its sound
    assert clip["video"]["sound"] is True
    assert clip["video"]["sha256"] == hashlib.sha256(mp4.read_bytes()).hexdigest()
    assert writer.stats.written == 1
    assert writer.stats.lost_samples == 0


def test_full_queue_drops_and_counts(tmp_path: Path) -> None:
    writer = ClipWriter(ClipsConfig(queue=2), tmp_path, lambda e, c: None, audio=AudioRing(RATE))
    for _ in range(5):  # the writer thread is not started: nothing is taken off the queue
        writer.offer(event("start", 0, 0))
    writer.offer(event("update", 0, 0))  # updates never take a slot
    assert writer.stats.dropped == 3
    assert writer.health()["clips_queue"] == 2


def test_prune_by_retention_then_quota(tmp_path: Path) -> None:
    now = 1_800_000_000.0
    ages_days = {"a": 20, "b": 10, "c": 5, "d": 1, "e": 0}
    for name, days in ages_days.items():
        path = tmp_path / clip_name(name, ".wav")
        path.write_bytes(b"x" * 1000)
        os.utime(path, (now - days * 86400, now - days * 86400))
    gone = prune(tmp_path, quota_bytes=1e9, retention_s=14 * 86400, now=now)
    assert [p.name for p in gone] == [clip_name("a", ".wav")]
    keep = frozenset({tmp_path / clip_name("b", ".wav")})  # being written: stays whatever its age
    gone = prune(tmp_path, quota_bytes=2500, retention_s=14 * 86400, now=now, keep=keep)
    assert [p.name for p in gone] == [clip_name("c", ".wav"), clip_name("d", ".wav")]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        clip_name("b", ".wav"), clip_name("e", ".wav")
    ]  # fmt: skip


def clip_name(key: str, suffix: str) -> str:
    """A name the clip writer gives its files."""
    return f"20261121T235249Z_violence_{key}37bec64{suffix}"


def test_prune_deletes_only_the_clip_writers_own_files(tmp_path: Path) -> None:
    """A README, a user's video or a subfolder in the clip folder are neither deleted nor
    counted in the quota (retention and the quota removed any file)."""
    now = 1_800_000_000.0
    names = [
        "README.txt", "holiday.mp4", "notes_2026.wav", clip_name("a", ".wav"),
        clip_name("b", ".mp4"), clip_name("c", ".sound.mp4"),
    ]  # fmt: skip
    for name in names:
        path = tmp_path / name
        path.write_bytes(b"x" * 1000)
        os.utime(path, (now - 30 * 86400, now - 30 * 86400))
    (tmp_path / "mine").mkdir()
    gone = prune(tmp_path, quota_bytes=1e9, retention_s=14 * 86400, now=now)
    assert sorted(p.name for p in gone) == sorted(names[3:])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.txt", "holiday.mp4", "mine",
                                                          "notes_2026.wav"]  # fmt: skip


def run_daemon(tmp_path: Path, audio: str, video: str, timeout: float = 90) -> list[dict[str, Any]]:
    tmp_path.mkdir(exist_ok=True)
    config = tmp_path / "config.yaml"
    config.write_text(
        f"models: {{dir: {require_models()}}}\nstorage: {{dir: {tmp_path}}}\n"
        f"audio: {{source: '{audio}'}}\n"
        f"video: {{source: '{video}', clips: {{pre_s: 2, post_s: 1.5}}, "
        "fusion: {window_s: 10}}\n"
        "mqtt: {host: 127.0.0.1, port: 9}\n"
    )
    run = subprocess.run(
        [str(ROOT / ".venv/bin/safeguard"), "run", "--config", str(config)],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    with sqlite3.connect(tmp_path / "outbox.db") as db:
        return [json.loads(p) for (p,) in db.execute("SELECT payload FROM outbox ORDER BY id")]


def clip_updates(alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each event's clip update: after its end, sharing its event id, carrying `clip`."""
    starts = {a["event_id"]: a for a in alerts if a["event"] == "start"}
    ends = {a["event_id"]: a for a in alerts if a["event"] == "end"}
    updates = [a for a in alerts if "clip" in a]
    assert updates, alerts
    assert len(updates) == len(ends), alerts
    for update in updates:
        assert update["event"] == "update"
        start, end = starts[update["event_id"]], ends[update["event_id"]]
        assert start["id"] < end["id"] < update["id"]  # no alert waited for the clip
        assert update["clip"]["start_s"] == round(max(0.0, start["stream_start_s"] - 2), 3)
    return updates


def check_wav(ref: dict[str, Any], clip: dict[str, Any]) -> None:
    path = Path(ref["path"])
    info = soundfile.info(path)
    assert info.samplerate == RATE
    assert info.frames == round(ref["duration_s"] * RATE)
    assert abs(clip["start_s"] + ref["duration_s"] - clip["end_s"]) < 1e-3
    assert ref["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert np.isfinite(soundfile.read(path)[0]).all()


def test_daemon_writes_audio_clips_without_a_camera(tmp_path: Path) -> None:
    wav = scene(tmp_path)  # a gunshot at 3.0 s in 9 s of room noise
    alerts = run_daemon(tmp_path / "state", f"file:{wav}", "none")
    for update in clip_updates(alerts):
        clip = update["clip"]
        assert "video" not in clip
        check_wav(clip["audio"], clip)
        assert 1.5 < clip["audio"]["duration_s"] < 9.0


def test_daemon_writes_wav_and_mp4_clips_for_a_fight_with_a_scream(tmp_path: Path) -> None:
    muxed = fight_with_scream(tmp_path, 11)
    alerts = run_daemon(tmp_path / "state", f"file:{muxed}", f"file:{muxed}")
    updates = clip_updates(alerts)
    assert {u["category"] for u in updates} >= {"scream", "violence"}
    for update in updates:
        clip = update["clip"]
        check_wav(clip["audio"], clip)
        mp4 = Path(clip["video"]["path"])
        decodes(mp4)
        frames = int(ffprobe(mp4, "stream=nb_read_frames"))
        assert frames == round(clip["video"]["duration_s"] * 15)  # video.max_fps
        assert abs(float(ffprobe(mp4, "format=duration", "")) - clip["video"]["duration_s"]) < 0.07
        assert abs(clip["video"]["duration_s"] - clip["audio"]["duration_s"]) <= 1 / 15 + 1e-3
        assert ffprobe(mp4, "stream=codec_name", "a:0") == "aac"
        sound = float(ffprobe(mp4, "stream=duration", "a:0"))
        assert clip["video"]["duration_s"] - 0.1 < sound <= clip["video"]["duration_s"] + 0.07
        assert clip["video"]["sha256"] == hashlib.sha256(mp4.read_bytes()).hexdigest()


def test_daemon_without_audio_stops_when_its_file_camera_ends(tmp_path: Path) -> None:
    """`audio: none` with a `file:` camera: MP4-only clips, and the daemon ends with the file."""
    fight = tmp_path / "fight.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-stream_loop", "-1", "-i",
         str(require_shared(VIDEO_DEV) / "clips" / "fi001.mp4"), "-an", "-c:v", "copy", "-t", "7",
         str(fight)],
        check=True, timeout=60,
    )  # fmt: skip
    began = time.monotonic()
    alerts = run_daemon(tmp_path / "state", "none", f"file:{fight}", timeout=60)
    assert time.monotonic() - began < 45  # it stopped by itself (the file is 7 s)
    updates = clip_updates(alerts)
    assert {u["category"] for u in updates} == {"violence"}
    for update in updates:
        clip = update["clip"]
        assert "audio" not in clip
        mp4 = Path(clip["video"]["path"])
        decodes(mp4)
        assert int(ffprobe(mp4, "stream=nb_read_frames")) == round(clip["video"]["duration_s"] * 15)


def test_a_clip_folder_that_cannot_be_made_costs_the_clips_not_the_alerts(
    tmp_path: Path,
) -> None:
    wav = scene(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    (state / "clips").write_text("a file where the clip folder goes")
    alerts = run_daemon(state, f"file:{wav}", "none")
    assert [a["event"] for a in alerts] == ["start", "end"]  # the gunshot, without a clip


@contextlib.contextmanager
def undeletable(path: Path) -> Iterator[None]:
    """`path` cannot be deleted (as on a read-only SD card or with another owner)."""
    if os.geteuid() != 0:
        pytest.skip("chattr +i needs root")
    subprocess.run(["chattr", "+i", str(path)], check=True, timeout=10)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True, timeout=10)


def test_a_file_the_pruning_cannot_delete_costs_no_clip(tmp_path: Path) -> None:
    """An old file over the quota that cannot be deleted is logged, skipped and shown in
    health; the writer thread goes on writing clips (it died at the first prune)."""
    folder = tmp_path / "clips"
    folder.mkdir()
    old = folder / clip_name("old", ".mp4")
    old.write_bytes(b"\0" * 11_000_000)
    os.utime(old, (time.time() - 2 * 86400, time.time() - 2 * 86400))
    ring = AudioRing(RATE * 10)
    clips: list[dict[str, Any]] = []
    config = ClipsConfig(pre_s=0.5, post_s=0.5, quota_mb=10, retention_days=1)
    writer = ClipWriter(config, folder, lambda e, c: clips.append(c), audio=ring)
    with undeletable(old):
        writer.start()
        try:
            for number in range(2):  # two events, each after a prune
                key = f"k{number}"
                writer.offer(replace(event("start", 1.0 + 3 * number, 1.0), key=key))
                writer.offer(replace(event("end", 1.0 + 3 * number, 2.0 + 3 * number), key=key))
                for _ in range(30):
                    ring.write(np.full(1600, 0.1, np.float32))
                    time.sleep(0.005)
                wait_for(lambda n=number: len(clips) > n, 20, f"no clip {number}")
        finally:
            writer.stop(10)
    health = writer.health()
    assert health["clips_written"] == 2, health
    assert health["clips_undeletable"] == 1, health
    assert old.name in str(health["clips_error"]), health
    assert old.exists()
    assert all(Path(c["audio"]["path"]).is_file() for c in clips)


def open_fds() -> set[str]:
    return {os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
            if os.path.exists(f"/proc/self/fd/{fd}")}  # fmt: skip


def write_event(
    writer: ClipWriter, ring: AudioRing, frames: FrameRing | None, start: float, end: float
) -> None:
    """Offer an event [start, end] while the rings get 0.1 s of data per step up to end + 1."""
    t0 = ring.head / RATE
    writer.offer(event("start", start, start))
    for step in range(round((end + 1 - t0) * 10)):
        t = t0 + step / 10
        ring.write(np.full(1600, 0.1, np.float32))
        if frames is not None:
            frames.write(np.full((48, 64, 3), 100, np.uint8), t)
        if abs(t - end) < 0.05:
            writer.offer(event("end", start, end))
        time.sleep(0.002)


def test_without_ffmpeg_a_clip_is_the_wav_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No ffmpeg on PATH: said once at start; each clip is its WAV (no clip at all before),
    counted as without video; no empty WAV left over and no file left open."""
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    ring, frames = AudioRing(RATE * 10), FrameRing(30, (48, 64, 3))
    clips: list[dict[str, Any]] = []
    folder = tmp_path / "clips"
    writer = ClipWriter(
        ClipsConfig(pre_s=0.5, post_s=0.5), folder, lambda e, c: clips.append(c), audio=ring,
        frames=frames, fps=10.0,
    )  # fmt: skip
    frames.write(np.zeros((48, 64, 3), np.uint8), 0.0)
    before = open_fds()
    with caplog.at_level(logging.WARNING, logger="edge.clips"):
        writer.start()
        try:
            write_event(writer, ring, frames, 1.0, 2.0)
            wait_for(lambda: clips, 20, "no clip")
        finally:
            writer.stop(10)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "ffmpeg is not installed" in warnings[0]
    assert "video" not in clips[0]
    assert soundfile.info(clips[0]["audio"]["path"]).frames == 2 * RATE
    health = writer.health()
    assert (health["clips_written"], health["clips_failed"], health["clips_no_video"]) == (1, 0, 1)
    assert [p.suffix for p in folder.iterdir()] == [".wav"]
    assert open_fds() <= before


def test_a_camera_offline_during_an_audio_event_gives_no_broken_mp4(tmp_path: Path) -> None:
    """The ring holds only frames from long before the clip (the camera went away): the clip is
    the WAV alone, without an ERROR, a failure count or a frameless MP4 left on disk."""
    ring, frames = AudioRing(RATE * 20), FrameRing(30, (48, 64, 3))
    frames.write(np.zeros((48, 64, 3), np.uint8), 0.5)  # the last frame, then the camera left
    clips: list[dict[str, Any]] = []
    folder = tmp_path / "clips"
    writer = ClipWriter(
        ClipsConfig(pre_s=1.0, post_s=0.5), folder, lambda e, c: clips.append(c), audio=ring,
        frames=frames, fps=10.0,
    )  # fmt: skip
    writer.start()
    try:
        ring.write(np.zeros(RATE * 6, np.float32))
        write_event(writer, ring, None, 7.0, 8.0)
        wait_for(lambda: clips, 20, "no clip")
    finally:
        writer.stop(10)
    assert "video" not in clips[0], clips
    assert writer.stats.failed == 0
    assert [p.suffix for p in folder.iterdir()] == [".wav"]


FULL_DISK = """
import json, logging, sys, time
from pathlib import Path
import numpy as np
from edge.clips import RATE, ClipWriter
from edge.ring import AudioRing
from edge.videoconfig import ClipsConfig
from tests.test_video_clips import event, write_event
from dataclasses import replace

logging.basicConfig(level=logging.INFO)
folder = Path(sys.argv[1])
ring = AudioRing(RATE * 40)
clips = []
writer = ClipWriter(ClipsConfig(pre_s=0.5, post_s=0.5), folder, lambda e, c: clips.append(c),
                    audio=ring)
writer.start()
write_event(writer, ring, None, 1.0, 21.0)  # 21 s of WAV: 670 kB on a 400 kB disk
deadline = time.monotonic() + 20
while not writer.stats.failed and time.monotonic() < deadline:
    time.sleep(0.05)
left = sorted(p.name for p in folder.iterdir())
writer.offer = lambda e, offer=writer.offer: offer(replace(e, key="k2"))
write_event(writer, ring, None, ring.head / RATE + 0.5, ring.head / RATE + 3.5)  # 4.5 s: fits
while not clips and time.monotonic() < deadline + 20:
    time.sleep(0.05)
writer.stop(10)
print(json.dumps({"left": left, "clips": clips, "health": writer.health()}))
"""


def test_a_full_disk_says_so_and_leaves_no_partial_clip(tmp_path: Path) -> None:
    """A clip folder on a 400 kB tmpfs (a private mount namespace): the clip that does not fit
    fails with "no space left on <folder>" (not libsndfile's "System error."), its partial
    file is removed, so the next, smaller clip fits."""
    folder = tmp_path / "clips"
    folder.mkdir()
    script = tmp_path / "full.py"
    script.write_text(FULL_DISK)
    run = subprocess.run(
        ["unshare", "-rm", "sh", "-c",
         f"mount -t tmpfs -o size=400k tmpfs {folder} && exec {ROOT}/.venv/bin/python {script} "
         f"{folder}"],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout)
    assert f"no space left on {folder}" in run.stderr, run.stderr[-3000:]
    assert "System error" not in run.stderr
    assert out["left"] == [], out  # the partial WAV is gone
    assert out["health"]["clips_failed"] == 1, out
    assert len(out["clips"]) == 1, out
    assert out["clips"][0]["audio"]["duration_s"] >= 3.9, out


def test_a_pre_roll_longer_than_the_rings_starts_where_the_data_starts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`pre_s` 3 s with 1 s of frames and 2 s of sound held: the MP4 starts at the oldest frame
    still held (it opened with 2 s of one frozen frame presented as footage) and the WAV at the
    oldest sample (it opened with silence); each track's `start_s` says where it starts, and
    the mismatch of pre_s and the rings is warned about when the writer starts."""
    ring, frames = AudioRing(RATE * 2), FrameRing(10, (48, 64, 3))
    clips: list[dict[str, Any]] = []
    writer = ClipWriter(
        ClipsConfig(pre_s=3.0, post_s=0.5), tmp_path / "clips", lambda e, c: clips.append(c),
        audio=ring, frames=frames, fps=10.0,
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="edge.clips"):
        writer.start()
    warnings = " ".join(r.getMessage() for r in caplog.records)
    assert "video.clips.pre_s" in warnings, warnings
    assert "video.ring_s" in warnings, warnings
    assert "audio.ring_s" in warnings, warnings
    try:
        for step in range(70):  # 7 s, one frame (grey level 2 * step) per 0.1 s of sound
            ring.write(np.full(1600, 0.1, np.float32))
            frames.write(np.full((48, 64, 3), 2 * step, np.uint8), step / 10)
            if step == 40:  # the ring holds frames 3.1-4.0 s now, sound 2.1-4.1 s
                writer.offer(event("start", 4.0, 4.0))
            if step == 55:
                writer.offer(event("end", 4.0, 5.0))
            time.sleep(0.01)
        wait_for(lambda: clips, 20, "no clip")
    finally:
        writer.stop(10)
    clip = clips[0]
    assert clip["video"]["start_s"] == 3.1, clip
    assert clip["audio"]["start_s"] == 2.1, clip
    assert (clip["start_s"], clip["end_s"]) == (2.1, 5.5), clip
    assert clip["video"]["duration_s"] == 2.4, clip
    assert clip["audio"]["duration_s"] == 3.4, clip
    mp4 = Path(clip["video"]["path"])
    assert ffprobe(mp4, "stream=nb_read_frames") == "24"
    ok, first = cv2.VideoCapture(str(mp4)).read()
    assert ok
    assert abs(float(first.mean()) - 62) < 4  # the frame of 3.1 s, not a frozen 3.1 s
    sound = float(ffprobe(mp4, "stream=duration", "a:0"))
    assert 2.3 < sound <= 2.47
    assert writer.stats.lost_samples == 0

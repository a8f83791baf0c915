"""`safeguard analyze` on video containers: the picture is analysed whatever the suffix, and
timed by each frame's own timestamp (also by the `file:` camera)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from edge.camera import CameraSource, FrameRing
from tests.helpers import ROOT, VIDEO_DEV, require_models, require_shared


def test_analyze_reads_the_picture_of_ts_and_mpg_files(tmp_path: Path) -> None:
    """MPEG-TS (what cameras and NVRs export) and MPEG-PS: the fight is found as in the .mp4
    (their picture was skipped without a word: decided by suffix)."""
    clip = require_shared(VIDEO_DEV / "clips" / "fi004.mp4")
    ts, mpg = tmp_path / "fi004.ts", tmp_path / "fi004.mpg"
    for args in (["-c", "copy", "-f", "mpegts", str(ts)],
                 ["-c:v", "mpeg2video", "-q:v", "2", "-c:a", "mp2", str(mpg)]):  # fmt: skip
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(clip), *args], check=True,
                       timeout=60)  # fmt: skip
    config = tmp_path / "config.yaml"
    config.write_text(f"models: {{dir: {require_models()}}}\nstorage: {{dir: {tmp_path}}}\n")
    run = subprocess.run(
        [str(ROOT / ".venv/bin/safeguard"), "analyze", "--config", str(config), "--json",
         str(ts), str(mpg)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    records = [json.loads(line) for line in run.stdout.splitlines()]
    found = {(r["file"], r["category"]) for r in records}
    assert (str(ts), "violence") in found, records
    assert (str(mpg), "violence") in found, records


def still_then_fight(tmp_path: Path, still_s: int) -> Path:
    """A variable-frame-rate MP4 (as phones and NVRs record): `still_s` seconds of one calm
    frame at 1 frame/s, then the fight fi004 (1.0-3.0 s into it) at 25 frames/s."""
    clips = require_shared(VIDEO_DEV / "clips")
    out = tmp_path / "vfr.mp4"
    graph = (
        f"[0:v]trim=end_frame=1,loop=loop={still_s - 1}:size=1,setpts=N/TB,fps=1,setsar=1[a];"
        "[1:v]fps=25,setpts=PTS-STARTPTS,setsar=1[b];[a][b]concat=n=2:v=1:a=0[v]"
    )
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-i", str(clips / "nofi002.mp4"), "-i",
         str(clips / "fi004.mp4"), "-filter_complex", graph, "-map", "[v]", "-fps_mode", "vfr",
         "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(out)],
        check=True, timeout=60,
    )  # fmt: skip
    return out


def test_analyze_times_variable_frame_rate_video_by_frame_timestamps(tmp_path: Path) -> None:
    """The fight starts 10 s into the VFR file; with t = index / average fps (6.7 here) its
    frames were placed at 1.5-11.6 s and no event (or one at the wrong time) was reported."""
    vfr = still_then_fight(tmp_path, 10)
    config = tmp_path / "config.yaml"
    config.write_text(f"models: {{dir: {require_models()}}}\nstorage: {{dir: {tmp_path}}}\n")
    run = subprocess.run(
        [str(ROOT / ".venv/bin/safeguard"), "analyze", "--config", str(config), "--json",
         str(vfr)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert [r["category"] for r in records] == ["violence"], records
    assert 10.5 <= records[0]["start_s"] <= 11.5, records  # fi004 alone: 1.0 s
    assert 10.5 <= records[0]["alert_at_s"] <= 12.0, records
    assert records[0]["end_s"] <= 13.1, records


def test_file_camera_times_variable_frame_rate_video_by_frame_timestamps(tmp_path: Path) -> None:
    """The `file:` camera stamps (and paces) each frame with its own time: the still frames
    at 0, 1, 2 s, the fight from 3 s on (by the average fps they were at 0, 0.08, 0.15 s)."""
    vfr = still_then_fight(tmp_path, 3)
    ring = FrameRing(200, (240, 320, 3))
    camera = CameraSource(f"file:{vfr}", ring, 320, max_fps=30)
    began = time.monotonic()
    camera.start()
    assert camera.ended.wait(30)
    took = time.monotonic() - began
    camera.stop()
    assert camera.stats.state == "ended", camera.stats
    times = [t for t, _ in ring.since(0.0)]
    assert len(times) >= 3 + 75, times
    assert times[:5] == pytest.approx([0.0, 1.0, 2.0, 3.0, 3.04], abs=1e-3), times
    assert times[-1] == pytest.approx(6.06, abs=0.05)
    assert 5.5 < took < 9.0  # paced at real-time speed by the same timestamps

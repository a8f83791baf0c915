"""The daemon with a `file:` camera raises the violence events `safeguard analyze` reports for
the same file, at the same stream times (DESIGN.md: `alert_at_s` is when the live daemon would
have alerted). It analysed the newest frame of a thinned ring at wall-clock ticks, analyze the
full-rate file at exact due times: with a 16-frame window one made an event the other missed."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
from pathlib import Path

import pytest

from edge.camera import Sampler, Thinning
from tests.helpers import ROOT, VIDEO_DEV, require_models, require_shared

# calm, two fights, calm, two fights, calm, two fights (about 31 s): analyze finds three events
CLIPS = ["nofi002", "fi001", "fi004", "nofi003", "nofi004", "fi009", "fi010", "nofi005",
         "nofi006", "fi016", "fi001", "nofi002"]  # fmt: skip
PERIOD_S = 1 / 8  # video.fps


def fights_and_calm(folder: Path) -> Path:
    clips = [require_shared(VIDEO_DEV / "clips" / f"{name}.mp4") for name in CLIPS]
    inputs = [arg for clip in clips for arg in ("-i", str(clip))]
    scaled = "".join(
        f"[{i}:v]scale=480:360,fps=25,setpts=PTS-STARTPTS,setsar=1[v{i}];"
        for i in range(len(clips))
    )
    joined = "".join(f"[v{i}]" for i in range(len(clips)))
    out = folder / "fights.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", *inputs, "-filter_complex",
         f"{scaled}{joined}concat=n={len(clips)}:v=1:a=0[v]", "-map", "[v]",
         "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(out)],
        check=True, timeout=120,
    )  # fmt: skip
    return out


def test_the_camera_keeps_the_frames_the_analysis_samples_within_max_fps() -> None:
    """A 25 fps camera is kept at 15 frames/s on a schedule, but never loses a frame that the
    8 fps sampler takes: sampling what it kept gives the frames sampled from the whole stream
    (what `file_frames` gives analyze). The sampler passes over due times no frame came for."""
    times = [i / 25 for i in range(250)]
    whole = Sampler(8)
    sampled = [t for t in times if whole.take(t)]
    assert sampled[:4] == pytest.approx([0.0, 0.16, 0.28, 0.4])
    thinning, camera = Thinning(15), Sampler(8)
    kept = [t for t in times if thinning.keep(t, camera.take(t))]
    assert len(kept) == pytest.approx(150, abs=1)
    worker = Sampler(8)
    assert [t for t in kept if worker.take(t)] == sampled
    alone = Thinning(15)
    assert sampled[1] not in [t for t in times if alone.keep(t)]  # thinned without the sampler
    assert worker.take(50.0)
    assert worker.due == pytest.approx(50.125)


def test_daemon_on_a_file_raises_the_events_analyze_reports(tmp_path: Path) -> None:
    models = require_models()
    video = fights_and_calm(tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text(
        f"models: {{dir: {models}}}\nstorage: {{dir: {tmp_path}}}\naudio: {{source: none}}\n"
        f"video: {{source: 'file:{video}', clips: {{enabled: false}}}}\n"
        "mqtt: {host: 127.0.0.1, port: 9}\nlogging: {health_every_s: 1}\n"
    )
    safeguard = str(ROOT / ".venv/bin/safeguard")
    run = subprocess.run(
        [safeguard, "run", "--config", str(config)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    skipped = [int(n) for n in re.findall(r"video_skipped=(\d+)", run.stderr)]
    assert skipped, run.stderr[-2000:]
    if skipped[-1] or "video analysis fell behind" in run.stderr:
        pytest.fail(
            f"the machine was too slow to analyse video.fps=8 in real time ({skipped[-1]} "
            "frames skipped): the daemon could not see analyze's frames; rerun on an idle machine"
        )
    with sqlite3.connect(tmp_path / "outbox.db") as db:
        alerts = [json.loads(p) for (p,) in db.execute("SELECT payload FROM outbox ORDER BY id")]
    live = [
        (a["stream_start_s"], a["stream_at_s"])
        for a in alerts
        if a["event"] == "start" and a["category"] == "violence"
    ]
    offline = subprocess.run(
        [safeguard, "analyze", "--config", str(config), "--json", str(video)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    records = [json.loads(line) for line in offline.stdout.splitlines()]
    expected = [(r["start_s"], r["alert_at_s"]) for r in records if r["category"] == "violence"]
    assert len(expected) >= 3, records  # the clips make three events
    assert len(live) == len(expected), (live, expected)
    for (start, at), (want_start, want_at) in zip(live, expected, strict=True):
        assert start == pytest.approx(want_start, abs=PERIOD_S), (live, expected)
        assert at == pytest.approx(want_at, abs=PERIOD_S), (live, expected)

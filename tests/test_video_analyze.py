"""`safeguard analyze` on video containers: the picture is analysed whatever the suffix."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

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

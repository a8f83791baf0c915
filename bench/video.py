"""Video benchmark: cross-validated clip recall at <= 10% non-violent clips flagged, model-path
frames/s on one core, and daemon CPU with a 640x480 `file:` camera analysed at 4 fps (the
issue's budget) and at the default rate (`video.fps`), side by side.

    .venv/bin/python -m bench.video [--data ../shared/data/video-dev] [--seconds 30]
"""

from __future__ import annotations

import argparse
import itertools
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.speed import WARM_UP_S, steady_share
from converter.train_video_head import (
    C_GRID,
    FLOW_WEIGHTS,
    Sampling,
    clip_features,
    cross_validate,
    load_clips,
    metrics,
)
from edge.videoconfig import VideoConfig
from edge.videopipe import build_analyzer, load_backbone

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "var" / "models"


def model_fps(frames: int = 200) -> float:
    analyzer = build_analyzer(VideoConfig(motion_threshold=0.0), load_backbone(MODELS))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (8, 240, 320, 3), dtype=np.uint8)
    began = time.perf_counter()
    for i in range(frames):
        analyzer.process(images[i % 8], i / 4)
    return frames / (time.perf_counter() - began)


def daemon_cpu(seconds: float, fps: float) -> float:
    """Share of one core the daemon (and the clip encoders it runs) uses after start-up, the
    camera analysed at `fps`."""
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "cam.mp4"
        length = seconds + WARM_UP_S + 10
        subprocess.run(
            ["ffmpeg", "-v", "error", "-f", "lavfi", "-i",
             f"testsrc2=size=640x480:rate=25:duration={length:g}", "-pix_fmt", "yuv420p",
             str(video)],
            check=True, timeout=120,
        )  # fmt: skip
        config = Path(tmp) / "config.yaml"
        config.write_text(
            f"models: {{dir: {MODELS}}}\nstorage: {{dir: {tmp}}}\naudio: {{source: none}}\n"
            f"video: {{source: 'file:{video}', fps: {fps:g}}}\nmqtt: {{host: 127.0.0.1, port: 9}}\n"
        )
        proc = subprocess.Popen(
            [str(ROOT / ".venv/bin/safeguard"), "run", "--config", str(config)],
            stderr=subprocess.DEVNULL,
        )
        try:
            share = steady_share(proc.pid, seconds)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    return share


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/video-dev")
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    clips = load_clips(args.data)
    backbone = load_backbone(MODELS)
    sampling = Sampling()
    feats = [clip_features(backbone, c.path, sampling) for c in clips]
    y = np.array([c.label for c in clips])
    grid = list(itertools.product(C_GRID, FLOW_WEIGHTS))
    cv = metrics(cross_validate(feats, clips, 5, grid, sampling), y, 0.10)
    print(f"clip-level, 5 grouped folds (nested), {len(clips)} clips: {cv}")
    print(
        f"model path (gate + flow + backbone on 1 in {sampling.stride} frames + head), "
        f"1 thread: {model_fps():.1f} frames/s"
    )
    for fps in sorted({4.0, VideoConfig().fps}):
        share = daemon_cpu(args.seconds, fps)
        print(f"daemon, 640x480 file camera analysed at {fps:g} fps: {share:.1%} of one core")
    return 0


if __name__ == "__main__":
    sys.exit(main())

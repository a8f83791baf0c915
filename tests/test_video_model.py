"""The violence model path on real dev clips and the motion gate on a generated video."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from converter import train_video_head
from edge.camera import file_frames
from edge.flow import (
    REGION,
    WINDOW_SIZE,
    dense_flow,
    flow_gray,
    flow_window_features,
    gray,
    motion_box,
    pair_stats,
    region_gray,
    speed_of,
)
from edge.smoothing import SmoothingConfig
from edge.video import EMBEDDING, FEATURES, Backbone, WindowFeatures, load_video_head
from edge.videoconfig import VideoConfig
from edge.videopipe import analyze_video, build_analyzer, load_backbone
from models_tflite import HEADS
from tests.helpers import ROOT, VIDEO_DEV, require_models, require_shared

FIELDS = {"file", "category", "start_s", "end_s", "peak_score", "alert_at_s"}


def moving_square(path: Path, seconds: float, still_until: float, fps: int = 20) -> None:
    """640x480: a static scene, then a square moving across it."""
    out = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (640, 480))
    assert out.isOpened()
    for i in range(int(seconds * fps)):
        frame = np.full((480, 640, 3), 90, np.uint8)
        t = i / fps
        if t >= still_until:
            x = int((t - still_until) * 400) % 560
            cv2.rectangle(frame, (x, 180), (x + 80, 300), (250, 250, 250), -1)
        out.write(frame)
    out.release()


def test_shipped_head_card_and_metadata() -> None:
    head = load_video_head(HEADS / "violence.npz")
    assert head.weights.shape == (FEATURES,)
    assert (head.window, head.stride) == (16, 2)
    assert head.metadata["params"]["fps"] == VideoConfig().fps
    assert 0 < head.threshold < 1
    # the default `on` is the head's cross-validated operating point (retrain -> update both)
    smoothing = VideoConfig().smoothing
    assert smoothing.on == pytest.approx(head.threshold, abs=0.01)
    assert smoothing.off < smoothing.on
    assert set(head.metadata["cv"]) >= {"roc_auc", "recall", "flagged_negatives"}
    assert "train-head --kind video" in head.metadata["command"]
    assert head.metadata["params"]["zoom"] == 1.3
    assert (HEADS / "violence.md").read_text().count(head.metadata["command"].split(" ", 1)[1])


def test_a_rate_the_head_was_not_trained_for_is_named(caplog: pytest.LogCaptureFixture) -> None:
    backbone = load_backbone(require_models())
    with caplog.at_level("WARNING", logger="edge.videopipe"):
        build_analyzer(VideoConfig(), backbone)
    assert not caplog.records
    with caplog.at_level("WARNING", logger="edge.videopipe"):
        build_analyzer(VideoConfig(fps=4.0, width=640), backbone)
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "video.fps is 4.0 but the violence head was trained at 8.0" in text
    assert "video.width is 640 but" in text
    assert "--fps 4.0" in text


def test_a_relative_video_head_is_found_beside_the_shipped_heads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`video.head: violence.npz` was read from the working directory (/ under systemd),
    while the audio heads are found in models_tflite/heads/."""
    monkeypatch.chdir(tmp_path)
    backbone = load_backbone(require_models())
    relative = build_analyzer(VideoConfig(head=Path("violence.npz")), backbone).head
    absolute = build_analyzer(VideoConfig(head=HEADS / "violence.npz"), backbone).head
    assert relative.bias == absolute.bias


def test_flow_of_a_shifted_scene_is_the_shift_in_one_direction() -> None:
    rng = np.random.default_rng(1)
    scene = cv2.GaussianBlur(rng.integers(0, 255, (120, 200), dtype=np.uint8), (7, 7), 2)
    before, after = scene[:, 20:180], scene[:, 17:177]  # the camera pans: content moves +3 px
    flow = dense_flow(np.ascontiguousarray(before), np.ascontiguousarray(after))
    stats = pair_stats(flow, None)
    inner = flow[20:-20, 20:-20]
    assert np.median(inner[..., 0]) == pytest.approx(3.0, abs=0.3)
    assert np.median(np.abs(inner[..., 1])) < 0.3
    assert stats[10] > 0.9  # coherent: everything moves the same way
    assert np.isnan(stats[-1])  # no previous flow, no change
    window = flow_window_features(np.stack([stats, pair_stats(flow, flow)]))
    assert window.shape == (WINDOW_SIZE,)
    assert np.isfinite(window).all()


def test_pair_stats_are_the_same_with_a_shared_speed_and_the_change_as_its_norm() -> None:
    """The speed handed in (computed once for the squares and the statistics) changes nothing,
    and the change between flows is exactly the mean of `np.linalg.norm` over the vector
    (the shipped head was trained on features computed that way)."""
    rng = np.random.default_rng(3)
    flow, before = (rng.standard_normal((2, 120, 160, 2)) * 3).astype(np.float32)
    shared = pair_stats(flow, before, speed_of(flow))
    np.testing.assert_array_equal(shared, pair_stats(flow, before))
    assert shared[-1] == np.float32(np.linalg.norm(flow - before, axis=2).mean())
    box = motion_box(flow, (240, 320, 3), fastest=True, speed=speed_of(flow))
    assert box == motion_box(flow, (240, 320, 3), fastest=True)


def test_the_backbone_looks_where_the_scene_moves() -> None:
    """`motion_box`: a square around the moving pixels (in frame pixels, from the 160x120 flow
    field), never smaller than half the short side; too little motion keeps the last box."""
    flow = np.zeros((120, 160, 2), np.float32)
    flow[60:90, 110:140, 0] = 4.0  # something moves in the lower right
    x0, y0, x1, y1 = motion_box(flow, (240, 320, 3))
    assert x1 - x0 == y1 - y0 == 120  # 30 flow px = 60 frame px, x1.4 = 84 -> at least 120
    assert x0 <= 220  # holds the moving region, 220..280 x 120..180
    assert y0 <= 120
    assert x1 >= 280
    assert y1 >= 180
    assert min(x0, y0) >= 0  # inside the frame
    assert x1 <= 320
    assert y1 <= 240
    big = np.zeros_like(flow)
    big[10:110, 10:150, 1] = 3.0  # most of the picture moves: most of the picture is seen
    assert motion_box(big, (240, 320, 3)) == (0, 0, 320, 240)
    still = np.zeros_like(flow)
    assert motion_box(still, (240, 320, 3), (1, 2, 3, 4)) == (1, 2, 3, 4)
    assert motion_box(still, (240, 320, 3)) == (0, 0, 320, 240)


def test_the_tighter_square_follows_the_fastest_movers() -> None:
    """`motion_box(..., fastest=True)`: around the quarter of the moving pixels that move
    fastest (a distant fight amid slower movement), at least a quarter of the short side."""
    flow = np.zeros((120, 160, 2), np.float32)
    flow[10:110, 10:150, 0] = 1.5  # most of the picture drifts slowly
    flow[20:30, 20:30, 0] = 8.0  # two fighters in the upper left, fast
    assert motion_box(flow, (240, 320, 3)) == (0, 0, 320, 240)
    x0, y0, x1, y1 = motion_box(flow, (240, 320, 3), fastest=True)
    assert x1 - x0 == y1 - y0 == 60  # 10 flow px = 20 frame px, x1.4 = 28 -> at least 60
    assert 18 <= x0 <= 20  # centred on the fast pixels, 40..60 x 40..60
    assert 18 <= y0 <= 20
    alone = np.zeros_like(flow)
    alone[20:30, 20:30, 0] = 8.0  # only 100 pixels move, 25 of them faster than the rest
    assert motion_box(alone, (240, 320, 3), (1, 2, 3, 4), fastest=True) == (1, 2, 3, 4)


def test_the_region_flow_sees_the_moving_region_at_its_own_scale() -> None:
    """A textured patch moves 6 px right in a 320x240 frame: the whole frame's 160x120 flow sees
    3 px, the flow of the moving region (a 120 px square seen at REGION px) 6 * REGION / 120."""
    rng = np.random.default_rng(5)
    texture = cv2.GaussianBlur(rng.integers(0, 255, (60, 60, 3), dtype=np.uint8), (5, 5), 1)
    frames = []
    for x in (200, 206):
        frame = np.full((240, 320, 3), 90, np.uint8)
        frame[90:150, x : x + 60] = texture
        frames.append(gray(frame))
    whole = dense_flow(flow_gray(frames[0]), flow_gray(frames[1]))
    box = motion_box(whole, (240, 320, 3))
    assert box[2] - box[0] == box[3] - box[1] == 120
    region = dense_flow(region_gray(frames[0], box), region_gray(frames[1], box))
    assert region.shape == (REGION, REGION, 2)

    def speed(flow: np.ndarray) -> float:
        u = flow[..., 0][np.hypot(flow[..., 0], flow[..., 1]) > 1.0]
        return float(np.median(u))

    assert speed(whole) == pytest.approx(3.0, rel=0.2)
    assert speed(region) == pytest.approx(6.0 * REGION / 120, rel=0.2)


def test_the_embeddings_ignore_what_happens_outside_the_moving_region() -> None:
    """Two scenes alike where something moves (right), one with extra static clutter far from
    it (left): the backbone sees only the moving region, so the embedding features are equal
    (with whole frames they differ); the flow features see the clutter as still."""
    rng = np.random.default_rng(3)
    texture = cv2.GaussianBlur(rng.integers(0, 255, (60, 60, 3), dtype=np.uint8), (5, 5), 1)
    clutter = rng.integers(0, 255, (200, 70, 3), dtype=np.uint8)
    backbone = load_backbone(require_models())
    features = []
    for cluttered in (False, True):
        window = WindowFeatures(backbone, 16, 2)
        for i in range(16):
            frame = np.full((240, 320, 3), 90, np.uint8)
            if cluttered:
                frame[20:220, 5:75] = clutter
            x = 230 + (i % 4) * 8  # back and forth on the right
            frame[100:160, x : x + 60] = texture
            out = window.push(frame)
        assert out is not None
        features.append(out)
    embeddings = slice(0, 3 * EMBEDDING)
    assert np.array_equal(features[0][embeddings], features[1][embeddings])
    assert np.allclose(features[0][3 * EMBEDDING :], features[1][3 * EMBEDDING :], atol=0.05)


Training = tuple[Path, Backbone, "train_video_head.Sampling", np.ndarray]


@pytest.fixture
def training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Training:
    """A dev clip, the backbone, the training's sampling and the clip's training rows (the
    feature cache in `tmp_path`)."""
    clip = require_shared(VIDEO_DEV) / "clips" / "fi001.mp4"
    backbone = load_backbone(require_models())
    monkeypatch.setattr(train_video_head, "CACHE", tmp_path)
    sampling = train_video_head.Sampling()
    return clip, backbone, sampling, train_video_head.clip_features(backbone, clip, sampling)


def test_daemon_scores_exactly_what_the_head_was_trained_on(training: Training) -> None:
    clip, backbone, sampling, rows = training
    assert rows.shape == (len(train_video_head.PHASES), FEATURES)
    config = VideoConfig(motion_threshold=0.0)
    analyzer = build_analyzer(config, backbone)
    scores = [analyzer.score_frame(f) for _, f in file_frames(clip, config.fps, config.width)]
    assert scores[sampling.window - 1] == pytest.approx(analyzer.head.score(rows[0]), abs=1e-6)


def test_mirrored_training_copies_are_cached_apart_and_mirror_the_scene(
    training: Training, tmp_path: Path
) -> None:
    clip, backbone, sampling, rows = training
    mirrored = train_video_head.clip_features(backbone, clip, sampling, mirror=True)
    assert len(list(tmp_path.glob("*.npy"))) == 2
    assert mirrored.shape == rows.shape
    assert not np.allclose(mirrored, rows)
    # mirroring keeps the amount of motion: the mean flow speed is (nearly) the same
    speed = FEATURES - 2 * WINDOW_SIZE  # the first flow feature: window mean of log mean speed
    assert mirrored[:, speed] == pytest.approx(rows[:, speed], abs=0.05)
    again = train_video_head.clip_features(backbone, clip, sampling, mirror=True)
    assert np.array_equal(again, mirrored)


def test_cross_validation_never_trains_on_the_test_folds_extra_copies() -> None:
    from sklearn.model_selection import GroupKFold

    rng = np.random.default_rng(3)
    y = np.array([0, 1] * 20)
    clips = [train_video_head.Clip(Path(f"c{i}.mp4"), int(y[i]), f"g{i // 4}") for i in range(40)]
    feats = [(rng.normal(size=(2, 6)) + y[i]).astype(np.float32) for i in range(40)]
    extra = [np.concatenate([f, f[:, ::-1]]) for f in feats]
    grid, sampling = [(1.0, 1.0)], train_video_head.Sampling()
    scores = train_video_head.cross_validate(feats, clips, 5, grid, sampling, extra)
    _, test = next(GroupKFold(n_splits=5).split(y, y, [c.group for c in clips]))
    spoiled = list(extra)
    for i in test:  # the held-out clips' training copies, mislabelled in effect
        spoiled[i] = np.concatenate([feats[i], feats[i] + 5 * (1 - 2 * y[i])])
    again = train_video_head.cross_validate(feats, clips, 5, grid, sampling, spoiled)
    assert np.array_equal(again[test], scores[test])  # the test fold is scored as before
    assert not np.array_equal(again, scores)  # the copies do train the other folds


def test_motion_gate_skips_still_frames_and_runs_on_movement(tmp_path: Path) -> None:
    video = tmp_path / "square.mp4"
    moving_square(video, seconds=4.0, still_until=2.0)
    analyzer = build_analyzer(VideoConfig(), load_backbone(require_models()))
    motions = []
    for t, frame in file_frames(video, 4.0, 320):
        analyzer.process(frame, t)
        motions.append((t, analyzer.last_motion))
    stats = analyzer.stats
    assert stats.offered == 16
    # the first frame opens the gate (nothing to compare), the still half closes it
    assert all(m == 0.0 for t, m in motions[1:8] if t < 2.0)
    assert all(m > 0.01 for t, m in motions if t >= 2.25)
    assert stats.still == 7
    assert stats.motion == 9


def test_analyze_reports_violence_on_fight_clips_in_the_jsonl_contract(tmp_path: Path) -> None:
    dev = require_shared(VIDEO_DEV)
    models = require_models()
    rows = [line.split(",") for line in (dev / "labels.csv").read_text().splitlines()[1:]]
    fights = [dev / f for f, c in rows if c == "violence"][:4]
    calm = [dev / f for f, c in rows if c == "none"][:4]
    config = tmp_path / "config.yaml"
    config.write_text(f"models: {{dir: {models}}}\nstorage: {{dir: {tmp_path}}}\n")
    files = [str(p) for p in fights + calm]
    run = subprocess.run(
        [str(ROOT / ".venv/bin/safeguard"), "analyze", "--config", str(config), "--json", *files],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert records, run.stderr
    for record in records:
        assert set(record) >= FIELDS
        assert record["start_s"] <= record["alert_at_s"]
    flagged = {r["file"] for r in records if r["category"] == "violence"}
    assert len(flagged & {str(p) for p in fights}) >= 3
    assert len(flagged & {str(p) for p in calm}) <= 1


def test_analyze_video_alert_time_follows_smoothing() -> None:
    dev = require_shared(VIDEO_DEV)
    clip = dev / "clips" / "fi001.mp4"
    backbone = load_backbone(require_models())
    eager = VideoConfig(smoothing=SmoothingConfig(on=0.5, off=0.3, k=1, n=1, fast=None))
    strict = VideoConfig(smoothing=SmoothingConfig(on=0.5, off=0.3, k=5, n=5, fast=None))
    early = analyze_video(clip, build_analyzer(eager, backbone), eager, "a")
    late = analyze_video(clip, build_analyzer(strict, backbone), strict, "a")
    assert early
    assert late
    assert early[0].alert_at_s + 0.49 <= late[0].alert_at_s


def test_missing_video_file_is_a_clear_error(tmp_path: Path) -> None:
    from edge.errors import CaptureError

    with pytest.raises(CaptureError, match="no such file"):
        list(file_frames(tmp_path / "nope.mp4", 4.0, 320))

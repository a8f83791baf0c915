"""`safeguard analyze` and `safeguard run` as a user runs them: subprocesses, real models,
real dev clips."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from edge import decode, schema
from tests.helpers import (
    AUDIO_DEV,
    ROOT,
    VIDEO_DEV,
    Mosquitto,
    free_port,
    require_models,
    require_shared,
    retained,
)

SAFEGUARD = [sys.executable, "-m", "edge.cli"]
GUNSHOT = "clips/gunshots__AK-12__3_14_.flac"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    models = require_models()
    path = tmp_path / "config.yaml"
    path.write_text(
        f"device: {{id: test-pi}}\nstorage: {{dir: {tmp_path / 'state'}}}\n"
        f"models: {{dir: {models}}}\n"
    )
    return path


def run_cli(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SAFEGUARD, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
        env=env,
    )


def with_source(config: Path, source: Path) -> Path:
    config.write_text(config.read_text() + f"audio: {{source: 'file:{source}'}}\n")
    return config


def scene(tmp_path: Path) -> Path:
    """Quiet room noise, a real gunshot clip at 3.0 s, then quiet again: a 9 s WAV."""
    shot = decode.read_all(require_shared(AUDIO_DEV) / GUNSHOT)
    noise = np.random.default_rng(1).normal(0, 0.002, 16000 * 9).astype(np.float32)
    noise[48000 : 48000 + len(shot)] += shot
    path = tmp_path / "scene.wav"
    soundfile.write(path, noise, 16000, subtype="PCM_16")
    return path


def test_analyze_json_contract(config: Path) -> None:
    clip = str(require_shared(AUDIO_DEV) / GUNSHOT)
    result = run_cli("analyze", "--config", str(config), "--json", clip)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines, "the gunshot clip produced no event"
    for event in lines:
        assert {"file", "category", "start_s", "end_s", "peak_score", "alert_at_s"} <= set(event)
        assert event["file"] == clip  # the path as given
        assert 0 <= event["start_s"] <= event["alert_at_s"]
        assert event["start_s"] <= event["end_s"] <= 2.0 + 1e-6
        assert 0 < event["peak_score"] <= 1
    assert "gunshot" in {e["category"] for e in lines}


def python(code: str) -> subprocess.CompletedProcess[str]:
    """`python -c CODE` in the project folder: what a fresh process loads."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
        check=False,
    )  # fmt: skip


def test_the_daemon_without_a_camera_does_not_load_opencv(config: Path) -> None:
    """OpenCV costs an audio-only daemon about 30 MB of RSS (its library, its own OpenBLAS)."""
    code = (
        "import sys; from edge.config import load_config; from edge.daemon import Daemon; "
        f"Daemon(load_config(__import__('pathlib').Path({str(config)!r}))).outbox.close(); "
        "sys.exit(1 if 'cv2' in sys.modules else 0)"
    )
    result = python(code)
    assert result.returncode == 0, result.stderr[-2000:]


def test_analyze_of_audio_loads_no_video_or_delivery_libraries(config: Path) -> None:
    """Start-up counts in `analyze` (bench.speed): audio files need neither OpenCV nor the
    delivery path's twilio and reference JSON Schema validator."""
    clip = str(require_shared(AUDIO_DEV) / GUNSHOT)
    code = (
        "import sys; from edge import cli; "
        f"code = cli.main(['analyze', '--config', {str(config)!r}, '--json', {clip!r}]); "
        "heavy = sorted(m for m in ('cv2', 'twilio', 'jsonschema') if m in sys.modules); "
        "print('loaded:', heavy, file=sys.stderr); sys.exit(code or (1 if heavy else 0))"
    )
    result = python(code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "loaded: []" in result.stderr
    assert '"category": "gunshot"' in result.stdout


def test_the_cli_runs_numpy_on_one_blas_thread() -> None:
    """OpenBLAS's worker threads spin between the daemon's tiny matrix products (the live
    daemon took 43% of a core instead of 1.7%, bench.speed): the CLI pins BLAS to one thread
    before numpy loads, unless the user set it."""
    code = (
        "import edge.cli, numpy, threadpoolctl; "
        "print(max(p['num_threads'] for p in threadpoolctl.threadpool_info()))"
    )
    blas = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    env = {k: v for k, v in os.environ.items() if k not in blas}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT,
        env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "1"


def test_analyze_mp4_and_mp3_match_the_original(config: Path, tmp_path: Path) -> None:
    wav = scene(tmp_path)
    mp4 = tmp_path / "scene.mp4"
    mp3 = tmp_path / "scene.mp3"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "color=c=black:s=64x64:r=5",
            "-i",
            str(wav),
            "-shortest",
            "-c:v",
            "libx264",
            "-c:a",
            "aac",
            "-b:a",
            "192k",
            str(mp4),
        ],
        check=True,
        timeout=60,
    )
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(wav), "-b:a", "192k", str(mp3)], check=True, timeout=60
    )
    result = run_cli("analyze", "--config", str(config), "--json", str(wav), str(mp4), str(mp3))
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    by_file = {name: [e for e in events if e["file"] == name] for name in map(str, (wav, mp4, mp3))}
    reference = [e for e in by_file[str(wav)] if e["category"] == "gunshot"]
    assert len(reference) == 1
    assert 2.9 <= reference[0]["alert_at_s"] <= 4.5
    for name in (str(mp4), str(mp3)):
        shots = [e for e in by_file[name] if e["category"] == "gunshot"]
        assert len(shots) == 1, f"{name}: {by_file[name]}"
        # codecs shift and pad audio slightly; the alert lands in the same place
        assert abs(shots[0]["alert_at_s"] - reference[0]["alert_at_s"]) <= 0.3


def test_analyze_reports_bad_files_and_goes_on(config: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all")
    good = str(require_shared(AUDIO_DEV) / GUNSHOT)
    result = run_cli(
        "analyze", "--config", str(config), "--json", str(tmp_path / "none.wav"), str(junk), good
    )
    assert result.returncode == 1
    assert "none.wav: no such file" in result.stderr
    assert "junk.wav: cannot read it: damaged or not a media file" in result.stderr
    assert any(json.loads(line)["file"] == good for line in result.stdout.splitlines())


def test_a_damaged_video_is_reported_as_damaged_not_as_an_audio_problem(
    config: Path, tmp_path: Path
) -> None:
    clip = (require_shared(VIDEO_DEV) / "clips" / "fi001.mp4").read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(clip[:30000])  # the index (moov) is at the end: nothing is readable
    result = run_cli("analyze", "--config", str(config), str(cut))
    assert result.returncode == 1
    assert f"{cut}: cannot read it: damaged or not a media file (" in result.stderr
    assert "audio" not in result.stderr
    assert "Traceback" not in result.stderr


def test_analyze_without_ffmpeg_still_reads_the_picture(config: Path, tmp_path: Path) -> None:
    clip = require_shared(VIDEO_DEV) / "clips" / "fi001.mp4"
    bare = tmp_path / "bin"  # a PATH with neither ffmpeg nor ffprobe on it
    bare.mkdir()
    env = {**os.environ, "PATH": str(bare)}
    result = run_cli("analyze", "--config", str(config), "--json", str(clip), env=env)
    assert result.returncode == 1  # the sound could not be analysed: said, and the exit says so
    assert f"{clip}: decoding this format needs ffmpeg, which is not installed" in result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["category"] for e in events] == ["violence"]  # OpenCV read the fight


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"models: {{dir: {tmp_path}}}\nstorage: {{dir: {tmp_path}}}\n")
    result = run_cli("analyze", "--config", str(config), str(tmp_path / "x.wav"))
    assert result.returncode == 1
    assert "model yamnet_spectra_in is missing" in result.stderr
    assert "safeguard models fetch" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_error_exit_code(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("audio:\n  hop: 0.5\n")
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 1  # check's contract: 0 or 1
    assert "audio.hop: unknown key; did you mean 'hop_s'? (line 2)" in result.stderr


def test_check_loads_what_run_loads_the_heads_and_the_video_model(
    config: Path, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    calm = require_shared(VIDEO_DEV / "clips" / "nofi002.mp4")
    base = config.read_text() + f"mqtt: {{host: 127.0.0.1, port: {mosquitto.port}}}\n"
    config.write_text(base + f"video: {{source: 'file:{calm}'}}\n")
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "categories: ok (scream, gunshot, glass_break)" in result.stdout
    assert "video: ok (backbone sha256 verified, violence head over 16 frames)" in result.stdout
    assert "broker: ok" in result.stdout

    (tmp_path / "broken.npz").write_text("not a head\n")
    config.write_text(base + f"video: {{source: 'file:{calm}', head: {tmp_path / 'broken.npz'}}}\n")
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 1
    assert f"video.head: {tmp_path / 'broken.npz'} is not a video head" in result.stderr
    assert "broker: ok" not in result.stdout  # `run` would fail at start: so does check

    config.write_text(
        base + f"detection: {{categories: {{scream: {{head: {tmp_path / 'broken.npz'}}}}}}}\n"
    )
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 1
    assert "detection.categories.scream.head" in result.stderr


def test_run_alerts_into_the_outbox_and_ends_with_the_file(config: Path, tmp_path: Path) -> None:
    with_source(config, scene(tmp_path))
    began = time.monotonic()
    result = run_cli("run", "--config", str(config), timeout=60)
    elapsed = time.monotonic() - began
    assert result.returncode == 0, result.stderr
    assert elapsed >= 8.5, "a file source must replay at real-time speed"
    db = sqlite3.connect(tmp_path / "state" / "outbox.db")
    rows = [json.loads(r[0]) for r in db.execute("SELECT payload FROM outbox ORDER BY id")]
    shots = [r for r in rows if r["category"] == "gunshot" and "clip" not in r]
    assert [r["event"] for r in shots] == ["start", "end"]  # then the clip's own update
    for alert in shots:
        schema.validate(alert)
        assert alert["device_id"] == "test-pi"
    assert shots[1]["event_id"] == shots[0]["id"]
    assert 2.9 <= shots[0]["stream_at_s"] <= 4.5


def sigterm_when(
    config: Path,
    line_has: str,
    after_s: float = 0.0,
    signals: tuple[signal.Signals, ...] = (signal.SIGTERM,),
) -> str:
    """Run the daemon until its log has `line_has` (then `after_s` more), send SIGTERM (or
    `signals`, one after the other), assert a clean exit within 2 s; the rest of its log."""
    proc = subprocess.Popen(
        [*SAFEGUARD, "run", "--config", str(config)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    for line in proc.stderr:
        if line_has in line:
            break
        assert time.monotonic() < deadline, f"the daemon never logged {line_has!r}"
    time.sleep(after_s)
    began = time.monotonic()
    for signum in signals:
        proc.send_signal(signum)
    code = proc.wait(timeout=15)
    assert time.monotonic() - began <= 2.0
    assert code == 0
    rest = proc.stderr.read()
    proc.stderr.close()
    assert "stopped in" in rest, rest[-2000:]
    return rest


def test_run_stops_cleanly_on_sigterm_within_2_s(config: Path) -> None:
    with_source(config, require_shared(AUDIO_DEV / "streams" / "stream_00.flac"))
    sigterm_when(config, "safeguard running", after_s=2.0)


def test_a_second_signal_while_stopping_changes_nothing(config: Path) -> None:
    """Ctrl-C, then systemd's SIGTERM: one clean stop within 2 s, the second signal noted."""
    with_source(config, require_shared(AUDIO_DEV / "streams" / "stream_00.flac"))
    rest = sigterm_when(config, "safeguard running", 1.0, (signal.SIGINT, signal.SIGTERM))
    assert "received SIGINT: stopping" in rest
    assert "received SIGTERM again: already stopping" in rest
    assert rest.count("stopped in") == 1


def test_the_retained_health_says_the_daemon_stopped(config: Path, mosquitto: Mosquitto) -> None:
    with_source(config, require_shared(AUDIO_DEV / "streams" / "stream_00.flac"))
    config.write_text(config.read_text() + f"mqtt: {{host: 127.0.0.1, port: {mosquitto.port}}}\n")
    sigterm_when(config, "safeguard running", after_s=2.0)
    assert retained(mosquitto.port, "safeguard/test-pi/status") == "stopped"
    health = json.loads(retained(mosquitto.port, "safeguard/test-pi/health"))
    assert health["capture"] == "stopped"
    assert health["samples"] > 0


def test_sigterm_cuts_short_the_wait_for_acks_after_a_file_source_ends(
    config: Path, tmp_path: Path
) -> None:
    """A `file:` source that has ended waits up to 10 s for its alerts' acks; with the broker
    unreachable, SIGTERM still stops it within 2 s, and the alerts stay in the outbox."""
    with_source(config, scene(tmp_path))
    config.write_text(config.read_text() + f"mqtt: {{host: 127.0.0.1, port: {free_port()}}}\n")
    rest = sigterm_when(config, "file source ended")
    assert "not acked yet" in rest, rest[-2000:]
    with sqlite3.connect(tmp_path / "state" / "outbox.db") as db:
        (pending,) = db.execute("SELECT count(*) FROM outbox WHERE acked IS NULL").fetchone()
    assert pending >= 2  # the gunshot's start and end, kept for the next start


def test_listen_prints_what_it_hears(config: Path, tmp_path: Path) -> None:
    with_source(config, scene(tmp_path))
    result = run_cli("listen", "--config", str(config), "--seconds", "5", "--top", "3")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) >= 8  # a line per 0.25 s hop once the first window is in
    assert all("dBFS" in line and "gunshot=" in line and "scream=" in line for line in lines)
    shot = [line for line in lines if "Gunshot, gunfire" in line]
    assert shot, "the gunshot at 3 s was not among the top classes"


def test_analyze_an_mp4_without_a_picture_reports_its_sound(config: Path, tmp_path: Path) -> None:
    """An MP4 holding only audio (a phone's voice memo) is analysed as audio."""
    clip = tmp_path / "memo.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(require_shared(AUDIO_DEV) / GUNSHOT), "-c:a", "aac",
         str(clip)],
        check=True, timeout=60,
    )  # fmt: skip
    result = run_cli("analyze", "--config", str(config), "--json", str(clip))
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["category"] for line in result.stdout.splitlines()] == ["gunshot"]


def test_analyze_says_what_is_wrong_with_odd_inputs(config: Path, tmp_path: Path) -> None:
    folder = tmp_path / "folder.wav"
    folder.mkdir()
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros(0, np.float32), 16000)  # a valid header, no samples
    audio, rate = soundfile.read(require_shared(AUDIO_DEV) / GUNSHOT, dtype="float32")
    whole = tmp_path / "whole.wav"
    soundfile.write(whole, audio, rate, subtype="PCM_16")
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    result = run_cli("analyze", "--config", str(config), str(folder), str(empty), str(cut))
    assert result.returncode == 1
    assert "folder.wav: is a folder, not an audio file" in result.stderr
    assert "empty.wav: holds no audio samples" in result.stderr
    assert "cut.wav: the file is shorter than its header says" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_file_shorter_than_a_window_ends_no_earlier_than_its_alert(
    config: Path, tmp_path: Path
) -> None:
    audio, rate = soundfile.read(require_shared(AUDIO_DEV) / GUNSHOT, dtype="float32")
    short = tmp_path / "short.wav"
    soundfile.write(short, audio[: int(rate * 0.7)], rate)
    result = run_cli("analyze", "--config", str(config), "--json", str(short))
    assert result.returncode == 0, result.stderr
    (event,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert event["alert_at_s"] == 0.975  # the first window ends at 0.975 s
    assert event["end_s"] >= event["alert_at_s"]


def test_the_daemon_analyses_a_file_source_to_its_last_sample(config: Path, tmp_path: Path) -> None:
    """A 0.7 s gunshot is shorter than one window: `run` pads its end with silence as
    `analyze` does, so the daemon alerts at the same stream time."""
    audio, rate = soundfile.read(require_shared(AUDIO_DEV) / GUNSHOT, dtype="float32")
    short = tmp_path / "short.wav"
    soundfile.write(short, audio[: int(rate * 0.7)], rate)
    result = run_cli("run", "--config", str(with_source(config, short)), timeout=60)
    assert result.returncode == 0, result.stderr
    db = sqlite3.connect(tmp_path / "state" / "outbox.db")
    rows = [json.loads(r[0]) for r in db.execute("SELECT payload FROM outbox ORDER BY id")]
    starts = [r for r in rows if r["category"] == "gunshot" and r["event"] == "start"]
    assert [r["stream_at_s"] for r in starts] == [0.975]


def test_analyze_into_a_closed_pipe_is_quiet(config: Path) -> None:
    stream = str(require_shared(AUDIO_DEV) / "streams" / "stream_00.flac")
    command = " ".join([*SAFEGUARD, "analyze", "--config", str(config), "--json", stream])
    result = subprocess.run(
        f"{command} | true; exit ${{PIPESTATUS[0]}}",  # the reader is gone before a line
        shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=120,
        cwd=ROOT, check=False,
    )  # fmt: skip
    assert "Traceback" not in result.stderr
    assert "BrokenPipeError" not in result.stderr
    assert result.returncode == 1


def test_a_file_source_that_cannot_be_read_fails_check_run_and_listen(
    config: Path, tmp_path: Path, mosquitto: Mosquitto
) -> None:
    with_source(config, tmp_path / "gone.wav")
    config.write_text(config.read_text() + f"mqtt: {{host: 127.0.0.1, port: {mosquitto.port}}}\n")
    check = run_cli("check", "--config", str(config))
    assert check.returncode == 1
    assert "gone.wav: no such file" in check.stderr
    run = run_cli("run", "--config", str(config), timeout=30)
    assert run.returncode == 1
    assert "audio file source failed" in run.stderr
    listen = run_cli("listen", "--config", str(config), timeout=30)  # no --seconds: ends itself
    assert listen.returncode == 1
    assert "gone.wav: no such file" in listen.stderr


def test_listen_ends_when_its_file_source_ends(config: Path, tmp_path: Path) -> None:
    audio, rate = soundfile.read(require_shared(AUDIO_DEV) / GUNSHOT, dtype="float32")
    clip = tmp_path / "clip.wav"
    soundfile.write(clip, audio, rate)
    with_source(config, clip)
    result = run_cli("listen", "--config", str(config), "--top", "1", timeout=30)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) >= 2  # windows ending at 0.975 s, 1.225 s, ...


def test_check_names_the_config_it_read_and_a_missing_fallback_secret(
    config: Path,
    mosquitto: Mosquitto,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Without --config, check reads /etc/safeguard/config.yaml and must say so (it said
    "embedded defaults"); an enabled SMS channel without its token fails check, since run would
    go on without it."""
    from edge import cli

    config.write_text(
        config.read_text() + f"mqtt: {{port: {mosquitto.port}}}\n"
        "alerts:\n  sms: {enabled: true, account_sid: AC0, from: '+15550000000', "
        "to: ['+15550000001']}\n"
    )
    monkeypatch.setattr(cli, "DEFAULT_CONFIG", config)
    monkeypatch.delenv("SAFEGUARD_TWILIO_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert cli.main(["check"]) == 1
    out, err = capsys.readouterr()
    assert f"config: ok ({config})" in out
    assert "broker: ok" in out
    assert "secret 'twilio_auth_token' is missing" in err


def test_check_says_the_broker_refused_the_user(config: Path, tmp_path: Path) -> None:
    """A broker that refuses the log-in was reported as "cannot reach"."""
    passwords = tmp_path / "passwords"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "alice", "s3cret"], check=True)
    broker = Mosquitto(tmp_path / "broker", extra_config=f"password_file {passwords}\n")
    broker.workdir.mkdir()
    broker.start()
    try:
        config.write_text(config.read_text() + f"mqtt: {{port: {broker.port}, username: bob}}\n")
        result = run_cli("check", "--config", str(config))
    finally:
        broker.stop()
    assert result.returncode == 1
    assert f"the MQTT broker at 127.0.0.1:{broker.port} refused the connection" in result.stderr
    assert "user 'bob'" in result.stderr


def test_a_storage_dir_that_cannot_be_written_is_one_line(config: Path, tmp_path: Path) -> None:
    """`run` died with an OSError traceback (and `check` said ok) when storage.dir could not
    be written, e.g. a folder outside the unit's ReadWritePaths."""
    (tmp_path / "a-file").write_text("")
    text = config.read_text().replace(str(tmp_path / "state"), str(tmp_path / "a-file" / "state"))
    config.write_text(text)
    for command in ("check", "run"):
        result = run_cli(command, "--config", str(config))
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        assert f"storage.dir {tmp_path / 'a-file' / 'state'}: cannot write there" in result.stderr


def test_a_preview_without_a_camera_is_said(config: Path, tmp_path: Path) -> None:
    """video.preview on with no camera was ignored without a word."""
    quiet = tmp_path / "quiet.wav"
    soundfile.write(quiet, np.zeros(16000, np.float32), 16000)
    with_source(config, quiet)
    config.write_text(config.read_text() + "video: {preview: {enabled: true}}\n")
    result = run_cli("run", "--config", str(config), timeout=60)
    assert result.returncode == 0, result.stderr
    assert "video.preview is on but video.source is none: there is no preview" in result.stderr


def test_run_with_only_a_file_camera_that_cannot_open_exits_1(config: Path, tmp_path: Path) -> None:
    config.write_text(
        config.read_text()
        + f"audio: {{source: none}}\nvideo: {{source: 'file:{tmp_path / 'missing.mp4'}'}}\n"
    )
    began = time.monotonic()
    result = run_cli("run", "--config", str(config), timeout=90)
    assert result.returncode == 1, result.stderr
    assert time.monotonic() - began < 60

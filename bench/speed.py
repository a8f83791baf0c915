"""Speed, side by side in one run on one 8-minute development stream:

1. the floor: bare YAMNet invokes at a 0.48 s hop, in process, nothing else;
2. `safeguard analyze` as a whole process (start-up, decoding, detection), per model variant;
3. the live daemon's work per window: `Detector.process` on the stream's windows in order, one
   at a time as the daemon's inference thread reads them from the ring (default config);
4. the live daemon on a `file:` source (real-time replay): CPU share of one core and RSS;
5. the same on the microphone path: PortAudio recording a PulseAudio null sink's monitor at
   48 kHz stereo (`bench.pulse`) while `paplay` plays the stream into the sink.

The project's modules are byte-compiled first, as `pip install` (install.sh) leaves them on a
device: a checkout installed in editable mode under PYTHONDONTWRITEBYTECODE would otherwise
compile ~20 modules from source in every process (~50 ms of start-up).

    python -m bench.speed [--stream PATH] [--daemon-seconds 60] [--repeat 3]
"""

from __future__ import annotations

import argparse
import compileall
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from bench.pulse import PulseServer
from edge import decode

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "var" / "models"
STREAM = ROOT.parent / "shared" / "data" / "audio-dev" / "streams" / "stream_00.flac"
TICK = os.sysconf("SC_CLK_TCK")
WARM_UP_S = 6.0
BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")  # as `safeguard`


def bare_invokes(audio: np.ndarray, hop_s: float = 0.48) -> float:
    """Seconds for bare YAMNet invokes over `audio` at `hop_s`, one thread."""
    from ai_edge_litert.interpreter import Interpreter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = Interpreter(model_path=str(MODELS / "yamnet.tflite"), num_threads=1)
    interpreter.allocate_tensors()
    index = interpreter.get_input_details()[0]["index"]
    hop = int(hop_s * 16000)
    starts = range(0, len(audio) - 15600 + 1, hop)
    began = time.perf_counter()
    for start in starts:
        interpreter.set_tensor(index, audio[start : start + 15600])
        interpreter.invoke()
    return time.perf_counter() - began


def write_config(folder: Path, extra: str = "") -> Path:
    path = folder / "config.yaml"
    path.write_text(f"storage: {{dir: {folder}}}\nmodels: {{dir: {MODELS}}}\n{extra}")
    return path


def analyze_process(stream: Path, config: Path) -> float:
    """Wall seconds of a whole `safeguard analyze` process, pinned to one core."""
    command = [
        "taskset",
        "-c",
        "0",
        sys.executable,
        "-m",
        "edge.cli",
        "analyze",
        "--json",
        "--config",
        str(config),
        str(stream),
    ]
    began = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
    return time.perf_counter() - began


def live_windows(stream: Path, config: Path) -> float:
    """Seconds of the daemon's per-window work over `stream`, in its own process pinned to one
    core with the daemon's environment (one BLAS thread); start-up and decoding not counted."""
    command = ["taskset", "-c", "0", sys.executable, "-m", "bench.speed", "--live-windows"]
    command += [str(config), str(stream)]
    env = {**os.environ, **dict.fromkeys(BLAS_THREADS, "1")}
    done = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT, env=env)
    return float(done.stdout.split()[-1])


def _time_live_windows(config_path: Path, stream: Path) -> None:
    from edge.config import load_config
    from edge.pipeline import build_detector, hop_samples

    config = load_config(config_path)
    detector = build_detector(config)
    audio = decode.read_all(stream)
    ends = range(15600, len(audio) + 1, hop_samples(config))
    began = time.perf_counter()
    for end in ends:
        detector.process(audio[end - 15600 : end], end)
    print(time.perf_counter() - began)


def cpu_seconds(pid: int) -> float:
    """CPU time of `pid` and of the children it has waited for (e.g. clip encoders)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / TICK


def steady_share(pid: int, seconds: float, warm_up_s: float = WARM_UP_S) -> float:
    """Share of one core `pid` uses over `seconds`, after `warm_up_s` of start-up (imports,
    model loading), which is not the steady state."""
    time.sleep(warm_up_s)
    cpu0, wall0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - cpu0) / (time.monotonic() - wall0)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def daemon_load(
    folder: Path, seconds: float, audio: str, env: dict[str, str] | None = None
) -> tuple[float, float]:
    """CPU share of one core (after start-up) and peak RSS of the live daemon, its `audio:`
    config section given as YAML flow mapping `audio`."""
    config = write_config(folder, f"audio: {audio}\n")
    log = (folder / "daemon.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "run", "--config", str(config)],
        cwd=ROOT,
        stderr=log,
        env={**os.environ, **(env or {})},
    )
    try:
        share = steady_share(proc.pid, seconds)
        peak = rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
    return share, peak


def microphone_load(stream: Path, folder: Path, seconds: float) -> tuple[float, float]:
    """The live daemon on its microphone path: a private PulseAudio server's null sink at
    48 kHz stands in for the room, `paplay` plays the stream into it, and the daemon records
    its monitor as a 48 kHz stereo microphone (PortAudio, downmix, resampling to 16 kHz)."""
    pulse = PulseServer(folder / "pulse")
    pulse.start()
    player = pulse.play(stream)
    try:
        audio = "{source: 'pulse:virtmic', sample_rate: 48000, channels: 2}"
        load = daemon_load(folder, seconds, audio, {"PULSE_SERVER": pulse.server})
        said = (folder / "daemon.log").read_text()
        if "capturing from pulse:virtmic" not in said or player.poll() is not None:
            raise RuntimeError(f"the daemon did not record the played stream:\n{said[-2000:]}")
        return load
    finally:
        player.kill()
        player.wait(timeout=10)
        pulse.stop()


def main() -> None:
    if sys.argv[1:2] == ["--live-windows"]:  # the child process of `live_windows`
        _time_live_windows(Path(sys.argv[2]), Path(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stream", type=Path, default=STREAM)
    parser.add_argument("--daemon-seconds", type=float, default=60.0)
    parser.add_argument("--repeat", type=int, default=3, help="best of N for the timings")
    args = parser.parse_args()
    compileall.compile_dir(ROOT / "edge", quiet=1)
    compileall.compile_dir(ROOT / "models_tflite", quiet=1)
    audio = decode.read_all(args.stream)
    duration = len(audio) / 16000
    floor = min(bare_invokes(audio) for _ in range(args.repeat))
    rows = [("bare YAMNet invokes, 0.48 s hop (floor)", floor)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for variant in ("yamnet", "yamnet_spectra_in"):
            (folder / variant).mkdir()
            config = write_config(folder / variant, f"audio: {{model: {variant}}}\n")
            seconds = min(analyze_process(args.stream, config) for _ in range(args.repeat))
            rows.append((f"`safeguard analyze`, {variant}, 0.25 s hop, whole process", seconds))
        default = folder / "yamnet_spectra_in" / "config.yaml"
        seconds = min(live_windows(args.stream, default) for _ in range(args.repeat))
        rows.append(("the daemon's work per window (default config), in process", seconds))
        (folder / "daemon").mkdir()
        audio_file = f"{{source: 'file:{args.stream}'}}"
        share, peak = daemon_load(folder / "daemon", args.daemon_seconds, audio_file)
        (folder / "mic").mkdir()
        mic_share, mic_peak = microphone_load(args.stream, folder / "mic", args.daemon_seconds)
    print(
        f"stream: {args.stream.name}, {duration:.0f} s; one core (taskset -c 0); best of "
        f"{args.repeat}\n"
    )
    print("| what | seconds | x real time | vs floor |")
    print("|---|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} | {duration / seconds:.0f}x | {floor / seconds:.2f} |")
    print(
        f"\nlive daemon (`safeguard run`, file source at real-time speed, default config): "
        f"{share * 100:.1f}% of one core over {args.daemon_seconds:.0f} s, peak RSS "
        f"{peak:.0f} MB"
    )
    print(
        f"live daemon on the microphone path (PulseAudio null sink at 48 kHz stereo as the "
        f"microphone, paplay feeding the stream): {mic_share * 100:.1f}% of one core over "
        f"{args.daemon_seconds:.0f} s, peak RSS {mic_peak:.0f} MB"
    )


if __name__ == "__main__":
    main()

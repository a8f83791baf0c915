"""Soak: the live daemon on its microphone path for a long run, to show that a device left on
24/7 keeps a flat memory footprint and a steady CPU share, and never falls behind.

A private PulseAudio null sink at 48 kHz stands in for the room (`bench.pulse`), `paplay`
plays a development stream into it over and over, and `safeguard run` (default config, its
own Mosquitto on an ephemeral port) records the sink's monitor as a 48 kHz stereo microphone.
Every `--sample-s` the bench reads the daemon's resident memory and CPU time from /proc; at the
end, the daemon's own health message (windows, skipped windows, overflows, inference times).

    python -m bench.soak [--minutes 30] [--sample-s 60]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.pulse import PulseServer
from bench.speed import MODELS, ROOT, STREAM, cpu_seconds
from tests.helpers import Mosquitto

DEVICE = "soak"


def rss_now_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def keep_playing(pulse: PulseServer, stream: Path, stop: threading.Event) -> None:
    """Plays `stream` into the sink again each time it ends, until `stop`."""
    while not stop.is_set():
        player = pulse.play(stream)
        while player.poll() is None:
            if stop.wait(0.5):
                player.kill()
                break
        player.wait(timeout=10)


def last_health(port: int, timeout: float = 30.0) -> dict[str, object]:
    """The daemon's latest health message (retained, and published again periodically)."""
    got: list[dict[str, object]] = []
    done = threading.Event()

    def on_message(_c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        got.append(json.loads(message.payload))
        done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="soak-bench")
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.subscribe(f"safeguard/{DEVICE}/health", qos=0)
    client.loop_start()
    try:
        if not done.wait(timeout):
            raise RuntimeError("no health message from the daemon")
        return got[-1]
    finally:
        client.loop_stop()
        client.disconnect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--sample-s", type=float, default=60.0)
    parser.add_argument("--stream", type=Path, default=STREAM)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        broker = Mosquitto(folder / "broker")
        broker.workdir.mkdir()
        broker.start()
        pulse = PulseServer(folder / "pulse")
        pulse.start()
        stop = threading.Event()
        player = threading.Thread(target=keep_playing, args=(pulse, args.stream, stop))
        player.start()
        config = folder / "config.yaml"
        config.write_text(
            f"device: {{id: {DEVICE}}}\nstorage: {{dir: {folder}}}\nmodels: {{dir: {MODELS}}}\n"
            f"mqtt: {{port: {broker.port}}}\n"
            "audio: {source: 'pulse:virtmic', sample_rate: 48000, channels: 2}\n"
        )
        log_path = folder / "daemon.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "edge.cli", "run", "--config", str(config)],
                cwd=ROOT,
                stderr=log,
                env={**os.environ, "PULSE_SERVER": pulse.server},
            )
            try:
                samples = soak(proc.pid, args.minutes * 60, args.sample_s)
                health = last_health(broker.port)
            finally:
                proc.terminate()
                proc.wait(timeout=10)
                stop.set()
                player.join(timeout=15)
                pulse.stop()
                broker.stop()
        said = log_path.read_text()
    report(samples, health, said, args)


def soak(pid: int, seconds: float, every: float) -> list[tuple[float, float, float]]:
    """(minutes since start, RSS MB, CPU seconds) every `every` s for `seconds`."""
    began = time.monotonic()
    samples = []
    while True:
        elapsed = time.monotonic() - began
        samples.append((elapsed / 60, rss_now_mb(pid), cpu_seconds(pid)))
        if elapsed >= seconds:
            return samples
        time.sleep(min(every, seconds - elapsed) or every)


def report(
    samples: list[tuple[float, float, float]],
    health: dict[str, object],
    said: str,
    args: argparse.Namespace,
) -> None:
    minutes = np.array([s[0] for s in samples])
    rss = np.array([s[1] for s in samples])
    cpu = np.array([s[2] for s in samples])
    print(f"soak: {args.minutes:g} min on the microphone path, {args.stream.name} looped\n")
    print("| minute | RSS (MB) | CPU since the last row (% of one core) |")
    print("|---|---|---|")
    step = max(1, len(samples) // 12)
    for i in range(0, len(samples), step):
        share = ""
        if i:
            seconds = (minutes[i] - minutes[i - step]) * 60
            share = f"{(cpu[i] - cpu[i - step]) / seconds * 100:.1f}"
        print(f"| {minutes[i]:.1f} | {rss[i]:.1f} | {share} |")
    half = minutes >= minutes[-1] / 2
    slope = float(np.polyfit(minutes[half], rss[half], 1)[0]) * 60 if half.sum() >= 2 else 0.0
    after = minutes >= 1.0
    whole = (cpu[-1] - cpu[after][0]) / ((minutes[-1] - minutes[after][0]) * 60) * 100
    print(
        f"\nRSS {rss[after].min():.1f}-{rss.max():.1f} MB after the first minute; trend over the "
        f"second half {slope:+.2f} MB per hour; CPU {whole:.2f}% of one core after the first "
        f"minute"
    )
    keys = ["windows", "silent_windows", "skipped_windows", "overflows"]
    keys += ["infer_p50_ms", "infer_p95_ms"]
    print("health at the end: " + ", ".join(f"{k} {health.get(k)}" for k in keys))
    warnings = [line for line in said.splitlines() if " WARNING " in line or " ERROR " in line]
    print(f"warnings and errors in the daemon's log: {len(warnings)}")
    for line in warnings[:10]:
        print("  " + line)


if __name__ == "__main__":
    main()

"""From a threat's onset in a replayed recording to the alert stored by the listener.

Real components on loopback: Mosquitto on an ephemeral port, `safeguard-listener` on SQLite,
`safeguard run` on a `file:` source replayed at real-time speed. The recording is made of
the development streams' labelled events, each with 5 s before and 8 s after it, so the
onset of each is known. Latency = listener `received_at` - wall time of the onset, where
the onset's wall time comes from the alert itself (`started_at` - `stream_start_s` is the
wall time of stream second 0).

    python -m bench.e2e_latency [--category scream]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from datetime import datetime
from pathlib import Path

import numpy as np
import soundfile

from edge import decode
from tests.helpers import AUDIO_DEV, MODELS_DIR, ROOT, Mosquitto, free_port, wait_port

BEFORE, AFTER = 5.0, 8.0
TOKEN = "bench-token"


def compose(folder: Path, category: str | None) -> tuple[Path, list[tuple[str, float]]]:
    rows = list(csv.DictReader((AUDIO_DEV / "streams" / "events.csv").open()))
    streams: dict[str, np.ndarray] = {}
    parts, onsets, at = [], [], 0.0
    for row in rows:
        if category and row["category"] != category:
            continue
        audio = streams.setdefault(
            row["stream"], decode.read_all(AUDIO_DEV / "streams" / row["stream"])
        )
        start = float(row["start_s"])
        lo = max(0, int((start - BEFORE) * 16000))
        piece = audio[lo : int((start + AFTER) * 16000)]
        onsets.append((row["category"], at + start - lo / 16000))
        parts.append(piece)
        at += len(piece) / 16000
    path = folder / "onsets.wav"
    soundfile.write(path, np.concatenate(parts), 16000, subtype="PCM_16")
    return path, onsets


def parse(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--category", default=None, help="only events of this category")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        recording, onsets = compose(folder, args.category)
        broker = Mosquitto(folder / "broker")
        broker.workdir.mkdir()
        broker.start()
        port = free_port()
        (folder / "listener.yaml").write_text(
            f"mqtt: {{host: 127.0.0.1, port: {broker.port}}}\n"
            f"database: {{url: 'sqlite:///{folder}/alerts.db'}}\nhttp: {{port: {port}}}\n"
        )
        env = {**os.environ, "SAFEGUARD_API_TOKEN": TOKEN}
        listener = subprocess.Popen(
            [sys.executable, "-m", "listener.cli", "--config", str(folder / "listener.yaml")],
            cwd=ROOT,
            env=env,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_port(port, 30)
            (folder / "daemon.yaml").write_text(
                f"device: {{id: bench}}\nstorage: {{dir: {folder / 'state'}}}\n"
                f"models: {{dir: {MODELS_DIR}}}\nmqtt: {{port: {broker.port}}}\n"
                f"audio: {{source: 'file:{recording}'}}\n"
            )
            subprocess.run(
                [sys.executable, "-m", "edge.cli", "run", "--config", str(folder / "daemon.yaml")],
                cwd=ROOT,
                check=True,
                stderr=subprocess.DEVNULL,
            )
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/api/alerts?limit=1000",
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                alerts = [a for a in json.load(response) if a["event"] == "start"]
        finally:
            listener.terminate()
            listener.wait(timeout=10)
            broker.stop()
    latencies: dict[str, list[float]] = {}
    detection: list[float] = []  # onset -> the window that decided the alert (stream time)
    delivery: list[float] = []  # that moment -> stored by the listener (wall time)
    found = 0
    for category, onset in onsets:
        hits = [
            a
            for a in alerts
            if a["category"] == category and onset - 1.0 <= a["stream_start_s"] <= onset + AFTER
        ]
        if not hits:
            continue
        found += 1
        alert = min(hits, key=lambda a: a["stream_at_s"])
        origin = parse(alert["started_at"]) - alert["stream_start_s"]
        stored = parse(alert["listener"]["received_at"])
        latencies.setdefault(category, []).append(stored - (origin + onset))
        detection.append(alert["stream_at_s"] - onset)
        delivery.append(stored - (origin + alert["stream_at_s"]))
    print(
        f"recording: {len(onsets)} labelled events from the dev streams, "
        f"{found} alerted and stored\n"
    )
    print("| category | events stored | p50 onset -> stored (s) | max (s) |")
    print("|---|---|---|---|")
    for category, values in sorted(latencies.items()):
        print(
            f"| {category} | {len(values)} | {statistics.median(values):.2f} | {max(values):.2f} |"
        )
    every = [v for values in latencies.values() for v in values]
    if every:
        print(f"| all | {len(every)} | {statistics.median(every):.2f} | {max(every):.2f} |")
    if every:
        print(
            f"\nof which: detection (onset -> deciding window) p50 "
            f"{statistics.median(detection):.2f} s; then inference, outbox, MQTT and the "
            f"listener's store p50 {statistics.median(delivery):.2f} s"
        )


if __name__ == "__main__":
    main()

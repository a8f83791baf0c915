"""The daemon side killed with SIGKILL at 20 random points of a burst: every alert arrives."""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from tests.delivery_helpers import Acker
from tests.helpers import ROOT, Mosquitto


def committed(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        ids = {row[0] for row in conn.execute("SELECT id FROM outbox")}
    conn.close()
    return ids


def unacked(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        ids = {row[0] for row in conn.execute("SELECT id FROM outbox WHERE acked IS NULL")}
    conn.close()
    return ids


def start(db: Path, port: int, first: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.delivery_burst",
            str(db),
            str(port),
            str(first),
            "40",
            "0.01",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the child exits (EOF) rather than hang if it fails
    assert line.strip() == "ready", f"the burst process failed to start: {line!r}"
    return proc


def test_sigkill_at_random_points(mosquitto: Mosquitto, tmp_path: Path) -> None:
    rng = random.Random(4)
    acker = Acker(mosquitto.port)
    db = tmp_path / "outbox.db"
    raised: set[str] = set()
    try:
        for round_ in range(20):
            proc = start(db, mosquitto.port, round_ * 100)
            # after each restart, everything raised before the kill arrives
            assert acker.wait_for(raised, 20) == set(), f"round {round_}"
            time.sleep(rng.uniform(0.0, 0.5))  # the burst takes about 0.5 s
            proc.kill()
            proc.wait(10)
            proc.stdout.close()  # type: ignore[union-attr]
            now = committed(db)
            assert raised <= now  # nothing committed is ever lost from the outbox
            raised = now
        assert len(raised) > 100
        proc = start(db, mosquitto.port, 10_000)
        assert acker.wait_for(raised, 20) == set()
        # the device records each ack as it comes back: all of them, within a bounded wait
        deadline = time.monotonic() + 20
        while (waiting := unacked(db) & raised) and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.terminate()
        assert proc.wait(15) == 0
        proc.stdout.close()  # type: ignore[union-attr]
        assert not waiting, f"{len(waiting)} alerts arrived but their acks were not recorded"
    finally:
        acker.close()

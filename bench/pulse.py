"""A private PulseAudio server whose null sink stands in for a room and whose remapped monitor
is the microphone: what `paplay --device=virt` plays, a daemon on `pulse:virtmic` hears.

Used by the microphone tests and by `bench.speed` to run the daemon on its real capture path
(PortAudio, the callback, downmixing and resampling from 48 kHz stereo).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path


class PulseError(RuntimeError):
    """The server cannot be started; the message says what to install or check."""


class PulseServer:
    """A PulseAudio server in `runtime` with sink `virt` (48 kHz) and source `virtmic`."""

    def __init__(self, runtime: Path) -> None:
        self.runtime = runtime
        self.server = f"unix:{runtime / 'native'}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> None:
        exe = shutil.which("pulseaudio")
        if exe is None:
            raise PulseError("pulseaudio is not installed: run `make deps`")
        self.runtime.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PULSE_RUNTIME_PATH": str(self.runtime), "HOME": str(self.runtime)}
        self.proc = subprocess.Popen(
            [
                exe,
                "-n",
                "--daemonize=no",
                "--exit-idle-time=-1",
                "--use-pid-file=no",
                "-L",
                f"module-native-protocol-unix auth-anonymous=1 socket={self.runtime}/native",
                "-L",
                "module-null-sink sink_name=virt rate=48000",
                "-L",
                "module-remap-source master=virt.monitor source_name=virtmic",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        probe = ["pactl", "-s", self.server, "info"]
        while subprocess.run(probe, check=False, capture_output=True).returncode:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise PulseError("the PulseAudio server did not start")
            time.sleep(0.1)

    def play(self, path: Path) -> subprocess.Popen[bytes]:
        """`paplay` of `path` into the sink, in the background."""
        command = ["paplay", "-s", self.server, "--device=virt", str(path)]
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

"""The microphone path on a real audio server: a PulseAudio null sink whose monitor is
remapped as a source acts as the microphone; `paplay` plays a real clip into the sink."""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from bench.pulse import PulseError, PulseServer
from edge import decode
from edge.capture import MicSource
from edge.errors import CaptureError
from edge.ring import AudioRing
from tests.helpers import AUDIO_DEV, require_shared

RATE = 16000


class Pulse(PulseServer):
    """The private PulseAudio server (`bench.pulse`); a failure to start fails the test."""

    def start(self, timeout: float = 15.0) -> None:
        try:
            super().start(timeout)
        except PulseError as exc:
            pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def pulse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pulse]:
    server = Pulse(tmp_path / "pulse")
    server.start()
    monkeypatch.setenv("PULSE_SERVER", server.server)
    yield server
    server.stop()


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def best_correlation(captured: np.ndarray, reference: np.ndarray) -> float:
    """Peak normalised cross-correlation of `reference` anywhere inside `captured`."""
    n = len(captured) + len(reference)
    size = 1 << (n - 1).bit_length()
    spectrum = np.fft.rfft(captured, size) * np.conj(np.fft.rfft(reference, size))
    corr = np.fft.irfft(spectrum, size)[: len(captured)]
    energy = np.sqrt(
        np.convolve(captured**2, np.ones(len(reference)), "full")[
            len(reference) - 1 : len(reference) - 1 + len(captured)
        ]
    )
    return float(np.max(corr / (energy * np.linalg.norm(reference) + 1e-9)))


def test_microphone_through_pulseaudio_is_resampled_to_16k(pulse: Pulse) -> None:
    clip = require_shared(AUDIO_DEV / "clips") / "gunshots__AK-12__3_14_.flac"
    ring = AudioRing(RATE * 30)
    source = MicSource("pulse:virtmic", ring, sample_rate=48000, channels=2)
    source.start()
    try:
        wait_for(
            lambda: source.stats.state == "running" and ring.head > RATE // 2,
            15,
            "capture to start",
        )
        before = ring.head
        subprocess.run(
            ["paplay", "-s", pulse.server, "--device=virt", str(clip)], check=True, timeout=30
        )
        time.sleep(0.5)
        captured = ring.read(before, ring.head - before)
    finally:
        source.stop()
    assert source.stats.native_rate == 48000
    assert source.stats.channels == 2
    reference = decode.read_all(clip)
    seconds = len(captured) / RATE
    assert seconds >= len(reference) / RATE, "captured less audio than was played"
    assert best_correlation(captured, reference) > 0.9  # the clip came through, at 16 kHz


def test_missing_microphone_is_retried_and_reported(
    pulse: Pulse, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="edge.capture")
    ring = AudioRing(RATE * 5)
    source = MicSource("alsa:no-such-microphone", ring, retry_max_s=1.0)
    source.start()

    def said() -> list[int]:
        return [r.levelno for r in caplog.records if "unavailable" in r.getMessage()]

    try:
        wait_for(lambda: source.stats.state == "retrying", 10, "the error to be reported")
        assert "no-such-microphone" in source.stats.error
        wait_for(lambda: len(said()) >= 3, 15, "more attempts")
        assert source._thread.is_alive()  # it keeps trying rather than crashing
    finally:
        source.stop()
    assert source.stats.state == "stopped"
    assert said()[0] == logging.WARNING  # once per streak of failed attempts, then DEBUG
    assert set(said()[1:]) == {logging.DEBUG}, said()


def test_capture_comes_back_when_the_audio_server_returns(pulse: Pulse) -> None:
    ring = AudioRing(RATE * 30)
    source = MicSource("pulse:virtmic", ring, retry_max_s=1.0)
    source.start()
    try:
        wait_for(
            lambda: source.stats.state == "running" and ring.head > RATE // 4,
            15,
            "capture to start",
        )
        pulse.stop()  # the microphone goes away
        wait_for(lambda: source.stats.state == "retrying", 15, "the loss to be noticed")
        pulse.start()  # and comes back
        wait_for(lambda: source.stats.state == "running", 30, "capture to resume")
        resumed = ring.head
        wait_for(lambda: ring.head > resumed + RATE // 2, 10, "samples after the return")
        assert source.stats.error == ""
    finally:
        source.stop()


def test_no_input_device_at_all_says_so() -> None:
    """What PortAudio reports on a board with no microphone (an empty device list, the default
    input -1) becomes an error a user can act on, not "Error querying device -1"."""

    class NoDevices:  # sounddevice's query_devices on such a board
        @staticmethod
        def query_devices(*_args: object) -> list[dict[str, object]]:
            return []

    source = MicSource("default", AudioRing(RATE), retry_max_s=1.0)
    with pytest.raises(CaptureError, match="no audio input device: plug in a microphone"):
        source._open(NoDevices())

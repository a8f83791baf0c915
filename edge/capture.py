"""Audio sources that fill the ring: a microphone through sounddevice (native rate and
channels, downmixed and resampled to 16 kHz) or a file replayed at real-time speed.

Each source runs its own supervised thread. A missing or unplugged microphone is logged,
shown in the stats, and retried with jittered backoff until it comes back.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import soxr

from edge import decode
from edge.config import AudioConfig
from edge.errors import CaptureError
from edge.retry import Streak, backoff
from edge.ring import AudioRing

log = logging.getLogger(__name__)
RATE = 16000
STALL_S = 3.0  # a stream that delivers nothing for this long is reopened


@dataclass
class CaptureStats:
    state: str = "starting"  # starting | running | retrying | ended | stopped
    error: str = ""
    device: str = ""
    native_rate: int = 0
    channels: int = 0
    samples: int = 0  # 16 kHz samples written
    overflows: int = 0  # times the device reported lost input
    reopens: int = 0
    last_block: float = field(default_factory=time.monotonic)
    last_attempt: float = field(default_factory=time.monotonic)  # when the last try failed


class AudioSource(Protocol):
    stats: CaptureStats

    def start(self) -> None: ...

    def stop(self, timeout: float = 2.0) -> None: ...


class FileSource:
    """Replays a file into the ring at real-time speed (WAV, FLAC, MP3, MP4 audio, ...)."""

    def __init__(self, path: Path, ring: AudioRing, block_s: float = 0.05) -> None:
        self.path = path
        self.stats = CaptureStats(device=f"file:{path}")
        self._ring = ring
        self._block_s = block_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capture-file", daemon=True)
        self.ended = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        began = time.monotonic()
        self.stats.state = "running"
        try:
            for block in decode.blocks(self.path, self._block_s):
                due = began + (self.stats.samples + len(block)) / RATE
                if self._stop.wait(max(0.0, due - time.monotonic())):
                    break
                self._ring.write(block)
                self.stats.samples += len(block)
                self.stats.last_block = time.monotonic()
        except CaptureError as exc:
            self.stats.error = str(exc)
            log.error("audio file source failed: %s", exc)
        self.stats.state = "stopped" if self._stop.is_set() else "ended"
        self.ended.set()


class MicSource:
    """The microphone through sounddevice, resampled to 16 kHz mono in the callback."""

    def __init__(
        self,
        source: str,
        ring: AudioRing,
        *,
        sample_rate: int | None = None,
        channels: int | None = None,
        block_s: float = 0.05,
        retry_max_s: float = 30.0,
    ) -> None:
        self.stats = CaptureStats(device=source)
        self._source = source
        self._ring = ring
        self._rate = sample_rate
        self._channels = channels
        self._block_s = block_s
        self._retry_max_s = retry_max_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="capture-mic", daemon=True)
        self._resampler: Any = None

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _device(self, sd: Any) -> Any:
        kind, _, name = self._source.partition(":")
        if kind == "default":
            return None
        if kind == "pulse":
            os.environ["PULSE_SOURCE"] = name  # the ALSA "pulse" device records from it
            return "pulse"
        for index, info in enumerate(sd.query_devices()):
            if name in info["name"] and info["max_input_channels"] > 0:
                return index
        raise CaptureError(f"no input device matching {name!r}")

    def _callback(self, indata: Any, frames: int, _time: Any, status: Any) -> None:
        if status.input_overflow:
            self.stats.overflows += 1
        mono = indata[:, 0] if indata.shape[1] == 1 else indata.mean(axis=1, dtype=np.float32)
        out = self._resampler.resample_chunk(mono) if self._resampler else mono
        self._ring.write(out)
        self.stats.samples += len(out)
        self.stats.last_block = time.monotonic()

    def _open(self, sd: Any) -> Any:
        device = self._device(sd)
        if device is None and not any(d["max_input_channels"] > 0 for d in sd.query_devices()):
            raise CaptureError(
                "no audio input device: plug in a microphone, or set audio.source "
                "(`python -m sounddevice` lists the devices)"
            )
        info = sd.query_devices(device, "input")
        rate = int(self._rate or info["default_samplerate"])
        channels = int(self._channels or max(1, min(int(info["max_input_channels"]), 2)))
        self._resampler = (
            soxr.ResampleStream(rate, RATE, 1, dtype="float32") if rate != RATE else None
        )
        stream = sd.InputStream(
            device=device,
            samplerate=rate,
            channels=channels,
            dtype="float32",
            blocksize=int(rate * self._block_s),
            callback=self._callback,
        )
        stream.start()
        self.stats.native_rate, self.stats.channels = rate, channels
        self.stats.device = f"{self._source} ({info['name']}, {rate} Hz, {channels} ch)"
        return stream

    def _supervise(self) -> None:
        try:
            import sounddevice as sd
        except OSError as exc:  # PortAudio missing
            self.stats.state, self.stats.error = "stopped", f"PortAudio is not available: {exc}"
            log.error("microphone unavailable: %s (install libportaudio2)", exc)
            return
        attempt = 0
        unavailable = Streak(log, "microphone %s unavailable (%s); retrying in %.1f s")
        while not self._stop.is_set():
            try:
                stream = self._open(sd)
            except (CaptureError, sd.PortAudioError, ValueError) as exc:
                attempt += 1
                wait = backoff(attempt, self._retry_max_s)
                self.stats.state, self.stats.error = "retrying", str(exc)
                self.stats.last_attempt = time.monotonic()
                unavailable.say(self._source, exc, wait)
                if self._stop.wait(wait):
                    break
                sd._terminate()  # rescan devices, so a replugged microphone is found
                sd._initialize()
                continue
            attempt = 0
            unavailable.reset()
            self.stats.state, self.stats.error = "running", ""
            self.stats.last_block = time.monotonic()
            log.info("capturing from %s", self.stats.device)
            while not self._stop.wait(0.5):
                if not stream.active or time.monotonic() - self.stats.last_block > STALL_S:
                    self.stats.state, self.stats.error = "retrying", "the stream stalled"
                    self.stats.last_attempt = time.monotonic()
                    log.warning("microphone %s stopped delivering audio; reopening", self._source)
                    self.stats.reopens += 1
                    break
            try:
                stream.abort()
                stream.close()
            except sd.PortAudioError as exc:
                log.debug("closing the stream: %s", exc)
        self.stats.state = "stopped"


def open_source(config: AudioConfig, ring: AudioRing) -> AudioSource | None:
    """The source named by `audio.source`, or None for "none"."""
    spec = config.source
    if spec == "none":
        return None
    if spec.startswith("file:"):
        return FileSource(Path(spec[5:]), ring, config.block_s)
    return MicSource(
        spec,
        ring,
        sample_rate=config.sample_rate,
        channels=config.channels,
        block_s=config.block_s,
        retry_max_s=config.retry_max_s,
    )

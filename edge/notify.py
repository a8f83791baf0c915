"""systemd notification: READY once samples flow, WATCHDOG while the pipeline progresses.

`Notifier` speaks the sd_notify protocol: through systemd-python when it is installed,
otherwise as one datagram to `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace).
Outside systemd (no `$NOTIFY_SOCKET`) every call is a no-op.

`PipelineWatch` decides what to send. READY=1 goes out once, when the models are loaded (the
daemon constructed its detector) and capture has produced samples. WATCHDOG=1 goes out only
while capture delivers blocks and inference finishes windows, and while the video analysis
thread (when there is a camera) goes round its loop: a stalled or dead pipeline stops the
pings, so systemd's `WatchdogSec` restarts the service instead of leaving it deaf or blind.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


class Notifier:
    """One sd_notify channel; `send` never raises (a lost notification is logged)."""

    def __init__(self, address: str | None, use_systemd_python: bool = True) -> None:
        self.address = address
        self._daemon: Any = None
        if address and use_systemd_python:
            try:
                self._daemon = importlib.import_module("systemd.daemon")
            except ImportError:
                self._daemon = None

    @classmethod
    def from_env(cls) -> Notifier:
        return cls(os.environ.get("NOTIFY_SOCKET") or None)

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *lines: str) -> bool:
        if not self.address:
            return False
        message = "\n".join(lines)
        try:
            if self._daemon is not None:
                return bool(self._daemon.notify(message))
            target = self.address
            if target.startswith("@"):
                target = "\0" + target[1:]
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(target)
                sock.sendall(message.encode())
            return True
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self.address, exc)
            return False


def watchdog_interval() -> float | None:
    """Half of systemd's watchdog timeout (`$WATCHDOG_USEC`, for this PID), or None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(0.1, int(usec) / 2e6)
    except ValueError:
        return None


@dataclass(frozen=True)
class Progress:
    """What the pipeline has done so far (monotonic clock times)."""

    samples: int  # capture samples written; -1 when the daemon has no audio source
    last_block: float  # when capture last wrote a block
    last_window: float  # when inference last finished a window
    waiting: bool = False  # capture is retrying a missing device (and its retries go on)
    video: str = ""  # why video analysis is stalled or dead, "" when fine or not configured


class PipelineWatch:
    """Sends READY, WATCHDOG, STATUS and STOPPING from the daemon's main loop.

    `progress` reads the pipeline's counters; `status` gives the one-line summary. Call
    `tick()` often (every 0.2 s); it rate-limits what it sends.
    """

    def __init__(
        self,
        notifier: Notifier,
        progress: Callable[[], Progress],
        status: Callable[[], str],
        stall_s: float,
        *,
        ping_every_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.notifier = notifier
        self.progress = progress
        self.status = status
        self.stall_s = stall_s
        self.ping_every_s = ping_every_s if ping_every_s is not None else watchdog_interval()
        self.clock = clock
        self.ready = False
        self.stalled = False
        self.pings = 0
        self._last_ping = float("-inf")
        self._last_status = float("-inf")

    def stall(self, now: float) -> str:
        """Why the pipeline counts as stalled now, or "" when it makes progress."""
        state = self.progress()
        reasons = [state.video] if state.video else []
        if state.samples >= 0 and not state.waiting:  # a missing microphone is retried in-process
            idle_capture = now - state.last_block
            idle_inference = now - state.last_window
            if max(idle_capture, idle_inference) > self.stall_s:
                reasons.insert(
                    0, f"capture idle {idle_capture:.1f} s, inference idle {idle_inference:.1f} s"
                )
        return "; ".join(reasons)

    def tick(self) -> None:
        now = self.clock()
        if not self.ready:  # models are loaded before the loop starts
            self.ready = True
            self._last_status = now
            self.notifier.send("READY=1", f"STATUS={self.status()}")
            log.info("ready: models loaded, pipeline running (%s)", self.status())
            return
        reason = self.stall(now)
        if reason and not self.stalled:
            log.error("pipeline stalled (%s): withholding watchdog pings", reason)
            self.notifier.send(f"STATUS=stalled: {reason}")
        elif not reason and self.stalled:
            log.warning("pipeline makes progress again")
        self.stalled = bool(reason)
        if self.stalled:
            return
        if self.ping_every_s is not None and now - self._last_ping >= self.ping_every_s:
            self._last_ping = now
            self.pings += 1
            self.notifier.send("WATCHDOG=1")
        if now - self._last_status >= 5.0:
            self._last_status = now
            self.notifier.send(f"STATUS={self.status()}")

    def stopping(self) -> None:
        self.notifier.send("STOPPING=1", "STATUS=stopping")

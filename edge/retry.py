"""Retrying what is gone (a microphone, a camera, a broker): jittered backoff, and a failure
said once per streak of failed attempts rather than on every attempt."""

from __future__ import annotations

import logging
import random


def backoff(attempt: int, cap: float) -> float:
    """Jittered exponential backoff: uniform(0.5, min(cap, 1.5 ** attempt)) seconds."""
    return random.uniform(0.5, max(0.5, min(cap, 1.5 ** min(attempt, 20))))


class Streak:
    """Logs a failure at WARNING on the first failed attempt of a streak and at DEBUG on the
    next ones, until `reset` (it works again). The state itself is in the health."""

    def __init__(self, logger: logging.Logger, message: str) -> None:
        self.logger, self.message = logger, message
        self._said = False

    def say(self, *args: object) -> None:
        self.logger.log(logging.DEBUG if self._said else logging.WARNING, self.message, *args)
        self._said = True

    def reset(self) -> None:
        self._said = False

"""A preallocated audio ring addressed by absolute sample index.

One writer (the capture callback) and any number of readers. The writer never waits: it
copies into the ring and then advances `head`. A reader asks for samples by absolute index;
what the writer has already overwritten is reported, so a reader that fell behind can skip
ahead and count what it lost.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]


class Overrun(Exception):
    """The samples asked for were overwritten; `oldest` is the first one still held."""

    def __init__(self, oldest: int) -> None:
        super().__init__(f"overwritten; oldest sample still held is {oldest}")
        self.oldest = oldest


class AudioRing:
    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self._data = np.zeros(capacity, np.float32)
        self._head = 0  # absolute index one past the newest sample
        self._reserved = 0  # head after the write in progress (set before copying)

    @property
    def head(self) -> int:
        return self._head

    @property
    def oldest(self) -> int:
        return max(0, self._head - self.capacity)

    def write(self, samples: F32) -> None:
        """Append samples (writer side; never blocks)."""
        n = len(samples)
        if n == 0:
            return
        skipped = max(0, n - self.capacity)
        if skipped:
            samples, n = samples[skipped:], self.capacity
        self._reserved = self._head + skipped + n
        start = (self._head + skipped) % self.capacity
        first = min(n, self.capacity - start)
        self._data[start : start + first] = samples[:first]
        self._data[: n - first] = samples[first:]
        self._head += skipped + n

    def read(self, start: int, count: int) -> F32:
        """Copy of samples [start, start + count); Overrun if any were overwritten."""
        if count > self.capacity:
            raise ValueError(f"cannot read {count} samples from a ring of {self.capacity}")
        if start + count > self._head:
            raise ValueError(f"samples up to {start + count} not written yet (head {self._head})")
        if start < self.oldest:
            raise Overrun(self.oldest)
        begin = start % self.capacity
        first = min(count, self.capacity - begin)
        out = np.empty(count, np.float32)
        out[:first] = self._data[begin : begin + first]
        out[first:] = self._data[: count - first]
        if start < self._reserved - self.capacity:  # the writer lapped us while we copied
            raise Overrun(self._reserved - self.capacity)
        return out

"""The ring buffer: absolute indexing, wrap-around, overruns, concurrent writer."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from edge.ring import AudioRing, Overrun


def ramp(start: int, count: int) -> np.ndarray:
    return np.arange(start, start + count, dtype=np.float32)


def test_reads_by_absolute_index_across_wraps() -> None:
    ring = AudioRing(100)
    written = 0
    for size in (30, 50, 45, 99, 7):
        ring.write(ramp(written, size))
        written += size
    assert ring.head == written
    assert ring.oldest == written - 100
    np.testing.assert_array_equal(ring.read(written - 100, 100), ramp(written - 100, 100))
    np.testing.assert_array_equal(ring.read(written - 10, 10), ramp(written - 10, 10))


def test_overrun_reports_the_oldest_sample_held() -> None:
    ring = AudioRing(100)
    ring.write(ramp(0, 250))
    with pytest.raises(Overrun) as info:
        ring.read(100, 20)
    assert info.value.oldest == 150
    np.testing.assert_array_equal(ring.read(150, 100), ramp(150, 100))


def test_a_block_larger_than_the_ring_keeps_its_tail() -> None:
    ring = AudioRing(10)
    ring.write(ramp(0, 25))
    assert ring.head == 25
    np.testing.assert_array_equal(ring.read(15, 10), ramp(15, 10))


def test_cannot_read_the_future_or_more_than_capacity() -> None:
    ring = AudioRing(10)
    ring.write(ramp(0, 5))
    with pytest.raises(ValueError, match="not written yet"):
        ring.read(0, 6)
    with pytest.raises(ValueError, match="cannot read"):
        ring.read(0, 11)


def test_concurrent_reader_never_sees_torn_data() -> None:
    ring = AudioRing(1000)
    total = 400_000
    done = threading.Event()

    def writer() -> None:
        for start in range(0, total, 64):
            ring.write(ramp(start, 64))
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    reads = overruns = 0
    while not done.is_set() or reads == 0:
        head = ring.head
        start = max(0, head - 900)
        if head - start < 100:
            continue
        try:
            data = ring.read(start, 100)
        except Overrun:
            overruns += 1
            continue
        np.testing.assert_array_equal(data, ramp(start, 100))  # never a mix of old and new
        reads += 1
    thread.join(timeout=30)
    assert reads > 0

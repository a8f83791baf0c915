"""Live updates for the dashboard: server-sent events fed from the ingest and API threads."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

from listener.metrics import Metrics

log = logging.getLogger(__name__)

_CLOSE = ("", "")


class LiveHub:
    """Fans events out to every open stream. `publish` may be called from any thread."""

    def __init__(self, metrics: Metrics, heartbeat_s: float = 15.0) -> None:
        self.metrics = metrics
        self.heartbeat_s = heartbeat_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subs: set[asyncio.Queue[tuple[str, str]]] = set()
        self._lock = threading.Lock()
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._closed = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def has_subscribers(self) -> bool:
        return bool(self._subs)

    def seen(self, key: str) -> bool:
        """True if this alert (`device/id`) was already announced (remembers the last 10,000)."""
        with self._lock:
            if key in self._recent:
                return True
            self._recent[key] = None
            if len(self._recent) > 10_000:
                self._recent.popitem(last=False)
            return False

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        loop = self._loop
        if loop is None or not self._subs or loop.is_closed():
            return
        message = (kind, json.dumps(data, separators=(",", ":")))
        loop.call_soon_threadsafe(self._fanout, message)

    def _fanout(self, message: tuple[str, str]) -> None:
        for sub in list(self._subs):
            try:
                sub.put_nowait(message)
            except asyncio.QueueFull:  # a stalled client: drop it, it reconnects and reloads
                self._subs.discard(sub)
                while not sub.empty():
                    sub.get_nowait()
                sub.put_nowait(_CLOSE)

    def close_soon(self) -> None:
        """`close` from any thread (or a signal handler)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.close)

    def close(self) -> None:
        """End every stream, and any opened from now on (on shutdown)."""
        self._closed = True
        for sub in list(self._subs):
            if not sub.full():
                sub.put_nowait(_CLOSE)
        self._subs.clear()

    async def stream(self) -> AsyncIterator[str]:
        queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue(maxsize=1000)
        self._subs.add(queue)
        self.metrics.live_clients.inc()
        try:
            yield "retry: 2000\nevent: hello\ndata: {}\n\n"
            while not self._closed:
                try:
                    kind, data = await asyncio.wait_for(queue.get(), self.heartbeat_s)
                except asyncio.TimeoutError:
                    yield ": keepalive\n\n"
                    continue
                if (kind, data) == _CLOSE:
                    return
                yield f"event: {kind}\ndata: {data}\n\n"
        finally:
            self._subs.discard(queue)
            self.metrics.live_clients.dec()

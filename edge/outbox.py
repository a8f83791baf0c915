"""The durable outbox: every alert is written here (SQLite, WAL) before any send.

Delivery (MQTT, acknowledgements, SMS) reads pending rows from here; nothing is lost
when the process dies, because a row is committed before `submit` returns.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from edge import schema
from edge.errors import DeliveryError
from edge.events import Event

log = logging.getLogger(__name__)

_DDL = """
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY,
    event_key TEXT NOT NULL,
    phase TEXT NOT NULL,
    category TEXT NOT NULL,
    severity TEXT NOT NULL,
    payload TEXT NOT NULL,
    created REAL NOT NULL,
    acked REAL
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (acked, id);
"""


class Outbox:
    """An `EventSink` that turns events into alerts and stores them durably."""

    def __init__(self, path: Path, device_id: str, location: dict[str, Any] | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._device_id = device_id
        self._location = location
        self._lock = threading.Lock()
        self._event_ids: dict[str, str] = {}
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_DDL)
        except sqlite3.Error as exc:
            raise DeliveryError(f"cannot open the outbox {path}: {exc}") from None

    def alert_for(self, event: Event) -> dict[str, Any]:
        alert_id = schema.new_id()
        event_id = self._event_ids.setdefault(event.key, alert_id)
        if event.phase == "end":
            self._event_ids.pop(event.key, None)
        alert: dict[str, Any] = {
            "schema": schema.SCHEMA_ID,
            "id": alert_id,
            "device_id": self._device_id,
            "event": event.phase,
            "category": event.category,
            "severity": event.severity,
            "score": round(min(1.0, max(0.0, event.score)), 4),
            "started_at": schema.rfc3339(event.wall_start),
            "sent_at": schema.rfc3339(time.time()),
            "event_id": event_id,
            "peak_score": round(event.peak_score, 4),
            "stream_start_s": round(event.start_s, 3),
            "stream_at_s": round(event.at_s, 3),
            "modalities": list(event.modalities),
            "evidence": {k: round(v, 4) for k, v in event.evidence.items()},
        }
        if self._location:
            alert["location"] = self._location
        return schema.validate(alert)

    def submit(self, event: Event) -> None:
        alert = self.alert_for(event)
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO outbox"
                    " (id, event_key, phase, category, severity, payload, created)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        alert["id"],
                        event.key,
                        event.phase,
                        event.category,
                        event.severity,
                        json.dumps(alert, separators=(",", ":")),
                        time.time(),
                    ),
                )
            except sqlite3.Error as exc:
                raise DeliveryError(f"cannot store alert {alert['id']}: {exc}") from None
        log.info(
            "alert %s stored: %s %s score=%.2f",
            alert["id"],
            event.category,
            event.phase,
            event.score,
        )

    def pending(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT payload FROM outbox WHERE acked IS NULL ORDER BY id LIMIT ?", (limit,)
            ).fetchall()
        return [json.loads(r[0]) for r in rows]

    def depth(self) -> int:
        with self._lock:
            return int(
                self._db.execute("SELECT count(*) FROM outbox WHERE acked IS NULL").fetchone()[0]
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

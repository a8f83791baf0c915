"""The durable outbox: every alert is written here (SQLite, WAL) before any send.

Delivery (MQTT, acknowledgements, SMS) reads pending rows from here; nothing is lost
when the process dies, because a row is committed before `submit` returns.

Bound policy: at most `max_rows` rows. When full, acknowledged rows go first (oldest
first); then unacknowledged rows in this order: `update` messages, `end` messages, `start`
messages of non-critical severity, each oldest first. A `start` of a critical alert is
never dropped (the table then grows past the bound, with a warning). Every drop is
logged and counted in `stats()["dropped"]`, which survives restarts.

An alert that cannot be stored (a full or failing disk) is kept in memory, published like
the others and stored as soon as the outbox can be written again; it is logged and counted
(`stats()["unstored"]`, `["store_failures"]`), and one still held at exit is logged by id.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from edge import schema
from edge.errors import ConfigError, DeliveryError
from edge.events import Event

log = logging.getLogger(__name__)

SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}

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
CREATE TABLE IF NOT EXISTS fallback (
    alert_id TEXT NOT NULL,
    channel TEXT NOT NULL,
    contact TEXT NOT NULL,
    state TEXT NOT NULL,
    detail TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    at REAL NOT NULL,
    PRIMARY KEY (alert_id, channel, contact)
);
CREATE INDEX IF NOT EXISTS fallback_at ON fallback (channel, state, at);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
# Columns added to the first outbox layout: retry and fallback bookkeeping.
_COLUMNS = {
    "attempts": "INTEGER NOT NULL DEFAULT 0",
    "last_sent": "REAL",
    "fallback_done": "REAL",
}
_DROP_ORDER = (
    "SELECT id, phase, severity FROM outbox WHERE acked IS NULL"
    " AND NOT (phase = 'start' AND severity = 'critical')"
    " ORDER BY CASE phase WHEN 'update' THEN 0 WHEN 'end' THEN 1 ELSE 2 END, id LIMIT 1"
)


def _wait(publications: int, first: float, longest: float) -> float:
    """Seconds between publications of an unacked alert: `first`, doubling, up to `longest`."""
    return min(first * 2.0 ** min(max(publications - 1, 0), 30), longest)


def check_storage(folder: Path) -> None:
    """Make `folder` (storage.dir) if needed and check that files can be written there;
    ConfigError in one line if not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ConfigError(
            f"storage.dir {folder}: cannot write there ({exc.strerror}); under the systemd unit "
            "only /var/lib/safeguard is writable unless a drop-in adds ReadWritePaths= (see "
            "docs/device.md)"
        ) from None


class Outbox:
    """An `EventSink` that turns events into alerts and stores them durably."""

    def __init__(
        self,
        path: Path,
        device_id: str,
        location: dict[str, Any] | None = None,
        max_rows: int = 10_000,
    ) -> None:
        check_storage(path.parent)
        self.path = path
        self.max_rows = max_rows
        self.changed = threading.Event()  # set on every submit: wakes the delivery thread
        self._device_id = device_id
        self._location = location
        self._lock = threading.Lock()
        self._event_ids: dict[str, str] = {}
        self._ended_ids: dict[str, str] = {}  # recently ended events (their late clip update)
        # alerts that could not be stored: id -> (alert, event key, publications, last sent)
        self._unstored: dict[str, tuple[dict[str, Any], str, int, float | None]] = {}
        self._store_failures = 0
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_DDL)
            have = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
            for name, decl in _COLUMNS.items():
                if name not in have:
                    self._db.execute(f"ALTER TABLE outbox ADD COLUMN {name} {decl}")
        except sqlite3.Error as exc:
            raise DeliveryError(f"cannot open the outbox {path}: {exc}") from None

    def alert_for(self, event: Event, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The alert for `event`, with optional `extra` fields (e.g. `clip`)."""
        alert_id = schema.new_id()
        if event.phase == "start":  # a key used again is a new event
            self._ended_ids.pop(event.key, None)
        event_id = self._ended_ids.get(event.key) or self._event_ids.setdefault(event.key, alert_id)
        if event.phase == "end":
            self._ended_ids[event.key] = self._event_ids.pop(event.key, event_id)
            while len(self._ended_ids) > 256:
                del self._ended_ids[next(iter(self._ended_ids))]
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
        alert.update(extra or {})
        return schema.validate(alert)

    def submit(self, event: Event, extra: dict[str, Any] | None = None) -> None:
        """Store the alert for `event`; committed (fsync) before this returns."""
        alert = self.alert_for(event, extra)
        if not self.submit_alert(alert, event.key):
            return
        log.info(
            "alert %s stored: %s %s score=%.2f",
            alert["id"],
            event.category,
            event.phase,
            event.score,
        )

    def submit_alert(self, alert: dict[str, Any], event_key: str | None = None) -> bool:
        """Store a ready alert (validated here); when it cannot be stored, keep it in memory
        (published all the same, stored by `store_unstored` once the disk allows); whether it
        was stored now."""
        schema.validate(alert)
        key = event_key or alert.get("event_id") or alert["id"]
        try:
            self._insert(alert, key)
        except sqlite3.Error as exc:
            with self._lock:
                self._unstored[alert["id"]] = (alert, key, 0, None)
                self._store_failures += 1
            log.error(
                "cannot store alert %s (%s): kept in memory and sent; stored once the outbox"
                " can be written again",
                alert["id"],
                exc,
            )
            self.changed.set()
            return False
        self.changed.set()
        return True

    def _insert(self, alert: dict[str, Any], key: str) -> None:
        row = (
            alert["id"],
            key,
            alert["event"],
            alert["category"],
            alert["severity"],
            json.dumps(alert, separators=(",", ":")),
            time.time(),
        )
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    "INSERT INTO outbox"
                    " (id, event_key, phase, category, severity, payload, created)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    row,
                )
                self._enforce_bound()
                self._db.execute("COMMIT")
            except sqlite3.Error:
                self._rollback()
                raise

    def store_unstored(self) -> int:
        """Store the alerts held in memory where the disk now allows; how many are left."""
        with self._lock:
            held = list(self._unstored.items())
        for alert_id, (alert, key, _, _) in held:
            try:
                self._insert(alert, key)
            except sqlite3.Error:
                return len(held)
            with self._lock:
                self._unstored.pop(alert_id, None)
            log.info("alert %s, held in memory, is now stored", alert_id)
        return 0

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("ROLLBACK")

    def _enforce_bound(self) -> None:
        total = int(self._db.execute("SELECT count(*) FROM outbox").fetchone()[0])
        while total > self.max_rows:
            acked = self._db.execute(
                "SELECT id FROM outbox WHERE acked IS NOT NULL ORDER BY id LIMIT ?",
                (total - self.max_rows,),
            ).fetchall()
            if acked:
                self._delete([r[0] for r in acked])
                total -= len(acked)
                continue
            victim = self._db.execute(_DROP_ORDER).fetchone()
            if victim is None:
                log.warning(
                    "outbox holds %d unacknowledged critical start alerts, over its bound of %d:"
                    " keeping them all",
                    total,
                    self.max_rows,
                )
                return
            log.warning(
                "outbox full (%d rows): dropping unacknowledged %s %s alert %s",
                self.max_rows,
                victim[2],
                victim[1],
                victim[0],
            )
            self._delete([victim[0]])
            self._db.execute(
                "INSERT INTO counters (name, value) VALUES ('dropped', 1)"
                " ON CONFLICT (name) DO UPDATE SET value = value + 1"
            )
            total -= 1

    def _delete(self, ids: list[str]) -> None:
        marks = ",".join("?" * len(ids))
        self._db.execute(f"DELETE FROM fallback WHERE alert_id IN ({marks})", ids)  # noqa: S608
        self._db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", ids)  # noqa: S608

    def _write(self, sql: str, args: tuple[Any, ...], fsync: bool = True) -> int:
        """One statement in its own transaction. `fsync=False` for bookkeeping whose loss
        on power failure only causes a resend: in WAL mode the commit still survives the
        death of the process, it only skips the fsync (about 5 ms on an SD card or more)."""
        with self._lock:
            try:
                if fsync:
                    return self._db.execute(sql, args).rowcount
                self._db.execute("PRAGMA synchronous=NORMAL")
                try:
                    return self._db.execute(sql, args).rowcount
                finally:
                    self._db.execute("PRAGMA synchronous=FULL")
            except sqlite3.Error as exc:
                raise DeliveryError(f"outbox write failed: {exc}") from None

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return list(self._db.execute(sql, args).fetchall())
            except sqlite3.Error as exc:
                raise DeliveryError(f"outbox read failed: {exc}") from None

    def pending(self, limit: int = 100) -> list[dict[str, Any]]:
        """Unacknowledged alerts, oldest first."""
        rows = self._read(
            "SELECT payload FROM outbox WHERE acked IS NULL ORDER BY id LIMIT ?", (limit,)
        )
        return [json.loads(r[0]) for r in rows]

    def due(
        self, now: float, resend_after: float, resend_max: float, limit: int = 100
    ) -> list[tuple[str, str]]:
        """(id, payload) of unacked alerts never published, or whose wait since their last
        publication is over: `resend_after`, doubling with each publication up to
        `resend_max`. Alerts held in memory come first."""
        with self._lock:
            held = [
                (alert_id, json.dumps(alert, separators=(",", ":")))
                for alert_id, (alert, _, sent, last) in self._unstored.items()
                if last is None or last <= now - _wait(sent, resend_after, resend_max)
            ]
        rows = self._read(
            "SELECT id, payload FROM outbox WHERE acked IS NULL AND (last_sent IS NULL"
            " OR last_sent <= ? - min(? * (1 << min(max(attempts - 1, 0), 30)), ?))"
            " ORDER BY id LIMIT ?",
            (now, resend_after, resend_max, limit),
        )
        return held + [(str(r[0]), str(r[1])) for r in rows]

    def mark_sent(self, alert_id: str, at: float) -> None:
        with self._lock:
            if alert_id in self._unstored:
                alert, key, sent, _ = self._unstored[alert_id]
                self._unstored[alert_id] = (alert, key, sent + 1, at)
                return
        self._write(
            "UPDATE outbox SET attempts = attempts + 1, last_sent = ? WHERE id = ?",
            (at, alert_id),
            fsync=False,
        )

    def forget_sent(self) -> None:
        """Make every unacked alert due again (after a reconnect)."""
        with self._lock:
            for alert_id, (alert, key, sent, _) in self._unstored.items():
                self._unstored[alert_id] = (alert, key, sent, None)
        self._write("UPDATE outbox SET last_sent = NULL WHERE acked IS NULL", (), fsync=False)

    def ack(self, alert_id: str, at: float | None = None) -> bool:
        """Mark `alert_id` acknowledged; False if unknown or already acknowledged."""
        with self._lock:
            if self._unstored.pop(alert_id, None) is not None:
                return True  # delivered: nothing left to store
        return (
            self._write(
                "UPDATE outbox SET acked = ? WHERE id = ? AND acked IS NULL",
                (time.time() if at is None else at, alert_id),
                fsync=False,
            )
            > 0
        )

    def is_acked(self, alert_id: str) -> bool:
        rows = self._read("SELECT acked FROM outbox WHERE id = ?", (alert_id,))
        return bool(rows) and rows[0][0] is not None

    def fallback_candidates(
        self, created_before: float, min_severity: str, phases: tuple[str, ...], limit: int = 50
    ) -> list[dict[str, Any]]:
        """Unacked alerts old enough for the fallback channels whose fallback is not done."""
        severities = [s for s, r in SEVERITY_RANK.items() if r >= SEVERITY_RANK[min_severity]]
        marks_s = ",".join("?" * len(severities))
        marks_p = ",".join("?" * len(phases))
        rows = self._read(
            "SELECT payload FROM outbox WHERE acked IS NULL AND fallback_done IS NULL"  # noqa: S608
            f" AND created <= ? AND severity IN ({marks_s}) AND phase IN ({marks_p})"
            " ORDER BY id LIMIT ?",
            (created_before, *severities, *phases, limit),
        )
        return [json.loads(r[0]) for r in rows]

    def fallback_state(self, alert_id: str, channel: str, contact: str) -> tuple[str, float] | None:
        """(state, when) last recorded for one channel/contact of an alert."""
        rows = self._read(
            "SELECT state, at FROM fallback WHERE alert_id = ? AND channel = ? AND contact = ?",
            (alert_id, channel, contact),
        )
        return (str(rows[0][0]), float(rows[0][1])) if rows else None

    def record_fallback(
        self, alert_id: str, channel: str, contact: str, *, state: str, detail: str, attempts: int
    ) -> None:
        """Record the result of one channel/contact for an alert (sent, failed, deferred...)."""
        self._write(
            "INSERT INTO fallback (alert_id, channel, contact, state, detail, attempts, at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (alert_id, channel, contact) DO UPDATE"
            " SET state = excluded.state, detail = excluded.detail,"
            " attempts = fallback.attempts + excluded.attempts, at = excluded.at",
            (alert_id, channel, contact, state, detail[:500], attempts, time.time()),
        )

    def fallback_results(self, alert_id: str) -> list[tuple[str, str, str, str]]:
        """(channel, contact, state, detail) recorded for an alert."""
        rows = self._read(
            "SELECT channel, contact, state, detail FROM fallback WHERE alert_id = ?"
            " ORDER BY channel, contact",
            (alert_id,),
        )
        return [(str(a), str(b), str(c), str(d)) for a, b, c, d in rows]

    def mark_fallback_done(self, alert_id: str) -> None:
        self._write("UPDATE outbox SET fallback_done = ? WHERE id = ?", (time.time(), alert_id))

    def sent_since(self, channel: str, since: float) -> int:
        """How many messages `channel` sent since `since` (for the hourly rate limit)."""
        rows = self._read(
            "SELECT count(*) FROM fallback WHERE channel = ? AND state = 'sent' AND at >= ?",
            (channel, since),
        )
        return int(rows[0][0])

    def purge_acked(self, older_than: float) -> int:
        """Delete acknowledged rows acked before `older_than`; how many went."""
        with self._lock:
            try:
                ids = [
                    r[0]
                    for r in self._db.execute(
                        "SELECT id FROM outbox WHERE acked IS NOT NULL AND acked < ?",
                        (older_than,),
                    ).fetchall()
                ]
                for start in range(0, len(ids), 500):
                    self._delete(ids[start : start + 500])
            except sqlite3.Error as exc:
                raise DeliveryError(f"outbox purge failed: {exc}") from None
        return len(ids)

    def depth(self) -> int:
        """Unacknowledged alerts (those held in memory too)."""
        rows = self._read("SELECT count(*) FROM outbox WHERE acked IS NULL")
        with self._lock:
            return int(rows[0][0]) + len(self._unstored)

    def stats(self) -> dict[str, int]:
        rows = self._read(
            "SELECT (SELECT count(*) FROM outbox WHERE acked IS NULL),"
            " (SELECT count(*) FROM outbox),"
            " (SELECT coalesce(max(value), 0) FROM counters WHERE name = 'dropped')"
        )
        depth, total, dropped = rows[0]
        with self._lock:
            unstored, failures = len(self._unstored), self._store_failures
        return {
            "outbox_depth": int(depth) + unstored,
            "outbox_rows": int(total),
            "dropped": int(dropped),
            "unstored": unstored,
            "store_failures": failures,
        }

    def close(self) -> None:
        self.store_unstored()
        with self._lock:
            if self._unstored:
                log.error(
                    "%d alerts could neither be stored nor acknowledged and are lost at exit: %s",
                    len(self._unstored),
                    " ".join(self._unstored),
                )
            self._db.close()

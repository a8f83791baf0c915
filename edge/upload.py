"""Clip upload: every written clip goes to the listener's `PUT /api/alerts/{id}/clip`, so the
dashboard can play it. Off the hot path and durable.

Flow: the daemon announces a clip as an `update` alert and hands the same alert id and clip
reference to `Uploader.add`, which commits one row to `uploads.db` (SQLite, WAL) in the
storage folder before it returns; a pending upload survives a restart. One thread sends the
due rows, oldest first, streaming the file with the bearer token (the secret `api_token`:
`SAFEGUARD_API_TOKEN` or `$CREDENTIALS_DIRECTORY/api_token`, never the YAML).

Outcomes of one attempt:
- 2xx: done (`uploads_sent`);
- 404 (the alert is not stored yet: its MQTT message is still on the way): retried;
- no connection, a timeout, 408, 429 (`Retry-After` honoured), 5xx: retried, and the whole
  queue waits (jittered exponential backoff, up to `retry_max_s`);
- 401, 403 (a token the listener refuses): logged as an error and retried with backoff, so
  that a corrected token still delivers;
- any other 4xx (413 too large, 415 type, 400 empty...): logged with the listener's reason,
  dropped, counted in `uploads_rejected`.
The file deleted meanwhile (clip retention or quota) or an upload still pending after
`max_age_h`: dropped with a warning and counted (`uploads_missing`, `uploads_expired`).
Nothing is dropped silently; the counters survive restarts and are part of the health.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import random
import sqlite3
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edge.errors import DeliveryError
from edge.secrets import require_secret

log = logging.getLogger(__name__)
CONTENT_TYPES = {".wav": "audio/wav", ".flac": "audio/flac", ".mp3": "audio/mpeg",
                 ".mp4": "video/mp4", ".webm": "video/webm"}  # fmt: skip
RETRY_STATUS = frozenset({404, 408, 429})
AUTH_STATUS = frozenset({401, 403})
COUNTERS = ("sent", "rejected", "missing", "expired", "failed_attempts")
_COUNT = (
    "INSERT INTO counters (name, value) VALUES (?, 1)"
    " ON CONFLICT (name) DO UPDATE SET value = value + 1"
)

_DDL = """
CREATE TABLE IF NOT EXISTS uploads (
    alert_id TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    content_type TEXT NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    last_error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS uploads_due ON uploads (next_at);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class ListenerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    enabled: bool = Field(
        False,
        description="Upload each written clip to the listener (token: the secret api_token, "
        "i.e. SAFEGUARD_API_TOKEN or $CREDENTIALS_DIRECTORY/api_token).",
    )
    url: str = Field(
        "",
        max_length=500,
        description="The listener's base URL, e.g. http://listener.lan:8080 (https for "
        "anything beyond a trusted network).",
    )
    prefer: Literal["audio", "video"] = Field(
        "video",
        description="Which file of a clip with both sound and picture to upload (the "
        "listener keeps one clip per alert; the MP4 carries the sound too); the other is used "
        "when only it exists.",
    )
    timeout_s: float = Field(
        30.0, ge=1, le=600, description="Connect and read timeout of one upload request."
    )
    retry_min_s: float = Field(
        2.0, ge=0.05, le=600, description="First wait before retrying a failed upload."
    )
    retry_max_s: float = Field(
        300.0, ge=1, le=86400, description="Longest wait between attempts (jittered backoff)."
    )
    max_age_h: float = Field(
        168.0,
        gt=0,
        le=8760,
        description="An upload still pending after this long is dropped (logged, counted).",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _needs_url(self) -> ListenerConfig:
        if self.enabled and not self.url:
            raise ValueError("listener.url is required when listener.enabled is true")
        return self


def pick_file(clip: dict[str, Any], prefer: str) -> Path | None:
    """The file of `clip` to upload: the preferred track, else the other one."""
    for name in (prefer, "video" if prefer == "audio" else "audio"):
        track = clip.get(name)
        if isinstance(track, dict) and track.get("path"):
            return Path(str(track["path"]))
    return None


class Uploader:
    """The durable clip upload queue and its sending thread (see the module docstring)."""

    def __init__(self, config: ListenerConfig, path: Path, token: str | None = None) -> None:
        self.config = config
        self.token = token if token is not None else require_secret("api_token")
        self._url = urllib.parse.urlsplit(config.url)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._hold_until = 0.0  # the listener is unreachable: the whole queue waits
        self._server_failures = 0
        self.last_error = ""
        self._thread = threading.Thread(target=self._run, name="upload", daemon=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_DDL)
        except sqlite3.Error as exc:
            raise DeliveryError(f"cannot open the upload queue {path}: {exc}") from None

    # --- the queue -------------------------------------------------------------------------
    def _sql(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return list(self._db.execute(sql, args).fetchall())
            except sqlite3.Error as exc:
                raise DeliveryError(f"upload queue: {exc}") from None

    def add(self, alert_id: str, clip: dict[str, Any]) -> bool:
        """Queue the clip file for the alert `alert_id` (committed before this returns)."""
        path = pick_file(clip, self.config.prefer)
        if path is None:
            return False
        content_type = CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream")
        now = time.time()
        self._sql(
            "INSERT OR REPLACE INTO uploads (alert_id, path, content_type, created, next_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (alert_id, str(path), content_type, now, now),
        )
        self._wake.set()
        return True

    def _count(self, name: str) -> None:
        self._sql(_COUNT, (name,))

    def _drop(self, alert_id: str, counter: str) -> None:
        """Removes an upload and counts why, in one transaction (never one without the other)."""
        with self._lock:
            try:
                with self._db:  # sqlite3's context manager needs an open transaction
                    self._db.execute("BEGIN")
                    self._db.execute("DELETE FROM uploads WHERE alert_id = ?", (alert_id,))
                    self._db.execute(_COUNT, (counter,))
            except sqlite3.Error as exc:
                raise DeliveryError(f"upload queue: {exc}") from None

    def pending(self) -> int:
        return int(self._sql("SELECT count(*) FROM uploads")[0][0])

    def stats(self) -> dict[str, int]:
        found = dict(self._sql("SELECT name, value FROM counters"))
        return {name: int(found.get(name, 0)) for name in COUNTERS}

    def health(self) -> dict[str, object]:
        return {
            "uploads_pending": self.pending(),
            **{f"uploads_{name}": value for name, value in self.stats().items()},
            "upload_last_error": self.last_error,
        }

    # --- the thread ------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Stop after the request under way (a pending upload stays queued for next time)."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("upload still under way at shutdown: it is sent again next time")
            return
        with self._lock:
            self._db.close()

    def _backoff(self, attempts: int) -> float:
        ceiling = min(self.config.retry_max_s, self.config.retry_min_s * 2.0 ** min(attempts, 30))
        return random.uniform(0.5, 1.0) * ceiling

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()  # before the step: an `add` from now on ends the wait
            try:
                wait = self._step()
            except DeliveryError as exc:
                log.error("clip upload: %s", exc)
                wait = self.config.retry_max_s
            except Exception:  # the queue keeps its rows; the loop must outlive a bug
                log.exception("clip upload: unexpected error")
                wait = self.config.retry_max_s
            self._wake.wait(wait)

    def _step(self) -> float:
        """Send the oldest due upload, if any; how long to wait before the next step."""
        now = time.time()
        if now < self._hold_until:
            return self._hold_until - now
        rows = self._sql(
            "SELECT alert_id, path, content_type, created, attempts, next_at FROM uploads"
            " ORDER BY next_at, created LIMIT 1"
        )
        if not rows:
            return 3600.0
        alert_id, path, content_type, created, attempts, next_at = rows[0]
        if next_at > now:
            return float(next_at) - now
        if now - created > self.config.max_age_h * 3600:
            log.warning(
                "clip upload for alert %s dropped: still not accepted after %.0f h (%s)",
                alert_id,
                self.config.max_age_h,
                self.last_error or "no attempt succeeded",
            )
            self._drop(alert_id, "expired")
            return 0.0
        file = Path(path)
        if not file.is_file():
            log.warning(
                "clip upload for alert %s dropped: %s was deleted (retention)", alert_id, file
            )
            self._drop(alert_id, "missing")
            return 0.0
        self._attempt(alert_id, file, content_type, int(attempts))
        return 0.0

    def _attempt(self, alert_id: str, file: Path, content_type: str, attempts: int) -> None:
        try:
            size = file.stat().st_size
            status, reason, retry_after = self._put(alert_id, file, content_type, size)
        except FileNotFoundError:
            return  # deleted just now: the next step sees it gone
        except (OSError, http.client.HTTPException) as exc:
            status, reason, retry_after = 0, f"listener unreachable: {exc}", None
        if 200 <= status < 300:
            self._server_failures = 0
            self._drop(alert_id, "sent")
            log.info("clip of alert %s uploaded: %s (%d bytes)", alert_id, file.name, size)
            return
        what = f"HTTP {status}: {reason}" if status else reason
        self.last_error = what
        self._count("failed_attempts")
        if 400 <= status < 500 and status not in RETRY_STATUS | AUTH_STATUS:
            log.error("clip upload for alert %s rejected, dropped: %s", alert_id, what)
            self._drop(alert_id, "rejected")
            return
        delay = self._backoff(attempts)
        if status == 404:  # this alert is not stored yet; others may be
            log.info(
                "clip upload for alert %s: alert not stored yet, retry in %.1f s", alert_id, delay
            )
        else:
            self._server_failures += 1
            delay = max(self._backoff(self._server_failures - 1), retry_after or 0.0)
            delay = min(delay, self.config.retry_max_s)
            self._hold_until = time.time() + delay
            logger = log.error if status in AUTH_STATUS else log.warning
            logger("clip upload for alert %s failed (%s): retry in %.1f s", alert_id, what, delay)
        self._sql(
            "UPDATE uploads SET attempts = attempts + 1, next_at = ?, last_error = ?"
            " WHERE alert_id = ?",
            (time.time() + delay, what[:500], alert_id),
        )

    def _put(
        self, alert_id: str, file: Path, content_type: str, size: int
    ) -> tuple[int, str, float | None]:
        """One PUT of `file`: (status, reason, Retry-After seconds)."""
        url = self._url
        conn = _connection(url, self.config.timeout_s)
        target = f"{url.path}/api/alerts/{urllib.parse.quote(alert_id, safe='')}/clip"
        try:
            with file.open("rb") as body:
                headers = {
                    "Authorization": f"Bearer {self.token}",
                    "Content-Type": content_type,
                    "Content-Length": str(size),
                }
                conn.request("PUT", target, body=body, headers=headers)
                response = conn.getresponse()
                text = response.read(4096).decode("utf-8", "replace")
            retry = response.getheader("Retry-After", "")
            return response.status, _reason(response.reason, text), _seconds(retry)
        finally:
            conn.close()


def _connection(url: urllib.parse.SplitResult, timeout: float) -> http.client.HTTPConnection:
    kind = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    return kind(url.netloc, timeout=timeout)


def check_listener(config: ListenerConfig, token: str) -> str:
    """`safeguard check`: the listener answers an authenticated request with this token.
    Returns the URL; DeliveryError saying what is wrong otherwise."""
    url = urllib.parse.urlsplit(config.url)
    conn = _connection(url, config.timeout_s)
    try:
        conn.request("GET", f"{url.path}/api/devices", headers={"Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        reason = _reason(response.reason, response.read(4096).decode("utf-8", "replace"))
    except OSError as exc:
        raise DeliveryError(f"cannot reach the listener at {config.url}: {exc}") from None
    finally:
        conn.close()
    if response.status in AUTH_STATUS:
        raise DeliveryError(
            f"the listener at {config.url} refused the api_token (HTTP {response.status}: "
            f"{reason}); set SAFEGUARD_API_TOKEN or $CREDENTIALS_DIRECTORY/api_token to its token"
        )
    if response.status != 200:
        raise DeliveryError(
            f"the listener at {config.url} answered HTTP {response.status} ({reason}): "
            "is this the listener's base URL?"
        )
    return config.url


def _reason(phrase: str, body: str) -> str:
    """The listener's `detail` when the body is FastAPI's JSON error, else the status phrase."""
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        detail = json.loads(body).get("detail")
        if detail:
            return str(detail)[:300]
    return phrase


def _seconds(value: str) -> float | None:
    try:
        return max(0.0, float(value))
    except ValueError:
        return None

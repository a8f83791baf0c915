"""The alert store: SQLite (embedded default) or PostgreSQL (fleet), idempotent by
(device id, alert id)."""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeGuard

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Engine, case, create_engine, event, false, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from listener.models import alerts, clips, devices

log = logging.getLogger(__name__)

STATUSES = ("new", "acknowledged", "resolved")
NOTES_MAX_CHARS = 20_000  # all notes of one alert together, with the `<by>: ` of later ones

# PostgreSQL: the whole batch as one JSON parameter, one fixed statement, one round trip.
_PG_BULK = """
INSERT INTO alerts (id, device_id, event, event_id, category, severity, score,
                    started_at, sent_at, received_at, lat, lon, payload)
SELECT r->'a'->>'id', r->'a'->>'device_id', r->'a'->>'event', r->'a'->>'event_id',
       r->'a'->>'category', r->'a'->>'severity', (r->'a'->>'score')::float8,
       (r->>'s')::timestamptz, (r->>'t')::timestamptz, %(received)s,
       (r->>'lat')::float8, (r->>'lon')::float8, r->'a'
FROM json_array_elements(%(batch)s::json) AS r
ON CONFLICT (device_id, id) DO NOTHING RETURNING device_id, id
"""

Key = tuple[str, str]  # (device_id, id): what identifies one stored alert


# PostgreSQL: a server that stops answering must not hold a thread for ever. libpq's connect
# timeout and TCP keepalives/user timeout end a dead connection; the server ends a statement
# or lock wait that takes too long. What the URL sets itself is kept.
_PG_CONNECT: dict[str, Any] = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 20_000,
    "options": "-c statement_timeout=15000 -c lock_timeout=10000"
    " -c idle_in_transaction_session_timeout=60000",
}
POOL_TIMEOUT_S = 5  # waiting for a pooled connection


class StoreError(Exception):
    """The database cannot be reached or refused an operation."""


class AmbiguousAlert(Exception):
    """An alert id that several devices used; the caller must name the device."""

    def __init__(self, alert_id: str, devices: list[str]) -> None:
        super().__init__(f"alert id {alert_id!r} is used by devices {', '.join(devices)}")
        self.devices = devices


class NotesFull(Exception):
    """A note that would make an alert's notes longer than NOTES_MAX_CHARS."""

    def __init__(self, alert_id: str, length: int) -> None:
        super().__init__(
            f"the notes of alert {alert_id!r} would be longer than {NOTES_MAX_CHARS} characters "
            f"({length} now): nothing was changed"
        )
        self.length = length


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def parse_time(value: str) -> datetime:
    """An RFC 3339 string (as the schema allows) as an aware UTC datetime."""
    text = value.replace("Z", "+00:00").replace("z", "+00:00")
    leap = text[16:19] == ":60"  # a leap second (RFC 3339 5.6): the last instant of its minute
    if leap:
        text = text[:17] + "59" + text[19:]
    parsed = datetime.fromisoformat(text)
    if leap:
        parsed = parsed.replace(microsecond=999_999)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def _iso(value: datetime | None) -> str | None:
    aware = _aware(value)
    return None if aware is None else aware.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class AlertFilter:
    device: str | None = None
    category: str | None = None
    severity: str | None = None
    status: str | None = None
    since: datetime | None = None
    event_id: str | None = None  # the messages of one event: its start and what shares its id
    before: tuple[datetime, str] | None = None  # (received_at, id): older than this message


def engine_url(url: str) -> str:
    """The SQLAlchemy URL for a config URL: psycopg 3 for postgresql://."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def public_url(url: str) -> str:
    """A config URL as messages may show it: without a password (in the URL or its query)."""
    try:
        parsed = make_url(url)
    except ArgumentError:  # not parsable: keep only the scheme and what follows any '@'
        scheme, _, rest = url.partition("://")
        return f"{scheme}://{rest.rpartition('@')[2]}"
    if parsed.host is not None and "@" in parsed.host:  # an unencoded '@' in the password
        scheme, _, rest = url.partition("://")
        authority, slash, path = rest.partition("/")
        user = authority.partition(":")[0].partition("@")[0]
        return f"{scheme}://{user}@{authority.rpartition('@')[2]}{slash}{path}"
    shown = parsed._replace(password=None).difference_update_query(["password"])
    return shown.render_as_string(hide_password=False)


# SQLSTATE classes of a database that cannot take the write now but may soon: connection
# (08), transaction rollback e.g. serialization (40), resources (53), operator intervention
# e.g. shutdown (57), and 25006 (read-only: a replica, failover, default_transaction_read_only)
_TRANSIENT = ("08", "40", "53", "57", "25006")


def is_transient(exc: BaseException) -> bool:
    """An outage to wait out (and retry), not a message the database refuses for good."""
    if isinstance(exc, (OperationalError, PoolTimeout)):
        return True
    sqlstate = getattr(getattr(exc, "orig", None), "sqlstate", None) or ""
    return sqlstate.startswith(_TRANSIENT)


def one_line(exc: BaseException) -> str:
    """The first line of the driver's message (psycopg's span several lines)."""
    reason = getattr(exc, "orig", None) or exc  # a DBAPIError wraps the driver's exception
    lines = str(reason).strip().splitlines() or [type(reason).__name__]
    return lines[0]


def _db_error(url: str, doing: str, exc: Exception) -> StoreError:
    """One line: the URL without its password and the first line of the driver's message."""
    reason = getattr(exc, "orig", None) or exc  # a DBAPIError wraps the driver's exception
    lines = str(reason).strip().splitlines() or [type(reason).__name__]
    return StoreError(f"database.url {public_url(url)}: {doing}{lines[0]}")


class Store:
    """All database access of the listener. Thread-safe (one engine, pooled connections)."""

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            sa_url = make_url(engine_url(url))
        except ArgumentError as exc:
            raise _db_error(url, "", exc) from exc
        if sa_url.get_backend_name() == "sqlite" and sa_url.database not in (None, "", ":memory:"):
            folder = Path(str(sa_url.database)).parent
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"database.url {url}: cannot create {folder}: {exc.strerror}; "
                    "choose a writable path (sqlite:////abs/path.db or sqlite:///rel/path.db)"
                ) from None
        options: dict[str, Any] = {"pool_pre_ping": True}
        if sa_url.get_backend_name() == "postgresql":
            connect = {k: v for k, v in _PG_CONNECT.items() if k not in sa_url.query}
            options.update(connect_args=connect, pool_timeout=POOL_TIMEOUT_S)
        try:
            self.engine: Engine = create_engine(sa_url, **options)
        except (SQLAlchemyError, ImportError) as exc:  # e.g. an unknown or missing driver
            raise _db_error(url, "", exc) from exc
        self.dialect = self.engine.dialect.name
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)

    def migrate(self, wait: bool = False) -> None:
        """Bring the schema to the newest revision (safe to run from several instances).

        With `wait`, a database that cannot be reached yet (booting, in maintenance, across a
        partition) is tried again with backoff until it answers, said once per streak."""
        attempt = 0
        while True:
            try:
                self._migrate()
            except StoreError as exc:
                if not (wait and is_transient(exc.__cause__ or exc)):
                    raise
                attempt += 1
                delay = max(1.0, random.uniform(0, 1.5 ** min(8, attempt)))
                level = logging.WARNING if attempt == 1 else logging.DEBUG
                log.log(level, "%s; trying again until it answers", exc)
                time.sleep(delay)
                continue
            if attempt:
                log.info("the database answers: migrated")
            return

    def _migrate(self) -> None:
        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        try:
            with self.engine.begin() as conn:
                if self.dialect == "postgresql":  # a migration may take long, or wait its turn
                    conn.exec_driver_sql("SET LOCAL statement_timeout = 0")
                    conn.exec_driver_sql("SET LOCAL lock_timeout = 0")
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        except SQLAlchemyError as exc:
            raise _db_error(self.url, "cannot migrate the database: ", exc) from exc

    def close(self) -> None:
        self.engine.dispose()

    def _insert(self, table: Any) -> Any:
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)

    # --- ingest -------------------------------------------------------------------------
    def store_alerts(self, batch: Iterable[dict[str, Any]], received_at: datetime) -> set[Key]:
        """Store valid alerts; the keys that were new (others were already stored)."""
        rows: dict[Key, dict[str, Any]] = {}
        for alert in batch:
            rows.setdefault(key_of(alert), _row(alert, received_at))
        if not rows:
            return set()
        if self.dialect == "postgresql":
            batch = [
                {
                    "a": r["payload"],
                    "s": r["started_at"].isoformat(),
                    "t": r["sent_at"].isoformat(),
                    "lat": r["lat"],
                    "lon": r["lon"],
                }
                for r in rows.values()
            ]
            params = {"batch": json.dumps(batch), "received": received_at}
            with self.engine.begin() as conn:
                new = {(str(r[0]), str(r[1])) for r in conn.exec_driver_sql(_PG_BULK, params)}
                self._inherit_handling(conn, received_at)
                return new
        stmt = (
            self._insert(alerts)
            .on_conflict_do_nothing(index_elements=["device_id", "id"])
            .returning(alerts.c.device_id, alerts.c.id)
        )
        with self.engine.begin() as conn:
            new = {(str(r[0]), str(r[1])) for r in conn.execute(stmt, list(rows.values()))}
            self._inherit_handling(conn, received_at)
            return new

    @staticmethod
    def _inherit_handling(conn: Any, received_at: datetime) -> None:
        """An update or end stored after its event's start was acknowledged or resolved is
        part of a handled event: it takes the start's handling (one statement per batch)."""
        start = alerts.alias("start")
        handled = (
            (start.c.device_id == alerts.c.device_id)
            & (start.c.id == alerts.c.event_id)
            & start.c.acknowledged_at.is_not(None)
        )

        def of_start(name: str) -> Any:
            return select(start.c[name]).where(handled).scalar_subquery()

        names = ("status", "acknowledged_by", "acknowledged_at", "resolved_by", "resolved_at")
        conn.execute(
            update(alerts)
            .where(
                alerts.c.received_at == received_at,
                alerts.c.acknowledged_at.is_(None),
                alerts.c.event_id != alerts.c.id,
                select(start.c.id).where(handled).exists(),
            )
            .values({name: of_start(name) for name in names})
        )

    def check_writable(self) -> None:
        """Raise unless the database answers and accepts writes (a write that changes nothing:
        a read-only server or file refuses it all the same)."""
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                conn.exec_driver_sql("SET LOCAL statement_timeout = 2000")
            conn.execute(update(devices).where(false()).values(status=None))

    def device_message(self, device_id: str, kind: str, value: Any, retained: bool) -> bool:
        """Keep a device's last `status` or `health`; False when nothing changed.

        A retained message is the broker's copy of an older one (sent again on every
        (re)connect): what is already stored keeps its time, and a retained value that differs
        from the stored one gets no time (it changed while this listener was not looking).
        """
        at: datetime | None = utcnow()
        if retained:
            column = devices.c[kind]
            with self.engine.connect() as conn:
                row = conn.execute(select(column).where(devices.c.device_id == device_id)).first()
            if row is not None and row[0] is not None:
                if row[0] == value:
                    return False
                at = None
        self.set_device(device_id, **{kind: value, f"{kind}_at": at})
        return True

    def set_device(self, device_id: str, **fields: Any) -> None:
        """Upsert a device's last status (`status`, `status_at`) or health (`health`, ...)."""
        stmt = self._insert(devices).values(device_id=device_id, **fields)
        stmt = stmt.on_conflict_do_update(index_elements=["device_id"], set_=fields)
        with self.engine.begin() as conn:
            conn.execute(stmt)

    # --- queries ------------------------------------------------------------------------
    def _select(self) -> Any:
        has_clip = (
            select(clips.c.alert_id)
            .where(clips.c.alert_id == alerts.c.id, clips.c.device_id == alerts.c.device_id)
            .exists()
        )
        return select(alerts, has_clip.label("has_clip"))

    def find(self, conn: Any, alert_id: str, device: str | None) -> Key | None:
        """The key of the alert `alert_id` (of `device`, when given); AmbiguousAlert when
        several devices used that id and no device is named."""
        query = select(alerts.c.device_id).where(alerts.c.id == alert_id)
        if device is not None:
            query = query.where(alerts.c.device_id == device)
        found = [str(r[0]) for r in conn.execute(query.order_by(alerts.c.device_id).limit(5))]
        if len(found) > 1:
            raise AmbiguousAlert(alert_id, found)
        return (found[0], alert_id) if found else None

    def list_alerts(self, where: AlertFilter, limit: int, offset: int) -> list[dict[str, Any]]:
        query = self._select()
        for column, value in (
            (alerts.c.device_id, where.device),
            (alerts.c.category, where.category),
            (alerts.c.severity, where.severity),
            (alerts.c.status, where.status),
        ):
            if value is not None:
                query = query.where(column == value)
        if where.since is not None:
            query = query.where(alerts.c.received_at >= where.since.astimezone(timezone.utc))
        if where.event_id is not None:
            query = query.where(
                (alerts.c.id == where.event_id) | (alerts.c.event_id == where.event_id)
            )
        if where.before is not None:  # keyset paging: the order below, after this message
            at, before_id = where.before[0].astimezone(timezone.utc), where.before[1]
            query = query.where(
                (alerts.c.received_at < at)
                | ((alerts.c.received_at == at) & (alerts.c.id < before_id))
            )
        query = query.order_by(alerts.c.received_at.desc(), alerts.c.id.desc())
        with self.engine.connect() as conn:
            rows = conn.execute(query.limit(limit).offset(offset)).mappings().all()
        return [_to_api(r) for r in rows]

    def get_alert(self, alert_id: str, device: str | None = None) -> dict[str, Any] | None:
        """One alert (AmbiguousAlert: several devices used `alert_id`, name the device)."""
        query = self._select().where(alerts.c.id == alert_id)
        if device is not None:
            query = query.where(alerts.c.device_id == device)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(alerts.c.device_id).limit(5)).mappings().all()
        if len(rows) > 1:
            raise AmbiguousAlert(alert_id, [str(r["device_id"]) for r in rows])
        return _to_api(rows[0]) if rows else None

    def summary(self) -> dict[str, int]:
        """What still needs a person: unacknowledged messages, and events (a start with its
        updates and end, or a message without an event) none of whose messages is handled."""
        event = func.coalesce(alerts.c.event_id, alerts.c.id)
        other = alerts.alias("other")
        handled = (
            select(other.c.id)
            .where(
                other.c.device_id == alerts.c.device_id,
                (other.c.id == event) | (other.c.event_id == event),
                other.c.status != "new",
            )
            .exists()
        )
        worst = func.max(case((alerts.c.severity == "critical", 1), else_=0))
        events = (
            select(worst.label("critical"))
            .where(alerts.c.status == "new", ~handled)
            .group_by(alerts.c.device_id, event)
            .subquery()
        )
        with self.engine.connect() as conn:
            new = conn.execute(
                select(func.count()).select_from(alerts).where(alerts.c.status == "new")
            ).scalar_one()
            row = conn.execute(
                select(func.count(), func.coalesce(func.sum(events.c.critical), 0))
            ).one()
        return {
            "new_alerts": int(new),
            "new_events": int(row[0]),
            "new_critical_events": int(row[1]),
        }

    def count_alerts(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(alerts)).scalar_one())

    def mark(
        self, alert_id: str, device: str | None, action: str, by: str, note: str | None
    ) -> list[dict[str, Any]]:
        """Acknowledge or resolve an alert, and with it every message of its event (start,
        updates, end share `event_id`); resolving also acknowledges. The alert itself first,
        then the other rows of its event; [] if unknown. The first acknowledgement is kept; a
        note goes on the alert itself, and a later one is appended as a line `<by>: <note>`;
        NotesFull (and nothing changed) if that would make the notes longer than
        NOTES_MAX_CHARS."""
        now = utcnow()
        with self.engine.begin() as conn:
            key = self.find(conn, alert_id, device)
            if key is None:
                return []
            this = (alerts.c.device_id == key[0]) & (alerts.c.id == alert_id)
            if note is not None:  # a later note is added on its own line, with who wrote it
                line = f"\n{by}: {note}"
                added = case((alerts.c.note.is_(None), note), else_=alerts.c.note + line)
                length = case(
                    (alerts.c.note.is_(None), len(note)),
                    else_=func.length(alerts.c.note) + len(line),
                )
                # the check and the append are one statement: concurrent notes cannot pass it
                result = conn.execute(
                    update(alerts).where(this, length <= NOTES_MAX_CHARS).values(note=added)
                )
                if result.rowcount == 0:  # the transaction is rolled back: nothing changes
                    now_length = conn.execute(
                        select(func.coalesce(func.length(alerts.c.note), 0)).where(this)
                    ).scalar_one()
                    raise NotesFull(alert_id, int(now_length))
            event = conn.execute(select(alerts.c.event_id).where(this)).scalar() or alert_id
            same = (alerts.c.device_id == key[0]) & (
                (alerts.c.id == event) | (alerts.c.event_id == event)
            )
            unseen = same & alerts.c.acknowledged_at.is_(None)  # one statement: no race
            seen: dict[str, Any] = {"acknowledged_by": by, "acknowledged_at": now}
            if action == "resolve":
                conn.execute(update(alerts).where(unseen).values(**seen))
                done = {"resolved_by": by, "resolved_at": now, "status": "resolved"}
                conn.execute(
                    update(alerts).where(same & alerts.c.resolved_at.is_(None)).values(**done)
                )
            else:
                conn.execute(update(alerts).where(unseen).values(**seen, status="acknowledged"))
            rows = conn.execute(self._select().where(same)).mappings().all()
        out = [_to_api(r) for r in rows]
        out.sort(key=lambda a: a["id"] != alert_id)
        return out

    def get_device(self, device_id: str) -> dict[str, Any] | None:
        """A device's last status and health (one row, no alert counts)."""
        with self.engine.connect() as conn:
            row = conn.execute(select(devices).where(devices.c.device_id == device_id)).first()
        if row is None:
            return None
        found = row._mapping
        return {
            "device_id": device_id,
            "status": found["status"],
            "status_at": _iso(found["status_at"]),
            "health": found["health"],
            "health_at": _iso(found["health_at"]),
        }

    def list_devices(self) -> list[dict[str, Any]]:
        last = (
            select(
                alerts.c.device_id,
                func.max(alerts.c.received_at).label("last_alert_at"),
                func.count().label("alerts"),
            )
            .group_by(alerts.c.device_id)
            .subquery()
        )
        with self.engine.connect() as conn:
            known = {r.device_id: dict(r._mapping) for r in conn.execute(select(devices))}
            counts = {r.device_id: r for r in conn.execute(select(last))}
        out = []
        for device_id in sorted(set(known) | set(counts)):
            row = known.get(device_id, {})
            tally = counts.get(device_id)
            out.append(
                {
                    "device_id": device_id,
                    "status": row.get("status"),
                    "status_at": _iso(row.get("status_at")),
                    "health": row.get("health"),
                    "health_at": _iso(row.get("health_at")),
                    "last_alert_at": _iso(tally.last_alert_at) if tally else None,
                    "alerts": int(tally.alerts) if tally else 0,
                }
            )
        return out

    # --- clips --------------------------------------------------------------------------
    def put_clip(
        self, alert_id: str, device: str | None, content_type: str, data: bytes
    ) -> Key | None:
        """Store (or replace) an alert's clip; its key, or None if the alert is unknown."""
        values = {"content_type": content_type, "size": len(data), "uploaded_at": utcnow()}
        with self.engine.begin() as conn:
            key = self.find(conn, alert_id, device)
            if key is None:
                return None
            stmt = self._insert(clips).values(
                device_id=key[0], alert_id=alert_id, data=data, **values
            )
            stmt = stmt.on_conflict_do_update(
                index_elements=["device_id", "alert_id"], set_={**values, "data": data}
            )
            conn.execute(stmt)
        return key

    def get_clip(self, alert_id: str, device: str | None = None) -> tuple[str, bytes] | None:
        with self.engine.connect() as conn:
            key = self.find(conn, alert_id, device)
            if key is None:
                return None
            row = conn.execute(
                select(clips.c.content_type, clips.c.data).where(
                    clips.c.device_id == key[0], clips.c.alert_id == alert_id
                )
            ).first()
        return None if row is None else (str(row[0]), bytes(row[1]))


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")  # WAL + NORMAL: a commit is not on disk yet
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def key_of(alert: dict[str, Any]) -> Key:
    return (str(alert["device_id"]), str(alert["id"]))


def _row(alert: dict[str, Any], received_at: datetime) -> dict[str, Any]:
    location = alert.get("location")
    lat = lon = None
    if isinstance(location, dict):
        raw_lat, raw_lon = location.get("lat"), location.get("lon")
        if _is_coord(raw_lat, 90) and _is_coord(raw_lon, 180):
            lat, lon = float(raw_lat), float(raw_lon)
    return {
        "id": alert["id"],
        "device_id": alert["device_id"],
        "event": alert["event"],
        "event_id": alert.get("event_id"),
        "category": alert["category"],
        "severity": alert["severity"],
        "score": float(alert["score"]),
        "started_at": parse_time(alert["started_at"]),
        "sent_at": parse_time(alert["sent_at"]),
        "received_at": received_at,
        "lat": lat,
        "lon": lon,
        "payload": alert,
    }


def _is_coord(value: object, bound: float) -> TypeGuard[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return -bound <= value <= bound


def _to_api(row: Any) -> dict[str, Any]:
    out = dict(row["payload"])
    out["listener"] = {
        "status": row["status"],
        "received_at": _iso(row["received_at"]),
        "acknowledged_by": row["acknowledged_by"],
        "acknowledged_at": _iso(row["acknowledged_at"]),
        "resolved_by": row["resolved_by"],
        "resolved_at": _iso(row["resolved_at"]),
        "note": row["note"],
        "has_clip": bool(row["has_clip"]),
        "lat": row["lat"],
        "lon": row["lon"],
    }
    return out


def fresh_alert(alert: dict[str, Any], received_at: datetime) -> dict[str, Any]:
    """The API form of an alert just stored (no database round trip)."""
    row = {**_row(alert, received_at), "acknowledged_by": None, "acknowledged_at": None}
    row.update(status="new", resolved_by=None, resolved_at=None, note=None, has_clip=False)
    return _to_api(row)

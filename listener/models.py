"""The listener's tables. Alembic migrations in `listener/migrations` create and evolve them."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Float,
    Index,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

metadata = MetaData()

# One row per alert message: (device_id, id) is the idempotency key (an id is unique per
# message of one producer; two producers may use the same id). `payload` is the message.
alerts = Table(
    "alerts",
    metadata,
    Column("id", String(64), nullable=False),
    Column("device_id", String(64), nullable=False),
    Column("event", String(16), nullable=False),
    Column("event_id", String(64), nullable=True),
    Column("category", String(64), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("score", Float, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("sent_at", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("lat", Float, nullable=True),
    Column("lon", Float, nullable=True),
    Column("payload", JSON, nullable=False),
    Column("status", String(16), nullable=False, server_default="new"),
    Column("acknowledged_by", String(128), nullable=True),
    Column("acknowledged_at", DateTime(timezone=True), nullable=True),
    Column("resolved_by", String(128), nullable=True),
    Column("resolved_at", DateTime(timezone=True), nullable=True),
    Column("note", Text, nullable=True),
    PrimaryKeyConstraint("device_id", "id"),
    Index("ix_alerts_id", "id"),
    Index("ix_alerts_event", "device_id", "event_id"),
    Index("ix_alerts_received", "received_at", "id"),
    Index("ix_alerts_device_received", "device_id", "received_at"),
    Index("ix_alerts_category", "category"),
    Index("ix_alerts_status", "status"),
)

# Last retained status and health per device, as seen on <prefix>/<device>/status|health.
devices = Table(
    "devices",
    metadata,
    Column("device_id", String(64), primary_key=True),
    Column("status", String(16), nullable=True),
    Column("status_at", DateTime(timezone=True), nullable=True),
    Column("health", JSON, nullable=True),
    Column("health_at", DateTime(timezone=True), nullable=True),
)

# Evidence clips uploaded by devices, kept in the database so every instance can serve them.
clips = Table(
    "clips",
    metadata,
    Column("device_id", String(64), primary_key=True),
    Column("alert_id", String(64), primary_key=True),
    Column("content_type", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("uploaded_at", DateTime(timezone=True), nullable=False),
    Column("data", LargeBinary, nullable=False),
)

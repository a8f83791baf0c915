"""Alerts, devices and clips.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("event", sa.String(16), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=True),
        sa.Column("category", sa.String(64), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("started_at", _TS, nullable=False),
        sa.Column("sent_at", _TS, nullable=False),
        sa.Column("received_at", _TS, nullable=False),
        sa.Column("lat", sa.Float, nullable=True),
        sa.Column("lon", sa.Float, nullable=True),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="new"),
        sa.Column("acknowledged_by", sa.String(128), nullable=True),
        sa.Column("acknowledged_at", _TS, nullable=True),
        sa.Column("resolved_by", sa.String(128), nullable=True),
        sa.Column("resolved_at", _TS, nullable=True),
        sa.Column("note", sa.Text, nullable=True),
    )
    op.create_index("ix_alerts_received", "alerts", ["received_at", "id"])
    op.create_index("ix_alerts_device_received", "alerts", ["device_id", "received_at"])
    op.create_index("ix_alerts_category", "alerts", ["category"])
    op.create_index("ix_alerts_status", "alerts", ["status"])
    op.create_table(
        "devices",
        sa.Column("device_id", sa.String(64), primary_key=True),
        sa.Column("status", sa.String(16), nullable=True),
        sa.Column("status_at", _TS, nullable=True),
        sa.Column("health", sa.JSON, nullable=True),
        sa.Column("health_at", _TS, nullable=True),
    )
    op.create_table(
        "clips",
        sa.Column("alert_id", sa.String(64), primary_key=True),
        sa.Column("content_type", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("uploaded_at", _TS, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("clips")
    op.drop_table("devices")
    op.drop_index("ix_alerts_status", "alerts")
    op.drop_index("ix_alerts_category", "alerts")
    op.drop_index("ix_alerts_device_received", "alerts")
    op.drop_index("ix_alerts_received", "alerts")
    op.drop_table("alerts")

"""Alert ids are unique per device: key alerts and clips by (device_id, id).

Two producers may both number their alerts `evt-0001`; keyed by `id` alone, the second was
taken for a resend of the first, dropped, and acked as stored.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import warnings

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _primary_key(table: str, columns: list[str]) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint(f"{table}_pkey", table, type_="primary")
        op.create_primary_key(f"{table}_pkey", table, columns)
        return
    with warnings.catch_warnings():  # SQLite: the copied table's old key, replaced here
        warnings.filterwarnings("ignore", "Table '_alembic_tmp_", sa.exc.SAWarning)
        with op.batch_alter_table(table, recreate="always") as batch:
            batch.create_primary_key(f"pk_{table}", columns)


def upgrade() -> None:
    _primary_key("alerts", ["device_id", "id"])
    op.create_index("ix_alerts_id", "alerts", ["id"])
    op.create_index("ix_alerts_event", "alerts", ["device_id", "event_id"])
    with op.batch_alter_table("clips") as batch:
        batch.add_column(sa.Column("device_id", sa.String(64), nullable=True))
    op.execute(
        "UPDATE clips SET device_id = "
        "(SELECT alerts.device_id FROM alerts WHERE alerts.id = clips.alert_id)"
    )
    op.execute("DELETE FROM clips WHERE device_id IS NULL")  # a clip of no alert: unreachable
    with op.batch_alter_table("clips") as batch:
        batch.alter_column("device_id", existing_type=sa.String(64), nullable=False)
    _primary_key("clips", ["device_id", "alert_id"])


def downgrade() -> None:
    raise NotImplementedError("ids may no longer be unique across devices")

"""rollups, checkpoints, handler runs, events.txid

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 23:07:32.210662
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from worker.db.types import IdentityString, UtcDateTime

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "checkpoints",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column(
            "position",
            sa.BigInteger(),
            nullable=False,
            comment="seq high-water mark, or a PostgreSQL xid8 horizon",
        ),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_checkpoints")),
    )
    op.create_table(
        "rollups",
        sa.Column("bucket_seconds", sa.SmallInteger(), nullable=False, comment="60 or 3600"),
        sa.Column("bucket_start", UtcDateTime(), nullable=False),
        sa.Column(
            "series",
            sa.String(length=32),
            nullable=False,
            comment="hash of (type, source): the pair is too long to be a key on MySQL",
        ),
        sa.Column("type", sa.String(length=255), nullable=False),
        sa.Column("source", IdentityString(length=512), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("bucket_seconds", "bucket_start", "series", name=op.f("pk_rollups")),
    )
    with op.batch_alter_table("rollups", schema=None) as batch_op:
        batch_op.create_index("ix_rollups_bucket_start", ["bucket_start"], unique=False)

    op.create_table(
        "handler_runs",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("event_seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("handler", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False, comment="pending, done or failed"),
        sa.Column("tries", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["event_seq"], ["events.seq"], name=op.f("fk_handler_runs_event_seq_events"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_handler_runs")),
        sa.UniqueConstraint("event_seq", "handler", name="uq_handler_runs_event_seq_handler"),
    )
    with op.batch_alter_table("handler_runs", schema=None) as batch_op:
        batch_op.create_index("ix_handler_runs_status", ["status"], unique=False)

    # On PostgreSQL every row records the transaction that inserted it. The rollup checkpoint is a
    # transaction horizon, not a seq: a seq is taken at insert but becomes visible at commit, so
    # rows can appear out of seq order; a transaction below the snapshot's xmin can add nothing more.
    txid_default = (
        sa.text("(pg_current_xact_id()::text)::bigint")
        if op.get_bind().dialect.name == "postgresql"
        else None
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "txid",
                sa.BigInteger(),
                nullable=True,
                server_default=txid_default,
                comment="PostgreSQL: inserting transaction id (xid8), set by the server; rollup checkpoints",
            )
        )
        batch_op.create_index("ix_events_txid", ["txid"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_txid")
        batch_op.drop_column("txid")

    with op.batch_alter_table("handler_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_handler_runs_status")

    op.drop_table("handler_runs")
    with op.batch_alter_table("rollups", schema=None) as batch_op:
        batch_op.drop_index("ix_rollups_bucket_start")

    op.drop_table("rollups")
    op.drop_table("checkpoints")

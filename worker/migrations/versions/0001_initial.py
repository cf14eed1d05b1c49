"""events, dead letters, failed jobs

Revision ID: 0001
Revises:
Create Date: 2026-11-24 22:48:38.562237
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql, postgresql

from worker.db.types import IdentityString, UtcDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dead_letters",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column(
            "errors",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("raw", sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql"), nullable=False),
        sa.Column("source", sa.String(length=512), nullable=True),
        sa.Column("event_id", sa.String(length=255), nullable=True),
        sa.Column("job_id", sa.String(length=64), nullable=True),
        sa.Column("job_name", sa.String(length=128), nullable=True),
        sa.Column("position", sa.Integer(), nullable=False, comment="index of the input in its job's list"),
        sa.Column("digest", sa.String(length=64), nullable=False, comment="sha256 of raw, hex"),
        sa.Column(
            "received_at",
            UtcDateTime(),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_letters")),
    )
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.create_index("ix_dead_letters_received_at", ["received_at"], unique=False)
        batch_op.create_index(
            "uq_dead_letters_job_id_position_digest", ["job_id", "position", "digest"], unique=True
        )

    op.create_table(
        "events",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("source", IdentityString(length=512), nullable=False),
        sa.Column("event_id", IdentityString(length=255), nullable=False),
        sa.Column("type", sa.String(length=255), nullable=False),
        sa.Column("specversion", sa.String(length=8), nullable=False),
        sa.Column("time", UtcDateTime(), nullable=True),
        sa.Column("subject", sa.String(length=1024), nullable=True),
        sa.Column("datacontenttype", sa.Text(), nullable=True),
        sa.Column("dataschema", sa.Text(), nullable=True),
        sa.Column(
            "data",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("data_base64", sa.Text(), nullable=True),
        sa.Column(
            "extensions",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "received_at",
            UtcDateTime(),
            nullable=False,
        ),
        sa.Column("job_id", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_events")),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index("ix_events_received_at", ["received_at"], unique=False)
        batch_op.create_index("ix_events_type_time", ["type", "time"], unique=False)
        batch_op.create_index("uq_events_source_event_id", ["source", "event_id"], unique=True)

    op.create_table(
        "failed_jobs",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("job_id", sa.String(length=64), nullable=False),
        sa.Column("job_name", sa.String(length=128), nullable=False),
        sa.Column("args", sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql"), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("tries", sa.Integer(), nullable=False),
        sa.Column(
            "failed_at",
            UtcDateTime(),
            nullable=False,
        ),
        sa.Column(
            "requeued_at",
            UtcDateTime(),
            nullable=True,
        ),
        sa.Column("requeued_job_id", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_failed_jobs")),
    )
    with op.batch_alter_table("failed_jobs", schema=None) as batch_op:
        batch_op.create_index("ix_failed_jobs_failed_at", ["failed_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("failed_jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_failed_jobs_failed_at")

    op.drop_table("failed_jobs")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("uq_events_source_event_id")
        batch_op.drop_index("ix_events_type_time")
        batch_op.drop_index("ix_events_received_at")

    op.drop_table("events")
    with op.batch_alter_table("dead_letters", schema=None) as batch_op:
        batch_op.drop_index("uq_dead_letters_job_id_position_digest")
        batch_op.drop_index("ix_dead_letters_received_at")

    op.drop_table("dead_letters")

"""Tables, as SQLAlchemy 2 typed declarative models.

``events`` holds each event once by identity ``(source, event_id)`` and numbers
them with ``seq`` (a bigint identity) for ordering and checkpoints.
``dead_letters`` keeps every input that was not a storable event, byte for byte.
``failed_jobs`` keeps jobs that used their last try, so they can be re-driven.
Timestamps are always written by the worker in UTC (no server defaults: they differ per
database). Relationships are ``lazy="raise"``: loading is always explicit, in the statement that
needs the related row (``HandlerRun.event``: ``selectinload`` in ``handler_sql.claim_run``). Only
relationships the code reads are declared: dead letters and failed jobs name their job by id,
with no row to link to.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from worker.constants import MAX_ID_LENGTH, MAX_SOURCE_LENGTH, MAX_SUBJECT_LENGTH, MAX_TYPE_LENGTH
from worker.db.types import IdentityString, SqliteJson, UtcDateTime

#: SQLite only auto-increments an INTEGER PRIMARY KEY; elsewhere a 64-bit identity.
BigId = BigInteger().with_variant(Integer(), "sqlite")
#: JSONB on PostgreSQL (indexable, compact); JSON elsewhere (on SQLite keeping a bare number's text:
#: :class:`~worker.db.types.SqliteJson`). Python None is SQL NULL, not JSON null.
Json = (
    JSON(none_as_null=True)
    .with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
    .with_variant(SqliteJson(none_as_null=True), "sqlite")
)
#: Raw bytes of any size: bytea, LONGBLOB, BLOB.
Blob = LargeBinary().with_variant(mysql.LONGBLOB(), "mysql")

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "pk": "pk_%(table_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base with constraint names that are the same on every database."""

    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: Json, datetime: UtcDateTime()}  # noqa: RUF012 (SQLAlchemy reads it)


class Event(Base):
    """A stored event: one row per (source, event_id)."""

    __tablename__ = "events"
    __table_args__ = (
        Index("uq_events_source_event_id", "source", "event_id", unique=True),
        Index("ix_events_type_time", "type", "time"),
        Index("ix_events_received_at", "received_at"),
        Index("ix_events_txid", "txid"),
    )

    seq: Mapped[int] = mapped_column(BigId, Identity(), primary_key=True)
    source: Mapped[str] = mapped_column(IdentityString(MAX_SOURCE_LENGTH))
    event_id: Mapped[str] = mapped_column(IdentityString(MAX_ID_LENGTH))
    type: Mapped[str] = mapped_column(String(MAX_TYPE_LENGTH))
    specversion: Mapped[str] = mapped_column(String(8))
    time: Mapped[datetime | None]
    subject: Mapped[str | None] = mapped_column(String(MAX_SUBJECT_LENGTH))
    datacontenttype: Mapped[str | None] = mapped_column(Text)
    dataschema: Mapped[str | None] = mapped_column(Text)
    data: Mapped[Any] = mapped_column(Json, nullable=True)
    data_base64: Mapped[str | None] = mapped_column(Text)
    extensions: Mapped[dict[str, Any] | None]
    received_at: Mapped[datetime]
    job_id: Mapped[str | None] = mapped_column(String(64))
    txid: Mapped[int | None] = mapped_column(
        BigInteger,
        comment="PostgreSQL: inserting transaction id (xid8), set by the server; rollup checkpoints",
    )


class DeadLetter(Base):
    """An input that is not a storable event (or a job that is not ours), kept for inspection."""

    __tablename__ = "dead_letters"
    __table_args__ = (
        Index("ix_dead_letters_received_at", "received_at"),
        # A job re-run after a crash must not keep the same bad input twice.
        Index("uq_dead_letters_job_id_position_digest", "job_id", "position", "digest", unique=True),
    )

    id: Mapped[int] = mapped_column(BigId, Identity(), primary_key=True)
    reason: Mapped[str] = mapped_column(String(32))
    errors: Mapped[Any] = mapped_column(Json)
    raw: Mapped[bytes] = mapped_column(Blob)
    source: Mapped[str | None] = mapped_column(String(MAX_SOURCE_LENGTH))
    event_id: Mapped[str | None] = mapped_column(String(MAX_ID_LENGTH))
    job_id: Mapped[str | None] = mapped_column(String(64))
    job_name: Mapped[str | None] = mapped_column(String(128))
    position: Mapped[int] = mapped_column(comment="index of the input in its job's list")
    digest: Mapped[str] = mapped_column(String(64), comment="sha256 of raw, hex")
    received_at: Mapped[datetime]


class FailedJob(Base):
    """A job that used its last try: its arguments and error, until re-enqueued."""

    __tablename__ = "failed_jobs"
    __table_args__ = (Index("ix_failed_jobs_failed_at", "failed_at"),)

    id: Mapped[int] = mapped_column(BigId, Identity(), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(64))
    job_name: Mapped[str] = mapped_column(String(128))
    args: Mapped[bytes] = mapped_column(Blob)
    error: Mapped[str] = mapped_column(Text)
    tries: Mapped[int]
    failed_at: Mapped[datetime]
    requeued_at: Mapped[datetime | None]
    requeued_job_id: Mapped[str | None] = mapped_column(String(64))


class Rollup(Base):
    """Event counts per (type, source) in one minute or one hour bucket of event time."""

    __tablename__ = "rollups"
    __table_args__ = (Index("ix_rollups_bucket_start", "bucket_start"),)

    bucket_seconds: Mapped[int] = mapped_column(SmallInteger, primary_key=True, comment="60 or 3600")
    bucket_start: Mapped[datetime] = mapped_column(primary_key=True)
    series: Mapped[str] = mapped_column(
        String(32),
        primary_key=True,
        comment="hash of (type, source): the pair is too long to be a key on MySQL",
    )
    type: Mapped[str] = mapped_column(String(MAX_TYPE_LENGTH))
    source: Mapped[str] = mapped_column(IdentityString(MAX_SOURCE_LENGTH))
    count: Mapped[int] = mapped_column(BigInteger)


class Checkpoint(Base):
    """How far an incremental job has read the events table."""

    __tablename__ = "checkpoints"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[int] = mapped_column(
        BigInteger, comment="seq high-water mark, or a PostgreSQL xid8 horizon"
    )
    updated_at: Mapped[datetime]


class HandlerRun(Base):
    """One registered handler's run for one stored event (the outbox for event handlers)."""

    __tablename__ = "handler_runs"
    __table_args__ = (
        UniqueConstraint("event_seq", "handler", name="uq_handler_runs_event_seq_handler"),
        Index("ix_handler_runs_status", "status"),
    )

    id: Mapped[int] = mapped_column(BigId, Identity(), primary_key=True)
    event_seq: Mapped[int] = mapped_column(BigId, ForeignKey("events.seq", ondelete="CASCADE"))
    handler: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), comment="pending, done or failed")
    tries: Mapped[int] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    #: Never loads by itself: touching it unloaded raises (see handler_sql.claim_run for the loading).
    event: Mapped[Event] = relationship(lazy="raise")

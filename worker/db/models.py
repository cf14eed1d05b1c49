"""Tables, as SQLAlchemy 2 typed declarative models.

``events`` holds each event once by identity ``(source, event_id)`` and numbers
them with ``seq`` (a bigint identity) for ordering and checkpoints.
``dead_letters`` keeps every input that was not a storable event, byte for byte.
``failed_jobs`` keeps jobs that used their last try, so they can be re-driven.
Timestamps are always written by the worker in UTC (no server defaults: they differ per
database). Relationships, where added, are ``lazy="raise"``: loading is always explicit.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
)
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from worker.constants import MAX_ID_LENGTH, MAX_SOURCE_LENGTH, MAX_SUBJECT_LENGTH, MAX_TYPE_LENGTH
from worker.db.types import IdentityString, UtcDateTime

#: SQLite only auto-increments an INTEGER PRIMARY KEY; elsewhere a 64-bit identity.
BigId = BigInteger().with_variant(Integer(), "sqlite")
#: JSONB on PostgreSQL (indexable, compact); JSON elsewhere.
Json = JSON().with_variant(postgresql.JSONB(), "postgresql")
#: Raw bytes of any size: bytea, LONGBLOB, BLOB.
Blob = LargeBinary().with_variant(mysql.LONGBLOB(), "mysql")

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "pk": "pk_%(table_name)s",
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

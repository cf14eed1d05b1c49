"""The reads behind ``eventworker status``, the dashboard and the worker's sampled metrics.

All of them are plain SELECTs over indexed columns, cheap enough to run every few seconds;
each caller runs them in a short transaction of its own. Counting the events past the
rollup checkpoint stops at :data:`LAG_CAP` rows, so a huge backlog costs no more than that.

Rollup lag: the checkpoint (:mod:`worker.db.sql.rollup_sql`) is a transaction-id horizon on
PostgreSQL (events with ``txid >= position`` are not counted yet, but for the part of a large
transaction already counted, up to the ``seq`` of a second row) and a ``seq`` high-water mark
elsewhere (``seq > position``). On MySQL/MariaDB rollups wait ``rollup_settle_seconds``
before counting an event, so the lag there never drops below the events of that window.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final

from sqlalchemy import ColumnElement, Select, and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from worker.db.dialect import dialect_name
from worker.db.models import Checkpoint, DeadLetter, Event, FailedJob, HandlerRun, Rollup

#: The rollups' checkpoint row (see :data:`worker.db.sql.rollup_sql.CHECKPOINT`).
ROLLUP_CHECKPOINT: Final = "rollups"
#: Its second row (:data:`worker.db.sql.rollup_sql.CHECKPOINT_SEQ`): the seq counted in ``position``.
ROLLUP_CHECKPOINT_SEQ: Final = "rollups.seq"
#: Events past the checkpoint are counted up to this many.
LAG_CAP: Final = 1_000_000
#: Handler run states worth showing: those still to do and those out of tries.
HANDLER_STATES: Final = ("pending", "failed")


@dataclass(frozen=True, slots=True)
class RollupLag:
    """Where the rollups' checkpoint is, and how many stored events are past it."""

    position: int | None
    """None when rollups never ran (every event is past the start)."""
    updated_at: datetime | None
    events: int
    """Events past the checkpoint (waiting to be counted), at most :data:`LAG_CAP`."""
    last_counted_at: datetime | None = None
    """When the newest event the checkpoint covers was received: how far the rollups have got, in time
    (None when nothing is counted yet, the event was deleted since, or :func:`rollup_lag` did not look)."""

    @property
    def capped(self) -> bool:
        return self.events >= LAG_CAP


def _past(dialect: str, position: int, seq: int) -> ColumnElement[bool]:
    if dialect != "postgresql":
        return Event.seq > position
    if seq:  # a large transaction counted in part, up to seq
        return or_(Event.txid > position, and_(Event.txid == position, Event.seq > seq))
    return Event.txid >= position


async def rollup_lag(session: AsyncSession) -> RollupLag:
    """The rollups checkpoint and the number of events it has not counted yet."""
    return (await _rollup_lag(session))[0]


async def _rollup_lag(session: AsyncSession) -> tuple[RollupLag, int]:
    """:func:`rollup_lag`, and the seq counted in the checkpoint's transaction (PostgreSQL; else 0)."""
    rows = await session.execute(
        select(Checkpoint.name, Checkpoint.position, Checkpoint.updated_at).where(
            Checkpoint.name.in_((ROLLUP_CHECKPOINT, ROLLUP_CHECKPOINT_SEQ))
        )
    )
    found = {str(name): (int(at), updated) for name, at, updated in rows}
    position, updated_at = found.get(ROLLUP_CHECKPOINT, (None, None))
    seq = found.get(ROLLUP_CHECKPOINT_SEQ, (0, None))[0]
    dialect = dialect_name(session)
    past = select(Event.seq).where(_past(dialect, position or 0, seq)).limit(LAG_CAP).subquery()
    events = await session.scalar(select(func.count()).select_from(past))
    return RollupLag(position, updated_at, int(events or 0)), seq


def _covered_last(dialect: str, position: int, seq: int) -> Select[Any]:
    """The receipt time of the newest event the checkpoint covers, along an index (txid, or seq)."""
    if dialect == "postgresql" and seq:
        newest = (
            select(Event.received_at)
            .where(Event.txid == position, Event.seq <= seq)
            .order_by(Event.seq.desc())
        )
    elif dialect == "postgresql":
        newest = select(Event.received_at).where(Event.txid < position).order_by(Event.txid.desc())
    else:
        newest = select(Event.received_at).where(Event.seq <= position).order_by(Event.seq.desc())
    return newest.limit(1)


async def rollup_progress(session: AsyncSession) -> RollupLag:
    """:func:`rollup_lag`, with when the last event counted was received: what ``status`` shows."""
    lag, seq = await _rollup_lag(session)
    if not lag.position:
        return lag
    last = await session.scalar(_covered_last(dialect_name(session), lag.position, seq))
    return replace(lag, last_counted_at=last)


async def failed_job_counts(session: AsyncSession) -> dict[str, int]:
    """Failed jobs not re-enqueued yet, by job name."""
    rows = await session.execute(
        select(FailedJob.job_name, func.count())
        .where(FailedJob.requeued_at.is_(None))
        .group_by(FailedJob.job_name)
    )
    return {str(name): int(n) for name, n in rows}


async def recent_failed_jobs(session: AsyncSession, limit: int) -> list[FailedJob]:
    """The newest failed jobs not re-enqueued yet."""
    statement = (
        select(FailedJob).where(FailedJob.requeued_at.is_(None)).order_by(FailedJob.id.desc()).limit(limit)
    )
    return list((await session.scalars(statement)).all())


async def dead_letter_counts(session: AsyncSession) -> dict[str, int]:
    """Dead letters kept, by reason."""
    rows = await session.execute(select(DeadLetter.reason, func.count()).group_by(DeadLetter.reason))
    return {str(reason): int(n) for reason, n in rows}


async def recent_dead_letters(session: AsyncSession, limit: int) -> list[DeadLetter]:
    """The newest dead letters."""
    statement = select(DeadLetter).order_by(DeadLetter.id.desc()).limit(limit)
    return list((await session.scalars(statement)).all())


async def handler_run_counts(session: AsyncSession) -> dict[tuple[str, str], int]:
    """Handler runs still pending or out of tries, by (handler, status)."""
    rows = await session.execute(
        select(HandlerRun.handler, HandlerRun.status, func.count())
        .where(HandlerRun.status.in_(HANDLER_STATES))
        .group_by(HandlerRun.handler, HandlerRun.status)
    )
    return {(str(handler), str(status)): int(n) for handler, status, n in rows}


async def events_per_minute(session: AsyncSession, since: datetime) -> list[tuple[datetime, str, int]]:
    """(minute, type, events) from the minute rollups since ``since``, all sources together."""
    rows = await session.execute(
        select(Rollup.bucket_start, Rollup.type, func.sum(Rollup.count))
        .where(Rollup.bucket_seconds == 60, Rollup.bucket_start >= since)
        .group_by(Rollup.bucket_start, Rollup.type)
        .order_by(Rollup.bucket_start)
    )
    return [(start, str(type_), int(n)) for start, type_, n in rows]

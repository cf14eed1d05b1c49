"""The event statistics report's queries, one function per figure, each on the session it is given.

Every query covers one window of arrival time, ``start <= received_at < end`` (events by
their ``received_at``, dead letters by theirs), so the indexes on ``received_at`` bound the
scan. The functions are independent of each other: :mod:`worker.report` runs them one after
another in one session, or each in its own session at the same time.

The one dialect difference stays here: how to subtract two timestamps into seconds
(:func:`lag_seconds`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Float, Select, cast, extract, func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from worker.db.models import DeadLetter, Event

#: Lag values fetched at most (a systematic sample); percentiles are exact up to this many events.
LAG_SAMPLE_SIZE = 10_000

Counts = list[tuple[str, int]]


@dataclass(frozen=True, slots=True)
class LagSample:
    """Ingestion lags in seconds (``received_at - time``) of events that carry a ``time``."""

    values: list[float]
    """The sampled lags, at most the sample size asked for, in no order."""
    events: int
    """How many events in the window carry a ``time`` (the sample's population)."""


def _dialect(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


def _in_window(start: datetime, end: datetime) -> ColumnElement[bool]:
    return (Event.received_at >= start) & (Event.received_at < end)


async def _counts(session: AsyncSession, statement: Select[Any, int]) -> Counts:
    return [(str(key), int(n)) for key, n in await session.execute(statement)]


def _grouped(
    column: InstrumentedAttribute[Any], start: datetime, end: datetime, limit: int
) -> Select[Any, int]:
    n = func.count().label("n")
    return (
        select(column, n)
        .where(_in_window(start, end))
        .group_by(column)
        .order_by(n.desc(), column)
        .limit(limit)
    )


async def count_events(session: AsyncSession, start: datetime, end: datetime) -> int:
    """Events received in the window."""
    statement = select(func.count()).select_from(Event).where(_in_window(start, end))
    return int(await session.scalar(statement) or 0)


async def counts_by_type(session: AsyncSession, start: datetime, end: datetime, limit: int = 50) -> Counts:
    """The ``limit`` most frequent event types in the window with their counts, most frequent first."""
    return await _counts(session, _grouped(Event.type, start, end, limit))


async def counts_by_source(session: AsyncSession, start: datetime, end: datetime, limit: int = 50) -> Counts:
    """The ``limit`` most frequent sources in the window with their counts, most frequent first."""
    return await _counts(session, _grouped(Event.source, start, end, limit))


async def top_subjects(session: AsyncSession, start: datetime, end: datetime, limit: int = 10) -> Counts:
    """The ``limit`` most frequent subjects in the window (events without one left out)."""
    statement = _grouped(Event.subject, start, end, limit).where(Event.subject.is_not(None))
    return await _counts(session, statement)


async def dead_letters_by_reason(session: AsyncSession, start: datetime, end: datetime) -> Counts:
    """Dead letters received in the window, counted by reason, most frequent first."""
    n = func.count().label("n")
    statement = (
        select(DeadLetter.reason, n)
        .where(DeadLetter.received_at >= start, DeadLetter.received_at < end)
        .group_by(DeadLetter.reason)
        .order_by(n.desc(), DeadLetter.reason)
    )
    return await _counts(session, statement)


def lag_seconds(dialect: str) -> ColumnElement[Any]:
    """``received_at - time`` in seconds (fractional, negative when ``time`` is after arrival)."""
    if dialect == "postgresql":
        return cast(extract("epoch", Event.received_at - Event.time), Float)
    if dialect in {"mysql", "mariadb"}:
        microseconds = func.timestampdiff(literal_column("MICROSECOND"), Event.time, Event.received_at)
        return cast(microseconds, Float) / 1_000_000.0
    if dialect == "sqlite":
        # julianday() is a double of days: about 20 microseconds of resolution today, plenty for lag.
        return (func.julianday(Event.received_at) - func.julianday(Event.time)) * 86_400.0
    raise NotImplementedError(f"no timestamp difference for dialect {dialect!r}")


async def lag_sample(
    session: AsyncSession, start: datetime, end: datetime, size: int = LAG_SAMPLE_SIZE
) -> LagSample:
    """Lags of at most ``size`` events of the window, and how many events in it have a time.

    The sample is systematic: every ``step``-th event by ``seq`` (so spread evenly over arrival
    order), ``step`` chosen from the count so that the sample is about ``size``; when the
    population fits in ``size`` it is all of it and the percentiles are exact. Counting first
    and then sampling by ``seq`` takes about half the time of a random ``ORDER BY ... LIMIT``
    on PostgreSQL (bench/report.py), and reads the same on every database.
    """
    in_window = _in_window(start, end) & Event.time.is_not(None)
    population = int(await session.scalar(select(func.count()).select_from(Event).where(in_window)) or 0)
    if population == 0:
        return LagSample(values=[], events=0)
    step = math.ceil(population / size)
    statement = select(lag_seconds(_dialect(session))).where(in_window).limit(size)
    if step > 1:
        statement = statement.where(Event.seq % step == 0)
    values = [float(lag) for lag in await session.scalars(statement)]
    return LagSample(values=values, events=population)

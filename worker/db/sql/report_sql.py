"""The event statistics report's queries, each on the session it is given.

Every query covers one window of arrival time, ``start <= received_at < end`` (events by
their ``received_at``, dead letters by theirs), so the indexes on ``received_at`` bound the
scan. The report runs three (:func:`jobs.stats.build_report`), independent of each other, one
after another in one session or each in its own session at the same time; their results are the
shapes of :mod:`worker.domain.report`:

- :func:`window_counts`: the event count, counts by type and by source and the top subjects.
  On PostgreSQL that is one pass over the window (``GROUPING SETS``) instead of four, in
  0.54-0.75x the time (bench/README.md, "Report fan-out").
- :func:`lag_sample`: ingestion lags.
- :func:`dead_letters_by_reason`.

The dialect differences stay here: how to count several groupings at once
(:func:`window_counts`), how to subtract two timestamps into seconds (:func:`lag_seconds`),
how to fetch many values at once (:func:`_floats`) and how to keep a transaction off
PostgreSQL's parallel workers (:func:`without_parallel_workers`).
"""

from __future__ import annotations

import functools
import math
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Float,
    Select,
    String,
    bindparam,
    cast,
    extract,
    func,
    literal,
    literal_column,
    null,
    select,
    tuple_,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.sql.elements import BindParameter

from worker.db.dialect import dialect_name
from worker.db.models import DeadLetter, Event
from worker.domain.report import LAG_SAMPLE_SIZE, Counts, LagSample, WindowCounts

#: A window bound: a value, or a parameter of the statement built once (:func:`_grouping_sets_statement`).
_Bound = datetime | BindParameter[datetime]


def _in_window(start: _Bound, end: _Bound) -> ColumnElement[bool]:
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


#: ``GROUPING(type, source, subject)`` of each grouping set: a bit set per column left out.
_BY_PAIR, _BY_SUBJECT, _ALL = 0b001, 0b110, 0b111


#: Rows of figures: (figure, key, count, rank).
_FigureRows = Select[str, str | None, int, int]


def _top(figure: str, counted: Select[Any, int], limit: int) -> _FigureRows:
    """The ``limit`` most frequent keys of ``counted`` (rows ``key, n``) as rows (figure, key, n, rank)."""
    ordered = counted.subquery()
    rows = select(ordered).order_by(ordered.c.n.desc(), ordered.c.key).limit(limit).subquery()
    # The rank carries the order out of the UNION, which keeps none of its own.
    rank = func.row_number().over(order_by=(rows.c.n.desc(), rows.c.key))
    return select(literal(figure).label("figure"), rows.c.key, rows.c.n, rank.label("rank"))


@functools.cache
def _grouping_sets_statement(limit: int, subjects: int) -> _FigureRows:
    """One pass over the window: rows (figure, key, count, rank), ordered by figure and rank.

    One scan counts the (type, source) pairs, the subjects and the whole window: two hash
    tables, cheaper than one per type and one per source as long as pairs are few, as they
    usually are (the rollups keep a series per pair). The groups are kept once (a CTE used
    more than once is materialized); types and sources are summed from the pairs.

    Built once per ``limit`` and ``subjects``, the window as the parameters ``start`` and ``end``:
    building the statement and its cache key took 1.7 ms of the client's CPU at every report, on
    the fanned-out report's critical path (this query is its slowest).
    """
    start = bindparam("start", type_=Event.received_at.type)
    end = bindparam("end", type_=Event.received_at.type)
    groups = (
        select(
            func.grouping(Event.type, Event.source, Event.subject).label("grouping"),
            Event.type,
            Event.source,
            Event.subject,
            func.count().label("n"),
        )
        .where(_in_window(start, end))
        .group_by(func.grouping_sets(tuple_(Event.type, Event.source), tuple_(Event.subject), tuple_()))
        .cte("window_groups")
    )
    pairs = groups.c.grouping == _BY_PAIR

    def summed(key: ColumnElement[Any]) -> Select[Any, int]:
        n = cast(func.sum(groups.c.n), BigInteger).label("n")
        return select(key.label("key"), n).where(pairs).group_by(key)

    subject = groups.c.subject
    figures = union_all(
        _top("by_type", summed(groups.c.type), limit),
        _top("by_source", summed(groups.c.source), limit),
        _top(
            "top_subjects",
            select(subject.label("key"), groups.c.n).where(
                groups.c.grouping == _BY_SUBJECT, subject.is_not(None)
            ),
            subjects,
        ),
        select(literal("events"), cast(null(), String), groups.c.n, literal(1)).where(
            groups.c.grouping == _ALL
        ),
    ).subquery()
    return select(figures).order_by(figures.c.figure, figures.c.rank)


async def window_counts(
    session: AsyncSession, start: datetime, end: datetime, *, limit: int = 50, subjects: int = 10
) -> WindowCounts:
    """The event count, the ``limit`` most frequent types and sources and the top ``subjects`` subjects.

    PostgreSQL counts them in one pass over the window (``GROUPING SETS``); MySQL, MariaDB
    and SQLite have no grouping sets, so there the four statements run one after another.
    """
    if dialect_name(session) != "postgresql":
        return WindowCounts(
            events=await count_events(session, start, end),
            by_type=await counts_by_type(session, start, end, limit),
            by_source=await counts_by_source(session, start, end, limit),
            top_subjects=await top_subjects(session, start, end, subjects),
        )
    events, figures = 0, {"by_type": Counts(), "by_source": Counts(), "top_subjects": Counts()}
    window = {"start": start, "end": end}
    for figure, key, n, _ in await session.execute(_grouping_sets_statement(limit, subjects), window):
        if figure == "events":
            events = int(n)
        else:
            figures[figure].append((str(key), int(n)))
    return WindowCounts(events=events, **figures)


async def without_parallel_workers(session: AsyncSession) -> None:
    """Keep this transaction's statements to one server process each (PostgreSQL; nothing elsewhere).

    For the fanned-out report, whose queries already run side by side: parallel workers on top
    would take cores from the slowest query, :func:`window_counts`, which as ``GROUPING SETS``
    never runs in parallel itself (bench/README.md, "Report fan-out"). ``set_config(..., true)``
    lasts until the transaction ends, so the pooled connection keeps the server's setting.
    """
    if dialect_name(session) == "postgresql":
        await session.execute(select(func.set_config("max_parallel_workers_per_gather", "0", True)))


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
    statement = select(lag_seconds(dialect_name(session)).label("lag")).where(in_window).limit(size)
    if step > 1:
        statement = statement.where(Event.seq % step == 0)
    return LagSample(values=await _floats(session, statement), events=population)


async def _floats(session: AsyncSession, statement: Select[Any]) -> list[float]:
    """The values of ``statement``'s one column ``lag``.

    On PostgreSQL as one array (``array_agg``), which the driver decodes in one go: a result
    row per value costs more, through SQLAlchemy, than the query's own work on the sample
    (bench/README.md, "Report fan-out").
    """
    if dialect_name(session) == "postgresql":
        rows = statement.subquery()
        values = await session.scalar(select(func.array_agg(rows.c.lag))) or []
    else:
        values = list(await session.scalars(statement))
    return [float(value) for value in values]

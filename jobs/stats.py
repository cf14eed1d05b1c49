"""``event_stats``: the event statistics report over the last ``window`` (``"15m"``, ``"1h"``, ``"7d"``...),
and :func:`build_report`, which runs the report's queries (``eventworker stats`` calls it too).

The job returns the report in its JSON form and logs one summary line. A window that does not
parse is a permanent failure: it is recorded at once, not retried.

:func:`build_report` runs the three queries of :mod:`worker.db.sql.report_sql` (the counts, one pass
over the window on PostgreSQL; the lag sample; the dead letters) either one after another in one
session, or fanned out, each in its own session and transaction, at the same time
(``asyncio.TaskGroup``), and makes a :class:`~worker.domain.report.Report` of what they find. A
session is never shared between two queries in flight.

Why three and not one per figure: on PostgreSQL the four counting figures take 0.54-0.75x the
time from one scan as from four, and the fan-out's wall time is bounded below by the total work
divided by the cores as much as by the slowest query; with less work in all, a fanned-out report
on two free cores ends about when its slowest query does (bench/README.md, "Report fan-out").

The fan-out never asks the pool for more connections than it keeps (``pool_size``): queries
beyond that wait for one of the report's own queries to finish, without a time limit, instead
of waiting on the pool for ``pool_timeout`` and failing. Each task holds one connection and
never waits for a second, so the report cannot deadlock the pool, even with ``pool_size=1``.
(Overflow connections are left to the worker's other jobs.) On SQLite, which has one writer,
this process runs its transactions one at a time anyway, so fanning out gains nothing there.

Fanned out, each query runs without PostgreSQL's parallel workers: the fan-out is the
parallelism, and workers on top of it would compete for the cores with the slowest query (the
counts, which as ``GROUPING SETS`` never run in parallel). Serially, the server's setting holds.

Fanned out, the queries read different snapshots: over a window that is still filling they
may disagree by the events that arrived meanwhile; over a past window they agree with the
serial report.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.pool import NullPool, QueuePool

from worker.constants import EVENT_STATS_JOB
from worker.db.engine import Database
from worker.db.sql import report_sql
from worker.domain.report import LAG_SAMPLE_SIZE, LagStats, Report, Timing, Window, WindowCounts, to_json
from worker.logging import get_logger
from worker.runtime.context import WorkerContext
from worker.runtime.jobrunner import job

log = get_logger("eventworker.stats")


@job
async def event_stats(ctx: WorkerContext, window: str = "1h") -> dict[str, Any]:
    """Build the report over the last ``window``; return it as JSON-ready data."""
    report = await build_report(ctx["db"], Window.last(window))
    slowest, slowest_ms = report.timing.slowest
    log.info(
        "stats.report",
        window=report.window.label,
        events=report.events,
        dead_letters=sum(n for _, n in report.dead_letters),
        wall_ms=round(report.timing.wall_ms, 2),
        slowest_query=slowest,
        slowest_ms=round(slowest_ms, 2),
    )
    return to_json(report)


Query = Callable[[AsyncSession], Awaitable[Any]]


def _queries(window: Window, top: int, sample: int) -> dict[str, Query]:
    """The report's queries over ``window``, by figure; each looks its function up when it runs."""
    start, end = window.start, window.end
    return {
        "counts": lambda session: report_sql.window_counts(session, start, end, subjects=top),
        "lag": lambda session: report_sql.lag_sample(session, start, end, sample),
        "dead_letters": lambda session: report_sql.dead_letters_by_reason(session, start, end),
    }


def fan_out_width(engine: AsyncEngine, queries: int) -> int:
    """How many queries may run at once: no more than the connections the pool keeps."""
    pool = engine.pool
    if isinstance(pool, QueuePool):
        width = pool.size()
    elif isinstance(pool, NullPool):
        width = queries  # a new connection for each checkout: nothing to exhaust
    else:
        width = 1  # StaticPool and friends: one connection for everybody
    return max(1, min(width, queries))


async def _timed(query: Query, session: AsyncSession) -> tuple[Any, float]:
    started = time.perf_counter()
    result = await query(session)
    return result, (time.perf_counter() - started) * 1000


async def _serial(db: Database, queries: dict[str, Query]) -> dict[str, tuple[Any, float]]:
    async with db.transaction(EVENT_STATS_JOB) as session:
        return {name: await _timed(query, session) for name, query in queries.items()}


async def _fanned_out(db: Database, queries: dict[str, Query]) -> dict[str, tuple[Any, float]]:
    gate = asyncio.Semaphore(fan_out_width(db.engine, len(queries)))

    async def run(query: Query) -> tuple[Any, float]:
        # The gate is taken before the connection: waiting here has no time limit, the pool's has.
        async with gate, db.transaction(EVENT_STATS_JOB) as session:
            await report_sql.without_parallel_workers(session)
            return await _timed(query, session)

    try:
        async with asyncio.TaskGroup() as group:
            tasks = {
                name: group.create_task(run(query), name=f"report:{name}") for name, query in queries.items()
            }
    except ExceptionGroup as failed:
        # The other queries were cancelled; the first failure is the report's (the retry decision and the
        # CLI's one-line errors look at one exception, as for the serial report).
        raise failed.exceptions[0] from failed
    return {name: task.result() for name, task in tasks.items()}


async def build_report(
    db: Database, window: Window, *, fan_out: bool = True, top: int = 10, sample: int = LAG_SAMPLE_SIZE
) -> Report:
    """Run the report's queries over ``window``: fanned out (each in its own session) or serially in one."""
    queries = _queries(window, top, sample)
    started = time.perf_counter()
    results = await (_fanned_out(db, queries) if fan_out else _serial(db, queries))
    wall_ms = (time.perf_counter() - started) * 1000
    value = {name: result for name, (result, _) in results.items()}
    counts: WindowCounts = value["counts"]
    return Report(
        window=window,
        events=counts.events,
        by_type=counts.by_type,
        by_source=counts.by_source,
        top_subjects=counts.top_subjects,
        lag=LagStats.of(value["lag"]),
        dead_letters=value["dead_letters"],
        timing=Timing(
            fanned_out=fan_out,
            wall_ms=round(wall_ms, 3),
            queries_ms={name: round(ms, 3) for name, (_, ms) in results.items()},
        ),
    )

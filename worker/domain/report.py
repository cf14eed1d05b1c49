"""The event statistics report: what arrived in a time window, and how late.

Counts by type, by source, the top subjects, ingestion lag percentiles
(``received_at - time``) and dead letters by reason, from three independent queries
(:mod:`worker.db.report_sql`): the counts (one pass over the window on PostgreSQL), the lag
sample and the dead letters. :func:`build_report` runs them either one after another in one
session, or fanned out, each in its own session and transaction, at the same time
(``asyncio.TaskGroup``). A session is never shared between two queries in flight.

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

Everything but :func:`build_report` is pure: window parsing, percentiles, the table and the
JSON form.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.pool import NullPool, QueuePool

from worker.constants import EVENT_STATS_JOB
from worker.db import report_sql
from worker.db.report_sql import LAG_SAMPLE_SIZE, Counts, LagSample, WindowCounts
from worker.errors import InvalidArgument

if TYPE_CHECKING:
    from worker.db.engine import Database

_WINDOW = re.compile(r"\s*(?P<n>\d{1,6})\s*(?P<unit>[smhdw])\s*")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
#: The longest window: ten years (and no timestamp arithmetic overflows).
MAX_WINDOW = timedelta(days=3660)
#: The lag percentiles reported.
PERCENTILES = (0.5, 0.9, 0.99)


def parse_window(text: str) -> timedelta:
    """``"15m"``, ``"1h"``, ``"24h"``, ``"7d"`` (units s, m, h, d, w) as a duration.

    Anything else raises :class:`~worker.errors.InvalidArgument` naming the argument.
    """
    match = _WINDOW.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise InvalidArgument(
            "window", text, "expected a whole number and a unit (s, m, h, d or w), e.g. 15m, 1h, 24h, 7d"
        )
    duration = timedelta(**{_UNITS[match["unit"]]: int(match["n"])})
    if not timedelta(0) < duration <= MAX_WINDOW:
        raise InvalidArgument("window", text, f"must be more than 0 and at most {MAX_WINDOW.days} days")
    return duration


@dataclass(frozen=True, slots=True)
class Window:
    """Arrival times ``start <= received_at < end``, both aware UTC."""

    start: datetime
    end: datetime
    label: str | None = None
    """How it was asked for, e.g. ``"1h"``."""

    @classmethod
    def last(cls, text: str, now: datetime | None = None) -> Window:
        """The window of length ``text`` (see :func:`parse_window`) ending ``now``."""
        end = now or datetime.now(UTC)
        return cls(start=end - parse_window(text), end=end, label=text.strip())


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of ``values`` by linear interpolation, as PostgreSQL's percentile_cont."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} is not between 0 and 1")
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True, slots=True)
class LagStats:
    """Ingestion lag (``received_at - time``) in seconds, over events that carry a ``time``."""

    events: int
    """Events in the window with a ``time``."""
    sampled: int
    """How many of them the percentiles are computed from (all of them up to the sample size)."""
    percentiles: dict[str, float | None]
    """``{"p50": ..., "p90": ..., "p99": ...}``; None when no event has a time."""
    max: float | None
    """The largest lag in the sample."""

    @classmethod
    def of(cls, sample: LagSample) -> LagStats:
        """Percentiles of a sample."""
        ordered = sorted(sample.values)  # once: sorting it again for each percentile is then linear
        return cls(
            events=sample.events,
            sampled=len(ordered),
            percentiles={_percentile_name(q): percentile(ordered, q) for q in PERCENTILES},
            max=ordered[-1] if ordered else None,
        )


def _percentile_name(q: float) -> str:
    return f"p{q * 100:g}"


@dataclass(frozen=True, slots=True)
class Timing:
    """How the report was built and how long each query took (its own time, not waits for a connection)."""

    fanned_out: bool
    wall_ms: float
    queries_ms: dict[str, float]

    @property
    def slowest(self) -> tuple[str, float]:
        """The slowest query and its time: the floor for a fanned-out report's wall time."""
        return max(self.queries_ms.items(), key=lambda item: item[1], default=("", 0.0))


@dataclass(frozen=True, slots=True)
class Report:
    """The figures of one window, and how long they took."""

    window: Window
    events: int
    by_type: Counts
    by_source: Counts
    top_subjects: Counts
    lag: LagStats
    dead_letters: Counts
    timing: Timing

    def figures(self) -> dict[str, Any]:
        """The JSON form without timing: equal for two reports that found the same."""
        data = to_json(self)
        del data["timing"]
        return data


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _pairs(counts: Counts, key: str) -> list[dict[str, Any]]:
    return [{key: value, "count": n} for value, n in counts]


def to_json(report: Report) -> dict[str, Any]:
    """The report as JSON-ready data (what the job returns and ``eventworker stats --json`` prints)."""
    window = report.window
    return {
        "window": {"start": _iso(window.start), "end": _iso(window.end), "label": window.label},
        "events": report.events,
        "by_type": _pairs(report.by_type, "type"),
        "by_source": _pairs(report.by_source, "source"),
        "top_subjects": _pairs(report.top_subjects, "subject"),
        "lag_seconds": {
            "events": report.lag.events,
            "sampled": report.lag.sampled,
            **report.lag.percentiles,
            "max": report.lag.max,
        },
        "dead_letters_by_reason": _pairs(report.dead_letters, "reason"),
        "timing": {
            "fanned_out": report.timing.fanned_out,
            "wall_ms": report.timing.wall_ms,
            "queries_ms": report.timing.queries_ms,
        },
    }


#: Longer keys (sources can be 512 characters) are cut in the table; --json has them whole.
_KEY_WIDTH = 60


def _cut(text: str) -> str:
    return text if len(text) <= _KEY_WIDTH else text[: _KEY_WIDTH - 1] + "…"


def _section(heading: str, unit: str, counts: Counts) -> list[str]:
    rows = [(_cut(key), f"{n:,}") for key, n in counts] or [("(none)", "")]
    key_width = max(len(heading), *(2 + len(key) for key, _ in rows))
    count_width = max(len(unit), *(len(n) for _, n in rows))
    lines = [f"{heading:<{key_width}}  {unit:>{count_width}}"]
    lines += [f"  {key:<{key_width - 2}}  {n:>{count_width}}".rstrip() for key, n in rows]
    return [*lines, ""]


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:,.3f}s"


def format_table(report: Report) -> str:
    """The report as text tables for a terminal."""
    window, lag, timing = report.window, report.lag, report.timing
    label = f" ({window.label})" if window.label else ""
    lines = [f"events received {_iso(window.start)} .. {_iso(window.end)}{label}: {report.events:,}", ""]
    lines += _section("by type", "events", report.by_type)
    lines += _section("by source", "events", report.by_source)
    lines += _section("top subjects", "events", report.top_subjects)
    percentiles = "  ".join(f"{name} {_seconds(value)}" for name, value in lag.percentiles.items())
    lines += [
        f"ingestion lag (received_at - time): {lag.events:,} events with a time, {lag.sampled:,} sampled",
        f"  {percentiles}  max {_seconds(lag.max)}",
        "",
    ]
    lines += _section("dead letters by reason", "count", report.dead_letters)
    slowest, slowest_ms = timing.slowest
    mode = "fanned out" if timing.fanned_out else "serial"
    queries = ", ".join(f"{name} {ms:.1f}" for name, ms in timing.queries_ms.items())
    lines.append(
        f"{mode}: {timing.wall_ms:.1f} ms wall, slowest query {slowest} {slowest_ms:.1f} ms"
        f" (each query, ms: {queries})"
    )
    return "\n".join(lines)


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

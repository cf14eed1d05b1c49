"""``update_rollups`` (a cron job, every minute) and ``rebuild_rollups``: event counts per minute and hour.

An update counts only the events stored since its checkpoint, in one transaction:
lock the checkpoint, ask the database layer which new events are safe to read
(:func:`worker.db.sql.rollup_sql.safe_range`: an exact horizon on PostgreSQL and SQLite, a
settle time on MySQL/MariaDB), have the database count them per bucket
(:func:`worker.db.sql.rollup_sql.count_range`, a ``GROUP BY``: only the buckets reach the worker),
add the counts to the table and move the checkpoint, all or nothing. A crash at any point
leaves both as they were; the next run counts the same events once.

Work is bounded: a transaction reads at most ``rollup_transaction_rows`` events (on
PostgreSQL one ingest transaction larger than that is read in parts), so a big backlog
becomes several short transactions; a cron run goes on until it has caught
up or used half its time limit, and the next tick continues. Overlapping runs (a slow
tick, the ``eventworker rollups`` command) take turns on the checkpoint; one that finds
the checkpoint moved under it rolls back and gives way (``gave_way``).

A rebuild empties the table and recounts the whole history in one transaction, in the
same bounded passes, and leaves the checkpoint where the recount stopped.
:func:`verify` compares the table with the events it covers, counted again in Python
(:func:`worker.domain.rollups.count_events`): a check that shares no counting code with the runs.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, aclosing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, TypedDict

from sqlalchemy.ext.asyncio import AsyncSession

from worker.config import Settings
from worker.constants import REBUILD_ROLLUPS_JOB, UPDATE_ROLLUPS_JOB
from worker.db.dialect import SNAPSHOT_ISOLATION
from worker.db.engine import Database
from worker.db.failures import is_serialization_failure
from worker.db.sql import rollup_sql
from worker.domain import rollups
from worker.errors import CheckpointMoved
from worker.logging import get_logger
from worker.runtime.context import WorkerContext
from worker.runtime.jobrunner import job

#: Share of the job time limit a cron run may spend before leaving the rest to the next tick.
BUDGET_SHARE: Final = 0.5
#: Tries of a rebuild that meets a concurrent run on PostgreSQL (serialization failure).
REBUILD_ATTEMPTS: Final = 3
#: Events :func:`verify` reads per statement.
VERIFY_PAGE_ROWS: Final = 10_000


log = get_logger("eventworker.rollups")


def transaction(db: Database, job_name: str | None = None) -> AbstractAsyncContextManager[AsyncSession]:
    """A transaction for a rollup run (or a check): one snapshot from its first statement to its last.

    SQLite's write lock (``rollup_sql.lock_checkpoint``) already makes the run see one state.
    """
    return db.transaction(job_name, isolation_level=SNAPSHOT_ISOLATION.get(db.dialect))


class RollupResult(TypedDict):
    """What an update or a rebuild did."""

    rows: int
    """Events counted."""
    buckets: int
    """Bucket rows written (a bucket touched by two transactions counts twice)."""
    transactions: int
    """Transactions that counted events and moved the checkpoint."""
    checkpoint_from: int | None
    """The checkpoint's position before (None when no transaction got to read it)."""
    checkpoint_to: int | None
    """The checkpoint's position after (None when no transaction got to read it)."""
    gave_way: bool
    """True when a transaction found another run at the checkpoint and rolled back."""


@dataclass(frozen=True, slots=True)
class Verification:
    """The outcome of :func:`verify`."""

    position: rollup_sql.Position | None
    """The checkpoint the comparison is up to (None: rollups never ran)."""
    buckets: int
    """Buckets the events call for."""
    differences: list[rollups.Difference]
    """Buckets where the table disagrees with the events."""


@dataclass(frozen=True, slots=True)
class _Counted:
    rows: int
    buckets: int
    read: rollup_sql.ReadRange


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _settled_before(settings: Settings, now: datetime) -> datetime:
    settle = rollups.settle_seconds(settings.rollup_settle_seconds, settings.job_timeout)
    return now - timedelta(seconds=settle)


async def _count_range(
    session: AsyncSession, settings: Settings, start: rollup_sql.Position, *, max_rows: int, now: datetime
) -> _Counted:
    """Count the safe new events after ``start`` into the table (not the checkpoint)."""
    read = await rollup_sql.safe_range(
        session, start, limit=max_rows, settled_before=_settled_before(settings, now)
    )
    counts = await rollup_sql.count_range(session, read)
    buckets = await rollup_sql.upsert_rollups(session, rollups.rollup_rows(counts))
    return _Counted(rollups.events_counted(counts), buckets, read)


async def _ensure_checkpoint(db: Database, now: datetime) -> None:
    async with db.transaction() as session:
        await rollup_sql.ensure_checkpoint(session, now)


async def _update_once(
    db: Database, settings: Settings, *, max_rows: int, now: datetime
) -> tuple[rollup_sql.Position, _Counted]:
    """One transaction: lock, count, move the checkpoint. Return the old position and what was counted."""
    async with transaction(db, UPDATE_ROLLUPS_JOB) as session:
        old = await rollup_sql.lock_checkpoint(session)
        counted = await _count_range(session, settings, old, max_rows=max_rows, now=now)
        # Nothing new: leave the checkpoint row alone too. (A range cut short holds rows, unless
        # retention deleted the rest of a transaction read in parts: then move past it all the same.)
        if counted.rows or counted.read.more:
            await rollup_sql.move_checkpoint(session, old, counted.read.position, now)
    return old, counted


def _gave_way(exc: Exception) -> bool:
    return isinstance(exc, CheckpointMoved) or is_serialization_failure(exc)


async def update(
    db: Database,
    settings: Settings,
    *,
    max_rows: int | None = None,
    budget_s: float | None = None,
    clock: Callable[[], datetime] = _utcnow,
) -> RollupResult:
    """Count the events stored since the last run, in transactions of at most ``max_rows`` events.

    ``max_rows``: ``rollup_transaction_rows`` unless given. Goes on until caught up or, when
    ``budget_s`` is given, until that many seconds have passed.
    """
    started = time.perf_counter()
    max_rows = max_rows or settings.rollup_transaction_rows
    await _ensure_checkpoint(db, clock())
    result = RollupResult(
        rows=0, buckets=0, transactions=0, checkpoint_from=None, checkpoint_to=None, gave_way=False
    )
    while True:
        try:
            old, counted = await _update_once(db, settings, max_rows=max_rows, now=clock())
        except Exception as exc:
            if not _gave_way(exc):
                raise
            result["gave_way"] = True
            break
        if result["checkpoint_from"] is None:
            result["checkpoint_from"] = old.at
        result["checkpoint_to"] = counted.read.end if counted.rows else old.at
        result["rows"] += counted.rows
        result["buckets"] += counted.buckets
        result["transactions"] += 1 if counted.rows else 0
        over_budget = budget_s is not None and time.perf_counter() - started > budget_s
        if not counted.read.more or over_budget:
            break
    _log("rollups.updated", result, started)
    return result


async def _rebuild_once(db: Database, settings: Settings, *, max_rows: int, now: datetime) -> RollupResult:
    async with transaction(db, REBUILD_ROLLUPS_JOB) as session:
        old = await rollup_sql.lock_checkpoint(session)
        await rollup_sql.delete_all_rollups(session)
        position, rows, buckets, more = rollup_sql.Position(rollup_sql.INITIAL_POSITION), 0, 0, True
        while more:
            counted = await _count_range(session, settings, position, max_rows=max_rows, now=now)
            rows, buckets = rows + counted.rows, buckets + counted.buckets
            position = counted.read.position if counted.rows or counted.read.more else position
            more = counted.read.more
        await rollup_sql.move_checkpoint(session, old, position, now)
    return RollupResult(
        rows=rows,
        buckets=buckets,
        transactions=1,
        checkpoint_from=old.at,
        checkpoint_to=position.at,
        gave_way=False,
    )


async def rebuild(
    db: Database,
    settings: Settings,
    *,
    max_rows: int | None = None,
    clock: Callable[[], datetime] = _utcnow,
) -> RollupResult:
    """Empty the rollups and count the whole history again, in one transaction.

    Passes of at most ``max_rows`` events (``rollup_transaction_rows`` unless given) keep memory
    bounded. A concurrent update waits for the rebuild (or the rebuild for it); on PostgreSQL a
    rebuild that loses that race is tried again.
    """
    started = time.perf_counter()
    max_rows = max_rows or settings.rollup_transaction_rows
    await _ensure_checkpoint(db, clock())
    for attempt in range(1, REBUILD_ATTEMPTS + 1):
        try:
            result = await _rebuild_once(db, settings, max_rows=max_rows, now=clock())
        except Exception as exc:
            if not _gave_way(exc) or attempt == REBUILD_ATTEMPTS:
                raise
            log.info("rollups.rebuild_retry", attempt=attempt, error=type(exc).__name__)
            continue
        _log("rollups.rebuilt", result, started)
        return result
    raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover


async def expected_rollups(
    session: AsyncSession, up_to: rollup_sql.Position | None
) -> Counter[rollups.RollupKey]:
    """What the rollups should hold at checkpoint ``up_to`` (None: every stored event).

    The events are read back and counted with :func:`worker.domain.rollups.count_events`, not with the
    SQL the runs count with (:func:`worker.db.sql.rollup_sql.count_range`), so comparing the two
    checks both. It costs the worker's CPU for every event, which suits a check run by hand.
    """
    counts: Counter[rollups.RollupKey] = Counter()
    async with aclosing(rollup_sql.covered_events(session, up_to, VERIFY_PAGE_ROWS)) as pages:
        async for page in pages:
            rollups.count_events(page, counts)
    return counts


async def verify(db: Database) -> Verification:
    """Compare the rollups with the events their checkpoint covers, recounted in Python, in one snapshot."""
    async with transaction(db) as session:
        position = await rollup_sql.read_checkpoint(session)
        up_to = rollup_sql.Position(rollup_sql.INITIAL_POSITION) if position is None else position
        expected = await expected_rollups(session, up_to)
        actual = await rollup_sql.stored_rollups(session)
    return Verification(position, len(expected), rollups.differences(expected, actual))


def _log(event: str, result: RollupResult, started: float) -> None:
    log.info(
        event,
        rows=result["rows"],
        buckets=result["buckets"],
        transactions=result["transactions"],
        checkpoint_from=result["checkpoint_from"],
        checkpoint_to=result["checkpoint_to"],
        gave_way=result["gave_way"],
        duration_ms=round((time.perf_counter() - started) * 1000, 2),
    )


@job
async def update_rollups(ctx: WorkerContext) -> RollupResult:
    """Cron job: bring the rollups up to date, within half the job time limit."""
    settings = ctx["settings"]
    return await update(ctx["db"], settings, budget_s=settings.job_timeout * BUDGET_SHARE)


@job
async def rebuild_rollups(ctx: WorkerContext) -> RollupResult:
    """Recount the rollups from the whole history (also ``eventworker rollups rebuild``)."""
    return await rebuild(ctx["db"], ctx["settings"])

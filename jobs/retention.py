"""``apply_retention``: the daily cron job that deletes events and dead letters past their retention.

Events received more than ``retention_days`` ago go in chunks of at most
``retention_chunk_size`` rows, oldest ``seq`` first, each chunk in its own short
transaction: retention never holds a transaction or a connection for longer than one
chunk, and ingestion (which only adds new rows) waits on at most one chunk's locks.
Handler runs of a deleted event go with it (``ON DELETE CASCADE``). Dead letters follow
``dead_letter_retention_days`` the same way. An unset retention keeps everything.

With ``retention_export_dir`` set, the events to delete are exported there first, as one
gzipped NDJSON file per run, complete and in place before the first delete; then only
the events that file holds (``seq`` up to its last) are deleted. A run cut short between
the two exports its remaining events again next time: files may overlap, none misses an
event. (An event stored after the export began with a ``received_at`` already past the
retention, possible only with a retention shorter than a job, would be deleted unexported.)

On PostgreSQL with a partitioned ``events`` (:mod:`worker.db.sql.partition_sql`), the events go by
whole partitions instead: each partition whose rows were all received before the cutoff is
exported (with the others of the run, into the run's one file) and then dropped, its handler
runs and identities with it, in a time that does not grow with its rows but for the identities'
chunked delete. A partition still holding a row younger than the cutoff stays whole until the next
run after its last row's time, so rows outlive their retention by up to one partition interval.
The rows of a converted table (its first partition, up to the cut-over time) go in chunks, as
above, until that partition is wholly past retention and is dropped.

A cron run starts no chunk (nor partition) once it has used half its job time limit
(``finished`` is then false), and the next run goes on from there: each chunk is a transaction
of its own (5,000 rows took 49 ms on a 3-million-row table), so what was deleted stays deleted,
and a partition detached but not dropped is finished first. A first run over a large backlog is
best done with ``eventworker retention``, which has no time limit.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final, TypedDict

from sqlalchemy.ext.asyncio import AsyncSession

from jobs.export import ExportSummary, export_to_file
from worker.config import Settings
from worker.constants import APPLY_RETENTION_JOB
from worker.db.engine import Database
from worker.db.sql import history, partition_sql
from worker.domain.export import ExportFilter, ExportFormat, ExportProgress
from worker.domain.partitions import LEGACY, expired
from worker.logging import get_logger
from worker.runtime.context import WorkerContext
from worker.runtime.jobrunner import job

log = get_logger("eventworker.retention")
DeleteChunk = Callable[[AsyncSession], Awaitable[int]]
#: Share of the job time limit a cron run may spend before leaving the rest to the next run.
BUDGET_SHARE: Final = 0.5


class RetentionResult(TypedDict):
    """What a retention run deleted (and exported)."""

    events_deleted: int
    event_chunks: int
    partitions_dropped: int
    dead_letters_deleted: int
    dead_letter_chunks: int
    exported_path: str | None
    exported_rows: int
    finished: bool
    """False when the run's time budget ended it before all was deleted: the next run goes on."""


def export_file_name(now: datetime) -> str:
    """The file one run exports to: named for the run's time, to the microsecond, so runs never collide."""
    return f"events-{now.astimezone(UTC):%Y%m%dT%H%M%S.%fZ}.ndjson.gz"


def _out_of_time(deadline: float | None, result: RetentionResult) -> bool:
    """True (and the run marked unfinished) once ``deadline`` (``time.monotonic``) is past."""
    if deadline is None or time.monotonic() < deadline:
        return False
    result["finished"] = False
    return True


async def _delete_in_chunks(
    db: Database, table: str, delete_chunk: DeleteChunk, limit: int, *, deadline: float | None
) -> tuple[int, int, bool]:
    """Run ``delete_chunk`` in one transaction after another until a chunk comes up short.

    Returns rows, chunks and whether it got to the end (no chunk starts after ``deadline``).
    """
    total = chunks = 0
    while True:
        if deadline is not None and time.monotonic() > deadline:
            return total, chunks, False
        started = time.perf_counter()
        async with db.transaction(APPLY_RETENTION_JOB) as session:
            deleted = await delete_chunk(session)
        if deleted:
            total, chunks = total + deleted, chunks + 1
            log.info(
                "retention.chunk",
                table=table,
                deleted=deleted,
                total=total,
                ms=round((time.perf_counter() - started) * 1000, 2),
            )
        if deleted < limit:
            return total, chunks, True


def _log_export_progress(progress: ExportProgress) -> None:
    log.info("retention.export_progress", rows=progress.rows, rows_per_s=round(progress.rows_per_s))


async def _export_expiring(db: Database, settings: Settings, cutoff: datetime) -> ExportSummary:
    """Export the events received before ``cutoff`` to this run's file (none if there are none)."""
    target = Path(settings.retention_export_dir or ".") / export_file_name(datetime.now(UTC))
    target.parent.mkdir(parents=True, exist_ok=True)
    return await export_to_file(
        db,
        target,
        ExportFilter(received_before=cutoff),
        ExportFormat.NDJSON,
        chunk_size=settings.export_chunk_size,
        compress=True,
        progress=_log_export_progress,
        job_name=APPLY_RETENTION_JOB,
        keep_empty=False,
    )


async def _drop_detached(
    db: Database, name: str, limit: int, result: RetentionResult, deadline: float | None
) -> None:
    """Delete the identities of a detached partition's rows in chunks, then drop it.

    The events counted are the identities deleted: the partition's rows, but for those whose
    identity a run cut short had deleted already. Past ``deadline`` the partition stays detached
    for the next run to finish.
    """
    async with db.engine.connect() as connection:
        received = await partition_sql.received_range(connection, name)
    rows = 0
    while received is not None:
        if _out_of_time(deadline, result):
            result["events_deleted"] += rows
            return
        async with db.transaction(APPLY_RETENTION_JOB) as session:
            deleted = await partition_sql.delete_keys_chunk(session, *received, limit)
        rows += deleted
        if deleted < limit:
            break
    async with db.transaction(APPLY_RETENTION_JOB) as session:
        await partition_sql.drop_table(session, name)
    result["events_deleted"] += rows
    result["partitions_dropped"] += 1
    log.info("retention.partition_dropped", partition=name, rows=rows)


async def _expire_partitions(
    db: Database, settings: Settings, cutoff: datetime, result: RetentionResult, deadline: float | None
) -> None:
    """Retention of a partitioned ``events``: whole partitions, then a converted table's rows in chunks."""
    limit = settings.retention_chunk_size
    finished = await partition_sql.finalize_pending(db.engine)  # detaches a run before left half done
    async with db.engine.connect() as connection:
        leftovers = await partition_sql.detached_tables(connection)
        partitions = await partition_sql.read_partitions(connection)
    for name in leftovers:  # detached by a run cut short, after its export
        if _out_of_time(deadline, result):
            return
        await _drop_detached(db, name, limit, result, deadline)
    due = expired(partitions, cutoff)
    legacy = next((p for p in partitions if p.name == LEGACY and p not in due), None)
    if not due and legacy is None:
        if finished:
            log.info("retention.detach_finalized", partitions=finished)
        return
    up_to_seq = None
    if settings.retention_export_dir:
        summary = await _export_expiring(db, settings, due[-1].upper if due else cutoff)
        if summary.rows:
            result["exported_path"], result["exported_rows"] = str(summary.path), summary.rows
            up_to_seq = summary.last_seq
            log.info("retention.exported", path=str(summary.path), rows=summary.rows, bytes=summary.bytes)
        else:
            legacy = None  # none of its rows is old enough; empty partitions still go
    for partition in due:
        if _out_of_time(deadline, result):
            return
        async with db.transaction(APPLY_RETENTION_JOB) as session:
            runs = await partition_sql.delete_handler_runs_of(session, partition.name)
        await partition_sql.detach(db.engine, partition.name)
        log.info("retention.partition_detached", partition=partition.name, handler_runs=runs)
        await _drop_detached(db, partition.name, limit, result, deadline)
    if legacy is not None:

        def delete_chunk(session: AsyncSession) -> Awaitable[int]:
            return partition_sql.delete_legacy_chunk(session, cutoff, limit, up_to_seq)

        deleted, chunks, done = await _delete_in_chunks(db, "events", delete_chunk, limit, deadline=deadline)
        result["events_deleted"] += deleted
        result["event_chunks"] += chunks
        result["finished"] = result["finished"] and done


async def _expire_events(
    db: Database, settings: Settings, cutoff: datetime, result: RetentionResult, deadline: float | None
) -> None:
    if db.dialect == "postgresql":
        async with db.engine.connect() as connection:
            shape = await partition_sql.read_layout(connection)
        if shape.partitioned:
            await _expire_partitions(db, settings, cutoff, result, deadline)
            return
    limit, up_to_seq = settings.retention_chunk_size, None
    if settings.retention_export_dir:
        summary = await _export_expiring(db, settings, cutoff)
        if not summary.rows:
            return  # nothing is old enough, and only exported events may be deleted
        result["exported_path"], result["exported_rows"] = str(summary.path), summary.rows
        up_to_seq = summary.last_seq
        log.info("retention.exported", path=str(summary.path), rows=summary.rows, bytes=summary.bytes)

    def delete_chunk(session: AsyncSession) -> Awaitable[int]:
        return history.delete_events_older_than(session, cutoff, limit, up_to_seq=up_to_seq)

    deleted, chunks, done = await _delete_in_chunks(db, "events", delete_chunk, limit, deadline=deadline)
    result["events_deleted"], result["event_chunks"] = deleted, chunks
    result["finished"] = result["finished"] and done


async def run_retention(
    db: Database, settings: Settings, now: datetime, *, budget_s: float | None = None
) -> RetentionResult:
    """Apply both retentions once, as of ``now``; return the counts.

    With ``budget_s``, no chunk or partition is started after that many seconds (``finished`` false).
    """
    deadline = None if budget_s is None else time.monotonic() + budget_s
    result = RetentionResult(
        events_deleted=0,
        event_chunks=0,
        partitions_dropped=0,
        dead_letters_deleted=0,
        dead_letter_chunks=0,
        exported_path=None,
        exported_rows=0,
        finished=True,
    )
    if settings.retention_days is not None:
        await _expire_events(db, settings, now - timedelta(days=settings.retention_days), result, deadline)
    if settings.dead_letter_retention_days is not None:
        cutoff = now - timedelta(days=settings.dead_letter_retention_days)
        limit = settings.retention_chunk_size

        def delete_chunk(session: AsyncSession) -> Awaitable[int]:
            return history.delete_dead_letters_older_than(session, cutoff, limit)

        deleted, chunks, done = await _delete_in_chunks(
            db, "dead_letters", delete_chunk, limit, deadline=deadline
        )
        result["dead_letters_deleted"], result["dead_letter_chunks"] = deleted, chunks
        result["finished"] = result["finished"] and done
    log.info("retention.done", **result)
    return result


@job
async def apply_retention(ctx: WorkerContext) -> RetentionResult:
    """Delete events and dead letters past their retention (exporting events first when configured).

    Within half the job time limit: what is left goes with the next run.
    """
    settings = ctx["settings"]
    return await run_retention(
        ctx["db"], settings, datetime.now(UTC), budget_s=settings.job_timeout * BUDGET_SHARE
    )

"""``export_events``: write the events matching a filter to a file, as NDJSON or CSV, optionally gzipped.

Rows stream from one snapshot (:func:`worker.db.history.stream_events`) in chunks of
``export_chunk_size``, are formatted by :mod:`worker.export` and written from a thread
into an :class:`~worker.export.AtomicWriter`: the file appears under its name, complete,
only at the end, and a failure or cancellation leaves nothing behind. Memory stays flat
whatever the table's size: one chunk of rows and its bytes at a time.

:func:`export_to_file` is the whole export; the ``eventworker export`` command and the
retention job run it too.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypedDict, TypeVar

from worker.context import WorkerContext
from worker.db import history
from worker.db.engine import Database, job_application_name
from worker.errors import PermanentError
from worker.export import (
    AtomicWriter,
    ExportFilter,
    ExportFormat,
    ExportProgress,
    csv_header,
    encode_chunk,
    parse_time,
    resolve_under,
    wants_gzip,
)
from worker.jobrunner import job
from worker.logging import get_logger

JOB_NAME = "export_events"

T = TypeVar("T")
ProgressCallback = Callable[[ExportProgress], None]
log = get_logger("eventworker.export")


class ExportResult(TypedDict):
    """What an export job wrote."""

    path: str
    rows: int
    bytes: int
    seconds: float


@dataclass(frozen=True, slots=True)
class ExportSummary:
    """What :func:`export_to_file` wrote; ``last_seq`` is the highest ``seq`` in the file."""

    path: Path
    rows: int
    bytes: int
    seconds: float
    last_seq: int | None

    def as_result(self) -> ExportResult:
        """The job's result."""
        return ExportResult(path=str(self.path), rows=self.rows, bytes=self.bytes, seconds=self.seconds)


async def _off_loop(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run blocking file work (writes, gzip, fsync) in a thread, keeping the event loop free.

    If the caller is cancelled meanwhile, the thread is still let finish before the
    cancellation goes on, so that removing the temporary file never races a write to it.
    """
    task = asyncio.ensure_future(asyncio.to_thread(functools.partial(function, *args, **kwargs)))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        if not task.cancelled():
            task.exception()  # seen: the cancellation is what goes on, not the thread's own error
        raise


async def export_to_file(
    db: Database,
    target: Path,
    query: ExportFilter,
    fmt: ExportFormat = ExportFormat.NDJSON,
    *,
    chunk_size: int,
    compress: bool = False,
    progress: ProgressCallback | None = None,
    job_name: str | None = None,
    keep_empty: bool = True,
) -> ExportSummary:
    """Write the events matching ``query`` to ``target`` in ``seq`` order; return what was written.

    ``progress`` is called after each chunk. ``job_name`` tags the reading connection on
    PostgreSQL. With ``keep_empty=False`` an export that matched nothing leaves no file
    (``bytes`` is then 0).
    """
    started = time.perf_counter()
    tag = job_application_name(db.application_name, job_name) if job_name and db.tag_transactions else None
    rows, last_seq, size = 0, None, 0
    writer = AtomicWriter(target, compress=compress)  # creates an empty file: quick, and nothing to cancel
    try:
        if fmt is ExportFormat.CSV:
            await _off_loop(writer.write, csv_header())
        chunks = history.stream_events(db.engine, query, chunk_size, application_name=tag)
        async with aclosing(chunks):
            async for chunk in chunks:
                await _off_loop(writer.write, encode_chunk(chunk, fmt))
                rows, last_seq = rows + len(chunk), chunk[-1].seq
                if progress is not None:
                    progress(ExportProgress(rows, time.perf_counter() - started))
        if rows or keep_empty:
            size = await _off_loop(writer.commit)
        else:
            writer.abort()
    except BaseException:
        writer.abort()
        raise
    return ExportSummary(target, rows, size, round(time.perf_counter() - started, 3), last_seq)


def _time(name: str, value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name}: expected an RFC 3339 string, got {type(value).__name__}")
    return parse_time(value)


def _log_progress(progress: ExportProgress) -> None:
    log.info("export.progress", rows=progress.rows, rows_per_s=round(progress.rows_per_s))


@job
async def export_events(
    ctx: WorkerContext,
    path: str,
    *,
    format: str = "ndjson",
    since: str | None = None,
    until: str | None = None,
    type: str | None = None,
    source: str | None = None,
    subject: str | None = None,
    gzip: bool = False,
) -> ExportResult:
    """Export the matching events to ``path`` under ``export_dir``; ``since``/``until`` are RFC 3339.

    ``since`` and ``until`` bound the event's time (its ``received_at`` when it has none),
    ``until`` exclusive. A ``.gz`` name, or ``gzip=True``, compresses the file.
    A bad argument fails the job at once, without retries.
    """
    settings = ctx["settings"]
    try:
        query = ExportFilter(
            since=_time("since", since),
            until=_time("until", until),
            type=type,
            source=source,
            subject=subject,
        )
        fmt = ExportFormat(format)
        target = resolve_under(settings.export_dir, path)
    except ValueError as exc:
        raise PermanentError(f"{JOB_NAME}: {exc}") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("export.started", path=str(target), format=fmt.value)
    summary = await export_to_file(
        ctx["db"],
        target,
        query,
        fmt,
        chunk_size=settings.export_chunk_size,
        compress=wants_gzip(target, gzip),
        progress=_log_progress,
        job_name=JOB_NAME,
    )
    result = summary.as_result()
    log.info("export.done", **result, rows_per_s=round(summary.rows / max(summary.seconds, 1e-9)))
    return result

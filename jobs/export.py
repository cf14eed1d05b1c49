"""``export_events``: write the events matching a filter to a file, as NDJSON or CSV, optionally gzipped.

Rows stream from one snapshot (:func:`worker.db.sql.history.stream_events`) in chunks of
``export_chunk_size``, are formatted by :mod:`worker.domain.export` and written from a thread
into an :class:`~worker.domain.export.AtomicWriter`: the file appears under its name, complete,
only at the end, and a failure or cancellation leaves nothing behind. Memory stays flat
whatever the table's size: one chunk of rows and its bytes at a time.

On PostgreSQL through asyncpg an NDJSON export skips the rows: the server writes the
lines itself (:mod:`worker.db.sql.export_copy`, the same bytes) and they go to the file in
batches of ``export_chunk_size`` lines (at most :data:`COPY_BATCH_BYTES`), one batch
written (and gzipped) in the thread while the next arrives. Progress is reported every
``export_chunk_size`` rows on both paths.

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

from worker.constants import EXPORT_EVENTS_JOB
from worker.db.engine import Database, job_application_name
from worker.db.sql import export_copy, history
from worker.domain.export import (
    AtomicWriter,
    CopyLines,
    ExportFilter,
    ExportFormat,
    ExportProgress,
    csv_header,
    encode_chunk,
    parse_time,
    resolve_under,
    wants_gzip,
)
from worker.errors import PermanentError
from worker.logging import get_logger
from worker.runtime.context import WorkerContext
from worker.runtime.jobrunner import job

T = TypeVar("T")
ProgressCallback = Callable[[ExportProgress], None]
#: The most bytes from COPY collected before they go to the writer's thread, however few lines
#: they hold: a chunk of large events must not take the memory a chunk of their rows would.
COPY_BATCH_BYTES = 16 << 20
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


class _Progress:
    """Calls the progress callback each time the row count passes a multiple of ``every``, and at the end."""

    def __init__(self, callback: ProgressCallback | None, every: int, started: float) -> None:
        self._callback, self._every, self._started = callback, every, started
        self._reported = 0

    def advance(self, rows: int) -> None:
        """``rows`` are written so far."""
        if self._callback is None:
            return
        for mark in range(self._reported + self._every, rows + 1, self._every):
            self._reported = mark
            self._callback(ExportProgress(mark, time.perf_counter() - self._started))

    def finish(self, rows: int) -> None:
        """The export wrote ``rows`` in all."""
        self.advance(rows)
        if self._callback is not None and rows > self._reported:
            self._reported = rows
            self._callback(ExportProgress(rows, time.perf_counter() - self._started))


class _BatchedWrites:
    """Lines to an :class:`AtomicWriter` in batches, one written in a thread while the next is collected.

    A batch goes once it holds ``batch_lines`` lines or ``batch_bytes`` bytes.
    """

    def __init__(self, writer: AtomicWriter, batch_lines: int, batch_bytes: int) -> None:
        self._writer, self._batch_lines, self._batch_bytes = writer, batch_lines, batch_bytes
        self._batch: list[bytes] = []
        self._lines = self._size = 0
        self._pending: asyncio.Future[None] | None = None

    async def write(self, data: bytes, lines: int) -> None:
        """Add ``data``, holding ``lines`` lines; hand the batch over once it is large enough."""
        self._batch.append(data)
        self._lines += lines
        self._size += len(data)
        if self._lines >= self._batch_lines or self._size >= self._batch_bytes:
            await self._hand_over()

    async def _hand_over(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            await pending
        if self._batch:
            data = b"".join(self._batch)
            self._batch, self._lines, self._size = [], 0, 0
            self._pending = asyncio.ensure_future(_off_loop(self._writer.write, data))

    async def close(self) -> None:
        """Write what is left and wait until it is written."""
        await self._hand_over()
        await self._hand_over()

    async def settle(self) -> None:
        """After a failure: wait for the write under way (its own error, if any, is dropped)."""
        if self._pending is not None:
            await asyncio.wait([self._pending])
            if not self._pending.cancelled():
                self._pending.exception()
            self._pending = None


async def _write_rows(
    db: Database,
    writer: AtomicWriter,
    query: ExportFilter,
    fmt: ExportFormat,
    *,
    chunk_size: int,
    tag: str | None,
    progress: _Progress,
) -> tuple[int, int | None]:
    """The generic path: rows from a server-side cursor, formatted here; returns (rows, last seq)."""
    rows, last_seq = 0, None
    if fmt is ExportFormat.CSV:
        await _off_loop(writer.write, csv_header())
    chunks = history.stream_events(db.engine, query, chunk_size, application_name=tag)
    async with aclosing(chunks):
        async for chunk in chunks:
            await _off_loop(writer.write, encode_chunk(chunk, fmt))
            rows, last_seq = rows + len(chunk), chunk[-1].seq
            progress.advance(rows)
    return rows, last_seq


async def _write_copy(
    db: Database,
    writer: AtomicWriter,
    query: ExportFilter,
    *,
    chunk_size: int,
    tag: str | None,
    progress: _Progress,
) -> tuple[int, int | None]:
    """The PostgreSQL path: NDJSON lines written by the server; returns (rows, last seq)."""
    lines = CopyLines(export_copy.json_loads(db.engine))
    writes = _BatchedWrites(writer, chunk_size, COPY_BATCH_BYTES)

    async def output(data: bytes) -> None:
        before = lines.rows
        await writes.write(lines.feed(data), lines.rows - before)
        progress.advance(lines.rows)

    try:
        await export_copy.copy_ndjson(db.engine, query, output, application_name=tag)
        lines.finish()
        await writes.close()
    except BaseException:
        await writes.settle()
        raise
    return lines.rows, lines.last_seq


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
    use_copy: bool = True,
) -> ExportSummary:
    """Write the events matching ``query`` to ``target`` in ``seq`` order; return what was written.

    ``progress`` is called each time another ``chunk_size`` rows are written, and at the
    end. ``job_name`` tags the reading connection on PostgreSQL. With ``keep_empty=False``
    an export that matched nothing leaves no file (``bytes`` is then 0). ``use_copy=False``
    keeps an NDJSON export on PostgreSQL/asyncpg on the generic path (the same bytes, made
    here: tests and the benchmark compare the two).
    """
    started = time.perf_counter()
    tag = job_application_name(db.application_name, job_name) if job_name and db.tag_transactions else None
    reporter, size = _Progress(progress, chunk_size, started), 0
    writer = AtomicWriter(target, compress=compress)  # creates an empty file: quick, and nothing to cancel
    try:
        if use_copy and fmt is ExportFormat.NDJSON and export_copy.available(db.engine):
            rows, last_seq = await _write_copy(
                db, writer, query, chunk_size=chunk_size, tag=tag, progress=reporter
            )
        else:
            rows, last_seq = await _write_rows(
                db, writer, query, fmt, chunk_size=chunk_size, tag=tag, progress=reporter
            )
        reporter.finish(rows)
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
        raise PermanentError(f"{EXPORT_EVENTS_JOB}: {exc}") from None
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
        job_name=EXPORT_EVENTS_JOB,
    )
    result = summary.as_result()
    log.info("export.done", **result, rows_per_s=round(summary.rows / max(summary.seconds, 1e-9)))
    return result

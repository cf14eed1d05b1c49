"""``eventworker export`` and ``eventworker retention``: the export and retention jobs, run from a shell.

Both run the very code the worker's jobs run (:func:`jobs.export.export_to_file`,
:func:`jobs.retention.run_retention`), without the worker's job time limit, so they
also suit exports and first retention passes too large for one job.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import click

from worker.commands.base import examples, run_or_exit, settings_or_exit, with_database, with_read_database
from worker.db.engine import Database
from worker.domain.export import ExportFilter, ExportFormat, ExportProgress, parse_time, wants_gzip
from worker.domain.text import plural

if TYPE_CHECKING:
    from jobs.export import ExportSummary
    from jobs.retention import RetentionResult


def _time_option(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


class ProgressLine:
    """``1,234,567 rows  98,765 rows/s`` rewritten in place on a terminal, at most ten times a second."""

    def __init__(self, stream: TextIO, interval_s: float = 0.1) -> None:
        self._stream = stream
        self._interval_s = interval_s
        self._shown_at = 0.0
        self._shown = False

    def __call__(self, progress: ExportProgress) -> None:
        now = time.monotonic()
        if now - self._shown_at < self._interval_s:
            return
        self._shown_at, self._shown = now, True
        self._stream.write(f"\r{progress.rows:>14,} rows  {progress.rows_per_s:>12,.0f} rows/s")
        self._stream.flush()

    def close(self) -> None:
        """End the line, if one was shown."""
        if self._shown:
            self._stream.write("\n")
            self._stream.flush()


#: The exit status of an export refused because PATH exists (as for any other error of the command).
EXIT_EXISTS = 1


@click.command(
    "export",
    epilog=examples(
        "eventworker export all.ndjson",
        "eventworker export paid.csv --format csv --type com.example.order.paid --since 2026-01-01T00:00:00Z",
        "eventworker export shop-1.ndjson.gz --source /shop/1 --force",
    ),
)
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--format", "fmt", type=click.Choice([f.value for f in ExportFormat]), default="ndjson", show_default=True
)
@click.option("--gzip", "compress", is_flag=True, help="gzip the file (implied by a PATH ending in .gz).")
@click.option(
    "--since",
    metavar="RFC3339",
    callback=_time_option,
    help="Events at or after this time (their own time, else when stored).",
)
@click.option("--until", metavar="RFC3339", callback=_time_option, help="Events before this time.")
@click.option("--type", "event_type", help="Only events of this type.")
@click.option("--source", help="Only events from this source.")
@click.option("--subject", help="Only events with this subject.")
@click.option(
    "--chunk-size",
    type=click.IntRange(min=1),
    help="Rows per round trip, or per write when PostgreSQL writes the lines"
    " [default: EVENTWORKER_EXPORT_CHUNK_SIZE].",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace PATH if it exists; without it an existing PATH is refused.",
)
def export_command(
    path: Path,
    fmt: str,
    compress: bool,
    since: datetime | None,
    until: datetime | None,
    event_type: str | None,
    source: str | None,
    subject: str | None,
    chunk_size: int | None,
    force: bool,
) -> None:
    """Write stored events to PATH in seq order, as NDJSON (CloudEvents) or CSV.

    The file appears only once complete; one database snapshot, whatever is stored meanwhile.
    An existing PATH is left alone (exit status 1) unless --force.
    """
    from jobs.export import export_to_file  # imported here: the jobs load arq, which --help does not need

    try:
        query = ExportFilter(since=since, until=until, type=event_type, source=source, subject=subject)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if not path.parent.is_dir():
        raise click.BadParameter(f"directory {path.parent} does not exist", param_hint="PATH")
    if path.exists() and not force:
        click.echo(f"eventworker: {path} already exists; give --force to replace it", err=True)
        raise SystemExit(EXIT_EXISTS)
    settings = settings_or_exit()
    progress = ProgressLine(sys.stderr) if sys.stderr.isatty() else None

    async def export(db: Database) -> ExportSummary:
        return await export_to_file(
            db,
            path,
            query,
            ExportFormat(fmt),
            chunk_size=chunk_size or settings.export_chunk_size,
            compress=wants_gzip(path, compress),
            progress=progress,
        )

    try:
        summary = run_or_exit(with_read_database(settings, export), settings)
    finally:
        if progress is not None:
            progress.close()
    rate = summary.rows / summary.seconds if summary.seconds else 0
    click.echo(
        f"exported {plural(summary.rows, 'event')} to {summary.path} ({plural(summary.bytes, 'byte')})"
        f" in {summary.seconds:.2f}s ({rate:,.0f} rows/s)"
    )


@click.command(
    "retention",
    epilog=examples(
        "EVENTWORKER_RETENTION_DAYS=90 eventworker retention",
        "EVENTWORKER_DEAD_LETTER_RETENTION_DAYS=30 eventworker retention",
    ),
)
def retention_command() -> None:
    """Delete events and dead letters past their retention now (what the daily job does)."""
    from jobs.retention import run_retention  # imported here: the jobs load arq, which --help does not need

    settings = settings_or_exit()
    if settings.retention_days is None and settings.dead_letter_retention_days is None:
        click.echo(
            "retention is off: set EVENTWORKER_RETENTION_DAYS and/or EVENTWORKER_DEAD_LETTER_RETENTION_DAYS"
        )
        return

    async def apply(db: Database) -> RetentionResult:
        return await run_retention(db, settings, datetime.now(UTC))

    result = run_or_exit(with_database(settings, apply), settings)
    if settings.retention_days is not None:
        line = f"events: deleted {result['events_deleted']:,}"
        dropped, chunks = result["partitions_dropped"], result["event_chunks"]
        if dropped:
            line += f" by dropping {plural(dropped, 'partition')}"
        if chunks or not dropped:
            line += f"{' and' if dropped else ''} in {plural(chunks, 'chunk')}"
        if result["exported_path"]:
            line += f", exported first to {result['exported_path']}"
        click.echo(line)
    if settings.dead_letter_retention_days is not None:
        deleted, chunks = result["dead_letters_deleted"], result["dead_letter_chunks"]
        click.echo(f"dead letters: deleted {deleted:,} in {plural(chunks, 'chunk')}")

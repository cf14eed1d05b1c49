"""Everything ``eventworker status`` and the dashboard show, gathered in one place.

:func:`gather_status` reads Redis (the queue, the workers' records, running jobs, cron
runs: :mod:`worker.runtime.tracking`, :mod:`worker.runtime.queuestats`) and the database (failed jobs,
dead letters, handler runs, the rollup checkpoint and the minute rollups for the chart:
:mod:`worker.db.sql.status_sql`). The reads are independent, so they run at once in an
``asyncio.TaskGroup``, each database read in a short transaction of its own. A read that
fails does not spoil the rest: its section stays empty, :attr:`Status.errors` says why, and the
views show it as unknown, never as zero. A read that failed on a missing table is explained by
the schema (:func:`worker.db.schema.behind_error`): on a database never migrated, every database
section says "run `eventworker migrate`".

:func:`problems` is the pure verdict a person wants first: what is stuck, stale or failing.
Formatting lives in :mod:`worker.ops.status_text` (text, JSON) and the dashboard
(:mod:`worker.http.dashboard`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeVar

from worker.config import Settings
from worker.constants import CRON_JOBS
from worker.db import schema
from worker.db.engine import Database
from worker.db.failures import is_undefined_object
from worker.db.models import DeadLetter, FailedJob
from worker.db.replica import ReadRouter, ReplicaLag
from worker.db.sql import status_sql
from worker.db.sql.status_sql import RollupLag
from worker.logging import redact_text
from worker.protocol.redis import connect
from worker.runtime import tracking
from worker.runtime.queuestats import QueueSample, sample_queue
from worker.runtime.tracking import CronStatus, RunningJob, WorkerBeat

T = TypeVar("T")

#: Recent failed jobs and dead letters shown.
RECENT: Final = 10
#: Hours of events per minute the chart covers.
CHART_HOURS: Final = 3
#: Characters of a dead letter's raw payload shown.
RAW_CHARS: Final = 2000
#: A due job waiting longer than this means the workers are not keeping up.
BACKLOG_WARN_S: Final = 60.0
#: The sections read, each on its own: Redis's, then the database's (the keys of :attr:`Status.errors`).
REDIS_SECTION: Final = "redis"
DATABASE_SECTIONS: Final = ("failed jobs", "dead letters", "handler runs", "rollups", "chart")
#: The read replica's lag (DATABASE_READ_URL), measured first: it decides where the others read.
REPLICA_SECTION: Final = "read replica"


@dataclass(frozen=True, slots=True)
class FailedJobInfo:
    id: int
    job_id: str
    job: str
    tries: int
    failed_at: datetime
    error: str


@dataclass(frozen=True, slots=True)
class DeadLetterInfo:
    id: int
    reason: str
    received_at: datetime
    job_id: str | None
    position: int
    errors: Any
    raw: str
    """The input as received, decoded as UTF-8 (invalid bytes escaped), cut to :data:`RAW_CHARS`."""


@dataclass(frozen=True, slots=True)
class MinuteCount:
    minute: datetime
    type: str
    events: int


@dataclass(slots=True)
class Status:
    """One look at a queue, its workers and its database."""

    generated_at: datetime
    queue_name: str
    queue: QueueSample | None = None
    workers: list[WorkerBeat] = field(default_factory=list)
    running: list[RunningJob] = field(default_factory=list)
    cron: list[CronStatus] = field(default_factory=list)
    failed_by_job: dict[str, int] = field(default_factory=dict)
    recent_failures: list[FailedJobInfo] = field(default_factory=list)
    dead_letters_by_reason: dict[str, int] = field(default_factory=dict)
    recent_dead_letters: list[DeadLetterInfo] = field(default_factory=list)
    handler_runs: dict[str, dict[str, int]] = field(default_factory=dict)
    """Handler -> {"pending": n, "failed": n}."""
    rollups: RollupLag | None = None
    chart: list[MinuteCount] = field(default_factory=list)
    chart_since: datetime | None = None
    replica: ReplicaLag | None = None
    """The read replica's lag, and whether the database sections were read from it; None without
    DATABASE_READ_URL."""
    errors: dict[str, str] = field(default_factory=dict)
    """Section (:data:`REDIS_SECTION`, :data:`DATABASE_SECTIONS`) -> why it could not be read (passwords
    removed). The fields of a section named here hold nothing read, not zero."""

    def unread(self, section: str) -> bool:
        """True when ``section`` could not be read: its fields are unknown, not empty."""
        return section in self.errors

    def stale_workers(self) -> list[WorkerBeat]:
        return [w for w in self.workers if w.is_stale(self.generated_at)]

    def live_workers(self) -> list[WorkerBeat]:
        return [w for w in self.workers if not w.is_stale(self.generated_at)]

    def stuck_jobs(self) -> list[RunningJob]:
        """Running jobs past their deadline, or on a worker that went stale."""
        stale = {w.worker_id for w in self.stale_workers()}
        now = self.generated_at
        return [run for run in self.running if run.overdue(now) or run.worker_id in stale]


def _unread_sections(status: Status) -> list[str]:
    """One line per reason a section could not be read, naming every section it kept from us."""
    by_reason: dict[str, list[str]] = {}
    for section in (REDIS_SECTION, *DATABASE_SECTIONS, *status.errors):
        if section in status.errors and section not in by_reason.get(status.errors[section], []):
            by_reason.setdefault(status.errors[section], []).append(section)
    return [f"could not read {', '.join(sections)}: {reason}" for reason, sections in by_reason.items()]


def problems(status: Status) -> list[str]:
    """What needs a person: stale workers, stuck jobs, a backlog, failures; empty when all is well."""
    found = _unread_sections(status)
    now = status.generated_at
    if not status.unread(REDIS_SECTION) and not status.live_workers():
        found.append(f"no live worker on queue {status.queue_name}")
    for worker in status.stale_workers():
        found.append(
            f"worker {worker.worker_id}: last heartbeat {worker.age_s(now):.0f}s ago"
            f" (stale after {worker.stale_after_s():g}s)"
        )
    for run in status.stuck_jobs():
        found.append(
            f"job {run.job_id} ({run.job}) stuck on worker {run.worker_id} since {run.started_at:%H:%M:%S}"
        )
    if status.queue is not None and status.queue.oldest_due_age_s > BACKLOG_WARN_S:
        found.append(
            f"backlog: {status.queue.due} due jobs, the oldest waiting {status.queue.oldest_due_age_s:.0f}s"
        )
    for cron in status.cron:
        done = cron.last_finished
        if done is not None and done.outcome not in {"ok", None}:
            found.append(
                f"cron job {cron.job}: last run ended {done.outcome}: {done.error or ''}".rstrip(": ")
            )
    if status.failed_by_job:
        found.append(f"failed jobs: {sum(status.failed_by_job.values())} (`eventworker failed list`)")
    if status.replica is not None and not status.replica.used:
        found.append(f"read replica bypassed, read from the primary: {status.replica.reason}")
    return found


def _failed(row: FailedJob) -> FailedJobInfo:
    return FailedJobInfo(row.id, row.job_id, row.job_name, row.tries, row.failed_at, row.error)


def _dead_letter(row: DeadLetter) -> DeadLetterInfo:
    raw = bytes(row.raw).decode("utf-8", "backslashreplace")[:RAW_CHARS]
    return DeadLetterInfo(row.id, row.reason, row.received_at, row.job_id, row.position, row.errors, raw)


class StatusReader:
    """Reads :class:`Status` again and again over one engine and one Redis pool (the dashboard's)."""

    def __init__(self, settings: Settings, *, chart_hours: float = CHART_HOURS, recent: int = RECENT) -> None:
        self.settings = settings
        self.chart_hours = chart_hours
        self.recent = recent
        self._reads = ReadRouter(settings)
        self._db: Database | None = None
        """Where this read's database sections come from: the replica while it keeps up, else the primary."""
        self._redis: Any = None

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose(close_connection_pool=True)
            self._redis = None
        self._db = None
        await self._reads.dispose()

    async def _redis_client(self) -> Any:
        if self._redis is None:
            self._redis = await connect(self.settings.redis_url)
        return self._redis

    def _database(self) -> Database:
        return self._db or self._reads.primary

    async def read(self, now: datetime | None = None) -> Status:
        """Gather a fresh :class:`Status`."""
        status = Status(generated_at=now or datetime.now(UTC), queue_name=self.settings.queue_name)
        failures: dict[str, Exception] = {}
        await self._section(status, REPLICA_SECTION, self._choose_database, failures)
        reads = (
            self._read_failures,
            self._read_dead_letters,
            self._read_handler_runs,
            self._read_rollups,
            self._read_chart,
        )
        async with asyncio.TaskGroup() as group:
            group.create_task(self._section(status, REDIS_SECTION, self._read_redis, failures))
            for name, read in zip(DATABASE_SECTIONS, reads, strict=True):
                group.create_task(self._section(status, name, read, failures))
        await self._explain_by_schema(status, failures)
        return status

    async def _section(
        self,
        status: Status,
        name: str,
        read: Callable[[Status], Awaitable[None]],
        failures: dict[str, Exception],
    ) -> None:
        try:
            await read(status)
        except Exception as exc:
            failures[name] = exc
            reason = str(getattr(exc, "orig", None) or exc).strip().splitlines() or [""]
            status.errors[name] = redact_text(f"{type(exc).__name__}: {reason[0]}", self.settings.secrets())

    async def _explain_by_schema(self, status: Status, failures: dict[str, Exception]) -> None:
        """Sections that failed on a missing table, when the schema is missing or behind, say so instead."""
        undefined = [name for name, exc in failures.items() if is_undefined_object(exc)]
        if not undefined:
            return
        try:
            behind = await schema.behind_error(self._database().engine, failures[undefined[0]])
        except Exception:
            return  # the revision cannot be read either: the sections' own errors stand
        if behind is not None:
            for name in undefined:
                status.errors[name] = str(behind)

    async def _choose_database(self, status: Status) -> None:
        self._db = None  # the primary, unless the replica is chosen (and reached) now
        self._db, status.replica = await self._reads.choose()

    async def _read_redis(self, status: Status) -> None:
        redis = await self._redis_client()
        queue = self.settings.queue_name
        status.workers = await tracking.read_workers(redis, queue)
        status.running = await tracking.read_running(redis, queue)
        status.cron = await tracking.read_cron(redis, queue, list(CRON_JOBS))
        running = {run.job_id for run in status.running}
        status.queue = await sample_queue(redis, queue, running, time.time() * 1000)

    async def _in_transaction(self, read: Callable[[Any], Awaitable[T]]) -> T:
        async with self._database().transaction() as session:
            return await read(session)

    async def _read_failures(self, status: Status) -> None:
        async def read(session: Any) -> None:
            status.failed_by_job = await status_sql.failed_job_counts(session)
            rows = await status_sql.recent_failed_jobs(session, self.recent)
            status.recent_failures = [_failed(row) for row in rows]

        await self._in_transaction(read)

    async def _read_dead_letters(self, status: Status) -> None:
        async def read(session: Any) -> None:
            status.dead_letters_by_reason = await status_sql.dead_letter_counts(session)
            rows = await status_sql.recent_dead_letters(session, self.recent)
            status.recent_dead_letters = [_dead_letter(row) for row in rows]

        await self._in_transaction(read)

    async def _read_handler_runs(self, status: Status) -> None:
        counts = await self._in_transaction(status_sql.handler_run_counts)
        by_handler: dict[str, dict[str, int]] = {}
        for (handler, state), n in sorted(counts.items()):
            by_handler.setdefault(handler, {})[state] = n
        status.handler_runs = by_handler

    async def _read_rollups(self, status: Status) -> None:
        status.rollups = await self._in_transaction(status_sql.rollup_progress)

    async def _read_chart(self, status: Status) -> None:
        since = (status.generated_at - timedelta(hours=self.chart_hours)).replace(second=0, microsecond=0)
        status.chart_since = since

        async def read(session: Any) -> list[tuple[datetime, str, int]]:
            return await status_sql.events_per_minute(session, since)

        rows = await self._in_transaction(read)
        status.chart = [MinuteCount(minute, type_, n) for minute, type_, n in rows]


async def gather_status(settings: Settings, *, now: datetime | None = None, **options: Any) -> Status:
    """One :class:`Status` of ``settings``' queue and database, with connections opened and closed here."""
    reader = StatusReader(settings, **options)
    try:
        return await reader.read(now)
    finally:
        await reader.close()

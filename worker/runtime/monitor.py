"""A worker's own bookkeeping while it runs: its heartbeat, its running jobs, its metrics samples.

:class:`Monitor` is made in ``on_startup`` (kept as ``ctx["monitor"]``) and stopped in
``on_shutdown``. It runs two background tasks:

- the heartbeat, every ``health_check_interval``: this worker's record in Redis
  (:mod:`worker.runtime.tracking`), which ``eventworker health`` and ``status`` read;
- the sampler, every ``metrics_sample_interval`` while metrics are served: queue depth,
  due jobs, jobs in progress, the oldest due job's age and the rollup lag, into the gauges
  of :class:`~worker.runtime.metrics.Metrics`. Each sample opens a short transaction and returns its
  connection to the pool; nothing is held between samples.

The job runner reports each try (:func:`worker.runtime.jobrunner.tracked`); the monitor
records which worker runs which job (and, for cron jobs, how the last run ended). Running
jobs are written to Redis together every :data:`RUNNING_FLUSH_S` by a third task, not one
by one: a short job costs no Redis call of its own (cron jobs, rare, are written at once).
The same task writes the heartbeat again when jobs finished since the last one, so the jobs
done that ``status`` shows are at most :data:`RUNNING_FLUSH_S` old, not a heartbeat interval.
A Redis error in any of this is logged and ignored: bookkeeping never fails a job or stops
a worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from arq import Retry

from worker.db.sql import status_sql
from worker.errors import JobFailed
from worker.logging import get_logger, redact_text
from worker.runtime import tracking
from worker.runtime.queuestats import sample_queue
from worker.runtime.tracking import RunningJob, WorkerBeat

if TYPE_CHECKING:
    from worker.config import Settings
    from worker.db.engine import Database
    from worker.runtime.metrics import Metrics

#: Longest a bookkeeping call to Redis may hold up a job.
REDIS_TIMEOUT_S: Final = 2.0
#: arq's own time limit is ours plus this (``worker.main.TIMEOUT_GRACE_S``), and then the in-progress lock.
DEADLINE_GRACE_S: Final = 5.0
#: Seconds between writes of the running jobs to Redis; a job shorter than this may never show.
RUNNING_FLUSH_S: Final = 0.5

log = get_logger("eventworker.monitor")


def _now() -> datetime:
    return datetime.now(UTC)


def outcome_of(exc: BaseException | None) -> str:
    """How a job try ended, as :data:`worker.runtime.tracking.OUTCOMES` names it."""
    if exc is None:
        return "ok"
    if isinstance(exc, Retry):
        return "retry"
    if isinstance(exc, JobFailed):
        return "failed"
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return "error"


def _error_text(exc: BaseException) -> str:
    # A retry says only when; the error that caused it is what a person wants to read.
    cause = exc.__cause__ if isinstance(exc, Retry) and exc.__cause__ is not None else exc
    return f"{type(cause).__name__}: {cause}"


class Monitor:
    """One worker's heartbeat, running jobs and metric samples."""

    def __init__(
        self,
        *,
        settings: Settings,
        worker_id: str,
        redis: Any,
        db: Database,
        metrics: Metrics | None,
        metrics_port: int | None,
        cron_jobs: frozenset[str],
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.redis = redis
        self.db = db
        self.metrics = metrics
        self.metrics_port = metrics_port
        self.cron_jobs = cron_jobs
        self.clock = clock
        self.started_at = clock()
        self.running: dict[str, RunningJob] = {}
        self.done: Counter[str] = Counter()
        self._done_written: dict[str, int] = {}  # the counts in the last heartbeat written
        self._unwritten: dict[str, RunningJob] = {}  # running, not in Redis yet
        self._written: set[str] = set()  # in Redis's running jobs
        self._ended: set[str] = set()  # in Redis, ended since: to remove
        self._tasks: list[asyncio.Task[None]] = []
        if metrics is not None:
            metrics.jobs_running.set_function(lambda: len(self.running))

    @property
    def queue(self) -> str:
        return self.settings.queue_name

    def beat(self) -> WorkerBeat:
        """This worker's heartbeat record, as of now."""
        host, _, pid = self.worker_id.rpartition(":")
        return WorkerBeat(
            worker_id=self.worker_id,
            host=host or socket.gethostname(),
            pid=int(pid) if pid.isdigit() else os.getpid(),
            started_at=self.started_at,
            last_heartbeat=self.clock(),
            interval_s=self.settings.health_check_interval,
            jobs_running=len(self.running),
            jobs_done=dict(self.done),
            metrics_port=self.metrics_port,
        )

    def start(self) -> None:
        """Start the heartbeat and the running-jobs writer, and the sampler when metrics are served."""
        self._tasks.append(
            asyncio.create_task(self._every(self.settings.health_check_interval, self.heartbeat))
        )
        self._tasks.append(asyncio.create_task(self._every(RUNNING_FLUSH_S, self.flush_running)))
        if self.metrics is not None and self.metrics_port is not None:
            self._tasks.append(
                asyncio.create_task(self._every(self.settings.metrics_sample_interval, self.sample))
            )

    async def stop(self) -> None:
        """Stop the background tasks and take this worker's record out of Redis."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self._unwritten.clear()  # whatever still runs is being handed back: it runs here no more
        self._ended |= self._written
        await self.flush_running()
        await self._quietly("remove_worker", tracking.remove_worker(self.redis, self.queue, self.worker_id))

    async def _every(self, interval: float, step: Callable[[], Awaitable[None]]) -> None:
        while True:
            await step()
            await asyncio.sleep(interval)

    async def _quietly(self, what: str, call: Awaitable[None]) -> bool:
        """Await a bookkeeping call to Redis; log and swallow its failure. True when it worked."""
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_S):
                await call
        except Exception as exc:
            log.warning("monitor.redis_failed", step=what, error=type(exc).__name__)
            return False
        return True

    async def heartbeat(self) -> None:
        """Write this worker's record (and drop records long gone)."""
        beat = self.beat()
        if await self._quietly("heartbeat", tracking.write_heartbeat(self.redis, self.queue, beat)):
            self._done_written = beat.jobs_done

    async def sample(self) -> None:
        """Sample the queue and the rollup lag into the gauges; a half that fails leaves its gauges be."""
        metrics = self.metrics
        if metrics is None:
            return
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_S):
                runs = await tracking.read_running(self.redis, self.queue)
                queue = await sample_queue(
                    self.redis, self.queue, {run.job_id for run in runs}, time.time() * 1000
                )
        except Exception as exc:
            metrics.sample_errors.labels("redis").inc()
            log.warning("monitor.sample_failed", source="redis", error=type(exc).__name__)
        else:
            metrics.queue_depth.set(queue.waiting)
            metrics.queue_due.set(queue.due)
            metrics.jobs_in_progress.set(queue.in_progress)
            metrics.oldest_job_age.set(queue.oldest_due_age_s)
        try:
            async with self.db.transaction() as session:
                lag = await status_sql.rollup_lag(session)
        except Exception as exc:
            metrics.sample_errors.labels("database").inc()
            log.warning("monitor.sample_failed", source="database", error=type(exc).__name__)
        else:
            metrics.rollup_lag.set(lag.events)

    async def job_started(self, job_id: str, job: str, job_try: int) -> RunningJob:
        """Note that this worker started a try of ``job``."""
        now = self.clock()
        deadline = now + timedelta(seconds=self.settings.job_timeout + DEADLINE_GRACE_S)
        run = RunningJob(job_id, job, self.worker_id, job_try, now, deadline)
        self.running[job_id] = run
        if job in self.cron_jobs:
            if await self._quietly(
                "job_started", tracking.job_started(self.redis, self.queue, run, cron=True)
            ):
                self._written.add(job_id)
        else:
            self._unwritten[job_id] = run
        return run

    async def flush_running(self) -> None:
        """Write the jobs started since the last call and remove those that ended (one Redis call); and
        the heartbeat, when jobs finished since the last one."""
        if self.done != self._done_written:
            await self.heartbeat()
        started, ended = list(self._unwritten.values()), list(self._ended)
        if not started and not ended:
            return
        self._unwritten.clear()
        self._ended.clear()
        if await self._quietly("running", tracking.update_running(self.redis, self.queue, started, ended)):
            self._written.difference_update(ended)
            self._written.update(run.job_id for run in started)
            return
        for run in started:  # next time, if they still run
            if self.running.get(run.job_id) is run:
                self._unwritten[run.job_id] = run
        self._ended.update(ended)

    async def job_finished(self, run: RunningJob, exc: BaseException | None) -> None:
        """Note how a try ended."""
        self.running.pop(run.job_id, None)
        outcome = outcome_of(exc)
        self.done[outcome] += 1
        if run.job not in self.cron_jobs:
            if self._unwritten.get(run.job_id) is run:
                del self._unwritten[run.job_id]  # never written: nothing to remove
            elif run.job_id in self._written:
                self._ended.add(run.job_id)
            return
        error = None if exc is None else redact_text(_error_text(exc), self.settings.secrets())
        call = tracking.job_finished(
            self.redis, self.queue, run, cron=True, outcome=outcome, error=error, now=self.clock()
        )
        if await self._quietly("job_finished", call):
            self._written.discard(run.job_id)

"""The worker context: what every job receives as ``ctx``, key by key.

The worker's monitor and metrics are known here only by what jobs and the job runner use of
them (:class:`JobMonitor`, :class:`JobMetrics`), so that a job imports neither the monitor
(Redis bookkeeping, status SQL) nor prometheus_client. A context without metrics (a job called
directly, in a test or a benchmark) counts into :data:`NO_METRICS`, which counts nothing.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, NotRequired, Protocol, TypedDict

if TYPE_CHECKING:
    from worker.config import Settings
    from worker.db.engine import Database
    from worker.protocol.events import Rejection
    from worker.runtime.tracking import RunningJob


class JobMetrics(Protocol):
    """What jobs and the job runner count (:class:`worker.runtime.metrics.Metrics`), and its shutdown."""

    def job_started(self, job: str) -> None:
        """Count a try of ``job`` that started."""

    def job_succeeded(self, job: str, seconds: float) -> None:
        """Count a try of ``job`` that succeeded after ``seconds``."""

    def job_raised(self, job: str, seconds: float) -> None:
        """Note how long a try of ``job`` ran before it raised (whatever is decided then)."""

    def job_retried(self, job: str) -> None:
        """Count a try of ``job`` that asked arq for a retry."""

    def job_failed(self, job: str) -> None:
        """Count a job recorded in failed_jobs."""

    def count_ingest(
        self, series: Sequence[tuple[str, str]], accepted: int, duplicates: int, rejected: Iterable[Rejection]
    ) -> None:
        """Count one ingest batch by outcome (see ``Metrics.count_ingest``)."""

    def close(self) -> None:
        """Stop serving the metrics (at shutdown)."""


class NoMetrics:
    """Metrics that count nothing: a context without ``metrics`` counts into these."""

    def job_started(self, job: str) -> None:
        """Count nothing."""

    def job_succeeded(self, job: str, seconds: float) -> None:
        """Count nothing."""

    def job_raised(self, job: str, seconds: float) -> None:
        """Count nothing."""

    def job_retried(self, job: str) -> None:
        """Count nothing."""

    def job_failed(self, job: str) -> None:
        """Count nothing."""

    def count_ingest(
        self, series: Sequence[tuple[str, str]], accepted: int, duplicates: int, rejected: Iterable[Rejection]
    ) -> None:
        """Count nothing."""

    def close(self) -> None:
        """Serve nothing."""


#: The metrics of a context that has none.
NO_METRICS: Final[JobMetrics] = NoMetrics()


class JobMonitor(Protocol):
    """What the job runner tells the monitor about each try (:class:`worker.runtime.monitor.Monitor`)."""

    async def job_started(self, job_id: str, job: str, job_try: int) -> RunningJob:
        """Note that this worker started a try of ``job``; the record to hand back when it ends."""

    async def job_finished(self, run: RunningJob, exc: BaseException | None) -> None:
        """Note how a try ended: ``exc`` is None when it succeeded."""

    async def stop(self) -> None:
        """Stop the monitor's background work (at shutdown)."""


class WorkerContext(TypedDict):
    """arq's ``ctx`` as eventworker fills it."""

    settings: Settings
    """The worker's settings, loaded once when the worker started."""
    worker_id: str
    """``<host>:<pid>`` of this worker process; every log line carries it."""
    known_jobs: frozenset[str]
    """Names of the jobs this worker runs."""
    redis: Any
    """arq's ``ArqRedis`` pool, set by arq before start-up."""
    db: NotRequired[Database]
    """The engine and session factory, created in ``on_startup`` and disposed in ``on_shutdown``."""
    metrics: NotRequired[JobMetrics]
    """This worker's Prometheus metrics, created in ``on_startup``."""
    monitor: NotRequired[JobMonitor]
    """This worker's heartbeat, running jobs and metric samples, started in ``on_startup``."""
    job_id: NotRequired[str]
    """arq's id of the running job (per job)."""
    job_try: NotRequired[int]
    """Which try of the job this is, from 1 (per job)."""
    enqueue_time: NotRequired[datetime]
    """When the job was enqueued (per job)."""
    score: NotRequired[int]
    """The job's queue score, milliseconds since the epoch (per job)."""


def worker_id() -> str:
    """``<host>:<pid>`` of this process: the ``worker_id`` of its context."""
    return f"{socket.gethostname()}:{os.getpid()}"

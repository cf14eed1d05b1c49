"""The worker context: what every job receives as ``ctx``, key by key."""

from __future__ import annotations

import os
import socket
from datetime import datetime
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

if TYPE_CHECKING:
    from worker.config import Settings
    from worker.db.engine import Database
    from worker.runtime.metrics import Metrics
    from worker.runtime.monitor import Monitor


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
    metrics: NotRequired[Metrics]
    """This worker's Prometheus metrics, created in ``on_startup``."""
    monitor: NotRequired[Monitor]
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
